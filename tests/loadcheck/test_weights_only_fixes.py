"""The quick fixes of a torch.load that torch >= 2.6's weights_only refuses (issue 18 item 6),
through `torchls serve`, on checkpoints torch writes here, with the script really run before and
after: `safe_globals([...])` where the file names only classes, "Make this checkpoint
weights_only-clean" where it holds only plain data, weights_only=False last; a file whose pickle
calls os.system gets neither of the first two."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.downgrade.test_old_torch_pin import _all_actions
from tests.loadcheck.test_cli_check import _check
from tests.loadcheck.test_cli_parity import _run_script
from tests.loadcheck.test_lsp_diagnostics import _apply, _diagnostics, _open, _torchls

from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.text import Span

MODEL = """from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
"""
# A training script's checkpoint: the weights beside its argparse arguments (and, in the second,
# a numpy scalar, as `best_acc = np.float64(...)` leaves one).
SAVE = """import argparse, os, sys
import numpy as np
import torch
from model import Net

extra = {{}}
if "{kind}" == "numpy":
    extra["best"] = np.float64(0.75)
if "{kind}" == "hostile":
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch ran.txt",))
    extra["hook"] = Boom()
args = argparse.Namespace(lr=0.1, epochs=3)
torch.save({{"model": Net().state_dict(), "args": args, **extra}}, "ckpt.pt")
"""
SCRIPT = """import torch
from model import Net

model = Net()
model.load_state_dict(torch.load("ckpt.pt")["model"])
print("loaded")
"""
CLEAN = "Make this checkpoint weights_only-clean"


def _workspace(tmp_path: Path, kind: str) -> Path:
    (tmp_path / "model.py").write_text(MODEL)
    subprocess.run(
        [sys.executable, "-c", SAVE.format(kind=kind)], cwd=tmp_path, check=True, timeout=300
    )
    script = tmp_path / "predict.py"
    script.write_text(SCRIPT)
    before = _run_script(script)
    assert before.returncode != 0 and "Weights only load failed" in before.stderr
    return script


async def _refused_load(session: Session, script: Path) -> list[Any]:
    """The quick fixes of the refused load, in the order the editor lists them: CodeActions
    with an edit, and (as JSON) the ones that run a command."""
    uri = _open(session, script)
    found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
    error = next(d for d in _torchls(found) if d.code == "weights-only")
    return await _all_actions(session, uri, error)


def _titles(actions: list[Any]) -> list[str]:
    return [a["title"] if isinstance(a, dict) else a.title for a in actions]


def _index(titles: list[str], part: str) -> int:
    return next(n for n, title in enumerate(titles) if part in title)


async def test_safe_globals_comes_first_and_makes_the_training_script_run(tmp_path: Path) -> None:
    script = _workspace(tmp_path, "namespace")
    async with lsp_session(workspace=tmp_path) as session:
        actions = await _refused_load(session, script)
    titles = _titles(actions)
    first, clean, unsafe = (_index(titles, p) for p in ("safe_globals", CLEAN, "weights_only=F"))
    assert first < clean < unsafe, titles
    assert "only for checkpoints you trust" in titles[unsafe]  # the warning stays with it
    script.write_text(_apply(script.read_text(), actions[first]))
    text = script.read_text()
    assert "import argparse\n" in text  # the qualified import it needs
    assert "with torch.serialization.safe_globals([argparse.Namespace]):\n" in text
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr
    # `torchls check --fix` applies neither: both trust or rewrite the user's file.
    script.write_text(SCRIPT)
    _check("--fix", "--unsafe-fixes", "predict.py", cwd=tmp_path)
    assert script.read_text() == SCRIPT and not (tmp_path / "ckpt.clean.pt").exists()


async def test_making_the_checkpoint_clean_writes_it_and_points_the_load_at_it(
    tmp_path: Path,
) -> None:
    script = _workspace(tmp_path, "numpy")
    edits: list[Any] = []
    async with lsp_session(workspace=tmp_path) as session:

        @session.client.feature(types.WORKSPACE_APPLY_EDIT)
        def on_apply(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            edits.append(params.edit)
            return types.ApplyWorkspaceEditResult(applied=True)

        actions = await _refused_load(session, script)
        titles = _titles(actions)
        # numpy's scalars need dtype classes the file does not name: no safe_globals for it.
        assert not any("safe_globals" in title for title in titles), titles
        assert _index(titles, CLEAN) < _index(titles, "weights_only=False"), titles
        command = actions[_index(titles, CLEAN)]["command"]
        # What the editor does with the action: run its command.
        result = await session.command(command["command"], *command["arguments"])
        await asyncio.sleep(0.2)
    assert result["ok"], result
    assert (tmp_path / "ckpt.clean.pt").is_file() and (tmp_path / "ckpt.pt").is_file()
    assert len(edits) == 1
    change = edits[0].document_changes[0]
    r = change.edits[0].range
    span = Span(r.start.line, r.start.character, r.end.line, r.end.character)
    script.write_text(apply_edits(script.read_text(), [Edit(span, change.edits[0].new_text)]))
    assert 'torch.load("ckpt.clean.pt")["model"]' in script.read_text()
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


# Every name the pickle needs is importable here, os.system included.
BARE = """import argparse
import os
import torch

checkpoint = torch.load("ckpt.pt")
print("loaded")
"""


@pytest.mark.parametrize("text", [BARE, "import os\n" + SCRIPT], ids=["bare", "state-dict"])
async def test_a_global_that_runs_code_gets_neither_fix(tmp_path: Path, text: str) -> None:
    script = _workspace(tmp_path, "hostile")
    script.write_text(text)
    async with lsp_session(workspace=tmp_path) as session:
        actions = await _refused_load(session, script)
    titles = _titles(actions)
    assert any("weights_only=False" in title for title in titles), titles
    assert not any("safe_globals" in title or CLEAN in title for title in titles), titles
    assert not (tmp_path / "ran.txt").exists()
