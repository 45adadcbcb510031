"""Loads as real repositories write them (issue 16): each case's checkpoint is written by torch
here, the script really run before and after the fix, in the editor and in `torchls check`.

- a segmentation repo's state dict with a list saved beside the weights (`mask_values`);
- a GPT-style training checkpoint whose top level holds a 0-dim tensor (`best_val_loss`) beside
  the `model` state dict, passed whole to `load_state_dict`;
- `torch.load(f)` on a file object opened for reading bytes (`with open(p, "rb") as f`,
  `f = open(p, "rb")`), as the official examples do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from tests.conftest import lsp_session
from tests.loadcheck.test_cli_check import _check
from tests.loadcheck.test_cli_parity import _run_script
from tests.loadcheck.test_lsp_diagnostics import _actions, _apply, _diagnostics, _open, _torchls

MODEL = """from torch import nn


class UNetish(nn.Module):
    def __init__(self, n_classes=2):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Conv2d(8, n_classes, 1)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(4, 4) for _ in range(30)])
"""
SAVE = {
    "mask_values": (
        "net = UNetish()\nstate = net.state_dict()\nstate['mask_values'] = [0, 1]\n"
        "torch.save(state, 'checkpoint_epoch5.pth')\n"
    ),
    # 60 tensors: the list comes after the first 40 keys the checkpoint's tree lists
    "mask_values_late": (
        "net = Deep()\nstate = net.state_dict()\nstate['mask_values'] = [0, 1]\n"
        "torch.save(state, 'checkpoint_epoch5.pth')\n"
    ),
    "training": (
        "net = UNetish()\n"
        "torch.save({'model': net.state_dict(), 'optimizer': {'lr': 0.1}, "
        "'model_args': {'n_classes': 2}, 'iter_num': 5, 'best_val_loss': torch.tensor(1.25)}, "
        "'ckpt.pt')\n"
    ),
    "file_object": ("net = UNetish()\ntorch.save(net.state_dict(), 'weights.pt')\n"),
}
SCRIPT = {
    "mask_values": (
        "import torch\nfrom model import UNetish\n\nnet = UNetish(n_classes=2)\n"
        "state_dict = torch.load('checkpoint_epoch5.pth', map_location='cpu')\n"
        "net.load_state_dict(state_dict)\nprint('loaded')\n"
    ),
    "mask_values_late": (
        "import torch\nfrom model import Deep\n\nnet = Deep()\n"
        "state_dict = torch.load('checkpoint_epoch5.pth', map_location='cpu')\n"
        "net.load_state_dict(state_dict)\nprint('loaded')\n"
    ),
    "training": (
        "import torch\nfrom model import UNetish\n\nmodel = UNetish()\n"
        "model.load_state_dict(torch.load('ckpt.pt'))\nprint('loaded')\n"
    ),
    "file_object": (
        "import torch\nfrom model import UNetish\n\nnet = UNetish()\n"
        "handle = open('ckpt.pt', 'rb')\n"
        "net.load_state_dict(torch.load(handle))\nprint('loaded')\n"
    ),
}
# What the diagnostic says, and the fix that makes the script run.
EXPECTED = {
    "mask_values": (
        "`mask_values` is not a tensor (a list, saved beside the weights)",
        "Drop the non-tensor entry `mask_values`",
    ),
    "mask_values_late": (
        "`mask_values` is not a tensor (a list, saved beside the weights)",
        "Drop the non-tensor entry `mask_values`",
    ),
    "training": (
        "is a training checkpoint (model, optimizer, model_args, iter_num, best_val_loss)",
        'Load the nested ["model"]',
    ),
    "file_object": (
        "is a training checkpoint (model, optimizer, model_args, iter_num, best_val_loss)",
        'Load the nested ["model"]',
    ),
}


def _layout(tmp_path: Path, case: str) -> Path:
    (tmp_path / "model.py").write_text(MODEL)
    saver = "import torch\nfrom model import Deep, UNetish\n" + SAVE[case]
    if case == "file_object":
        saver += SAVE["training"]
    subprocess.run([sys.executable, "-c", saver], cwd=tmp_path, check=True, timeout=300)
    script = tmp_path / "predict.py"
    script.write_text(SCRIPT[case])
    return script


_run = _run_script  # the user's script, really run


@pytest.mark.parametrize("case", ["mask_values", "mask_values_late", "training", "file_object"])
def test_the_cli_finds_it_and_its_fix_makes_the_script_run(tmp_path: Path, case: str) -> None:
    script = _layout(tmp_path, case)
    before = _run(script)
    assert before.returncode != 0 and "Error(s) in loading state_dict" in before.stderr
    done = _check("predict.py", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    message, fix = EXPECTED[case]
    assert message in done.stdout and f"    fix: {fix}" in done.stdout, done.stdout
    fixed = _check("--fix", "predict.py", cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr, fixed.stdout
    after = _run(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


@pytest.mark.parametrize("case", ["mask_values", "training", "file_object"])
async def test_the_editor_shows_it_with_the_same_fix(tmp_path: Path, case: str) -> None:
    script = _layout(tmp_path, case)
    message, fix = EXPECTED[case]
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, script)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        error = _torchls(found)[0]
        assert error.severity == types.DiagnosticSeverity.Error and message in error.message
        actions = await _actions(session, uri, error)
        chosen = next(a for a in actions if a.title == f"torchls: {fix}")
        assert chosen.is_preferred
    script.write_text(_apply(script.read_text(), chosen))
    after = _run(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


WHOLE = """import torch
from model import UNetish

model = torch.load("model.pt")
print("loaded", type(model).__name__)
"""


async def test_a_pickled_model_is_checked_and_safe_globals_makes_it_load(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    saver = "import torch\nfrom model import UNetish\ntorch.save(UNetish(), 'model.pt')\n"
    subprocess.run([sys.executable, "-c", saver], cwd=tmp_path, check=True, timeout=300)
    script = tmp_path / "predict.py"
    script.write_text(WHOLE)
    before = _run(script)
    assert before.returncode != 0 and "Weights only load failed" in before.stderr

    done = _check("predict.py", cwd=tmp_path)
    assert done.returncode == 1
    assert "predict.py:4:9: error: torch.load will raise:" in done.stdout
    assert "`model.UNetish`" in done.stdout and "[weights-only]" in done.stdout
    assert "1 load: 1 checked" in done.stderr
    # Both fixes trust the file: `--fix` applies neither.
    fixed = _check("--fix", "--unsafe-fixes", "predict.py", cwd=tmp_path)
    assert script.read_text() == WHOLE and fixed.returncode == 1

    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, script)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        error = _torchls(found)[0]
        assert error.code == "weights-only"
        actions = await _actions(session, uri, error)
        titles = [a.title for a in actions]
        assert any("weights_only=False" in title for title in titles), titles
        chosen = next(a for a in actions if "safe_globals" in a.title)
        assert chosen.is_preferred  # names what it allows, unlike weights_only=False
    script.write_text(_apply(script.read_text(), chosen))
    assert "with torch.serialization.safe_globals([UNetish, torch.nn" in script.read_text()
    after = _run(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded UNetish", after.stderr
