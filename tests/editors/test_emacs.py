"""torchls in a real Emacs with eglot (batch): hover, diagnostics, quick fix, edit applied.

Debian's `emacs-nox` and `elpa-eglot` (scripts/setup.sh); Emacs 29+ has eglot built in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.editors.harness import HERE, check_hover_and_fix, run_editor

SCRIPT = HERE / "eglot_hover_and_fix.el"
EMACS = shutil.which("emacs")


@pytest.mark.slow
@pytest.mark.skipif(
    EMACS is None, reason="needs emacs with eglot (apt-get install emacs-nox elpa-eglot)"
)
def test_emacs_eglot_hover_quick_fix_and_edit(workspace: Path, tmp_path: Path) -> None:
    assert EMACS is not None
    run = run_editor([EMACS, "--batch", "-Q", "-l", str(SCRIPT)], workspace, tmp_path)
    check_hover_and_fix(run, workspace)
    assert run.result["server_name"] == "torchls", run.explain()
    print(f"emacs {run.result['emacs']}: {run.seconds:.1f} s, phases {run.result['timings']}")
