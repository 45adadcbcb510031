"""`torchls profile` on a model whose forward fails on a shape: the failing line, where the
layer is built, and the fix, verified by the worker before it is printed; no file changed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from tests.conftest import ROOT

MISSIZED = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 5 * 10, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc1(x)
"""


def _profile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", "net.py::Net", "--input", "1,1,28,28", *extra],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_shape_error_names_both_lines_and_prints_a_verified_fix(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(MISSIZED)
    done = _profile(tmp_path)
    assert done.returncode == 1, done.stderr
    err = done.stderr
    assert "net.py:17: fc1 (Linear) expects 3200 input features" in err, err
    assert "receives 3136 = 64 x 7 x 7" in err
    assert "net.py:11: fc1 is built here with in_features=64 * 5 * 10 = 3200" in err
    fix = re.search(r"fix: net\.py:11: (.+) -> (.+) \(verified: the model then profiles\)", err)
    assert fix, err
    assert path.read_text() == MISSIZED  # verified in memory, nothing written

    # the fix as printed, applied by hand: the model runs in real torch and profiles
    before, after = fix.groups()
    assert before in MISSIZED
    path.write_text(MISSIZED.replace(before, after))
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    model = namespace["Net"]()  # type: ignore[operator]
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    done = _profile(tmp_path, "--json", "--no-thop")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["parameters"]["total"] == sum(
        p.numel() for p in model.parameters()
    )


def test_the_json_error_carries_the_explanation(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(MISSIZED)
    done = _profile(tmp_path, "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert "mat1 and mat2" in error["message"]
    assert any(line.startswith("fix: net.py:11: ") for line in error["explanation"])
