"""Lightning's `Model.load_from_checkpoint(path)`: torchls's prediction against what
pytorch_lightning really does, for checkpoints a real Trainer saves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from tests.loadcheck.helpers import check_file, what_raises

from torchls.loadcheck.analysis import ERROR
from torchls.loadcheck.fixes import apply_edits

pytest.importorskip("pytorch_lightning")

NET = """
import pytorch_lightning as pl
from torch import nn


class LitNet(pl.LightningModule):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, num_classes))


class Grown(LitNet):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__(num_classes, width)
        self.extra = nn.Linear(num_classes, num_classes)
"""
SAVE = """
import torch, pytorch_lightning as pl
from net import LitNet
net = LitNet(num_classes=3, width=32)
trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
trainer.strategy.connect(net)
trainer.save_checkpoint("lit.ckpt")
torch.save({"state_dict": net.state_dict(), "hyper_parameters": {"num_classes": 3}}, "plain.ckpt")
"""
SCRIPT = """\
from net import Grown, LitNet

a = LitNet.load_from_checkpoint("lit.ckpt")
b = LitNet.load_from_checkpoint("lit.ckpt", num_classes=5)
c = LitNet.load_from_checkpoint("plain.ckpt")
d = Grown.load_from_checkpoint("lit.ckpt")
"""


PRELUDE = "from net import Grown, LitNet"


def test_load_from_checkpoint_predictions_match_lightning(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET)
    subprocess.run([sys.executable, "-c", SAVE], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "load.py").write_text(SCRIPT)
    results = asyncio.run(check_file(tmp_path, "load.py"))
    by_line = {report.site.line: (report, fixes) for report, fixes in results}
    assert sorted(by_line) == [3, 4, 5, 6]
    lines = SCRIPT.splitlines()
    statements = [lines[number - 1] for number in by_line]
    fixed = {
        (number, fix.title): apply_edits(SCRIPT, [fix.edit]).splitlines()[number - 1]
        for number, (_, fixes) in by_line.items()
        for fix in fixes
    }
    real = what_raises(tmp_path, PRELUDE, statements + list(fixed.values()))
    for (number, (report, _)), raised in zip(by_line.items(), real, strict=False):
        errors = [f for f in report.findings if f.severity == ERROR]
        assert bool(raised) == bool(errors), (number, report.findings, raised)
    # The saved hyper-parameters (num_classes=3, width=32) build the model: line 3 loads.
    assert by_line[3][0].findings == []
    # The call's num_classes=5 overrides them: the head no longer fits, strict=False or not.
    [shapes] = by_line[4][0].findings
    assert shapes.code == "shapes" and "(5, 32) in the model and (3, 32)" in shapes.message
    assert by_line[4][1] == []
    # torch.save'd dicts are not Lightning checkpoints.
    [foreign] = by_line[5][0].findings
    assert foreign.code == "not-lightning" and "pytorch-lightning_version" in real[2]
    # A layer the checkpoint does not have: strict loading raises, strict=False loads the rest.
    [grown] = by_line[6][0].findings
    assert grown.code == "keys" and "2 under `extra.*`" in grown.message
    [(title, line)] = [(t, line) for (n, t), line in fixed.items() if n == 6]
    assert "strict=False" in title and "strict=False" in line
    assert real[len(statements) :] == [""]


def test_load_from_checkpoint_of_a_path_torchls_cannot_read_is_not_checked(
    tmp_path: Path,
) -> None:
    """`load_from_checkpoint(args.ckpt)`: the file is the caller's; counted and said, never
    passed as checked (and `--strict` fails on it)."""
    from tests.loadcheck.test_cli_check import _check

    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "load.py").write_text(
        "import sys\nfrom net import LitNet\n\n"
        'a = LitNet.load_from_checkpoint("nowhere.ckpt")\n'
        "b = LitNet.load_from_checkpoint(sys.argv[1])\n"
    )
    done = _check("load.py", cwd=tmp_path)
    assert "load.py:4:33: warning: `nowhere.ckpt` does not exist" in done.stdout
    assert (
        "load.py:5:5: information: torchls cannot check this load: the checkpoint path "
        "`sys.argv[1]` is not a literal torchls can read." in done.stdout
    )
    assert "2 loads: 1 checked, 1 not checked" in done.stderr
    assert _check("--strict", "load.py", cwd=tmp_path).returncode == 1
