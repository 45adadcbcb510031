"""`torchls check`: the editor's diagnostics in a terminal and in CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from tests.conftest import EXAMPLES, ROOT
from torch import nn

MODEL = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, num_classes)
"""


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "check", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _net(num_classes: int = 10) -> nn.Module:
    return nn.ModuleDict(  # the same keys and shapes as Net
        {"body": nn.Linear(4, 8), "head": nn.Linear(8, num_classes)}
    )


def test_the_example_workspace_fails_with_one_line_per_broken_load() -> None:
    done = _check(cwd=EXAMPLES)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stdout.splitlines() if not line.startswith("    ")]
    text = (EXAMPLES / "train.py").read_text().splitlines()
    dataparallel = next(i for i, t in enumerate(text) if "dataparallel.pt" in t) + 1
    nested = next(i for i, t in enumerate(text) if "load_state_dict(checkpoint)" in t) + 1
    assert lines[0].startswith(f"train.py:{dataparallel}:1: error: load_state_dict will raise")
    assert "`module.`" in lines[0]
    assert lines[1].startswith(f"train.py:{nested}:1: error:") and "['state_dict']" in lines[1]
    assert "    fix: Strip the `module.` prefix" in done.stdout
    assert "2 loads: 2 checked; 2 errors, 0 warnings" in done.stderr


def test_json_and_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    torch.save(_net().state_dict(), tmp_path / "good.pt")
    torch.save(_net(3).state_dict(), tmp_path / "three.pt")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "ok.py").write_text(
        "import torch\nfrom model import Net\nm = Net()\nm.load_state_dict(torch.load('good.pt'))\n"
    )
    done = _check("scripts", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and "1 load: 1 checked; 0 errors" in done.stderr

    (scripts / "bad.py").write_text(
        "import torch\nfrom model import Net\nm = Net(num_classes=10)\n"
        "m.load_state_dict(torch.load('three.pt'), strict=False)\n"
        "m.load_state_dict(torch.load('gone.pt'))\n"
    )
    done = _check("--format", "json", "scripts", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == "torchls.check/1" and report["errors"] == 1
    by_code = {d["code"]: d for d in report["diagnostics"]}
    shapes = by_code["shapes"]
    assert (shapes["file"], shapes["line"], shapes["severity"]) == ("scripts/bad.py", 4, "error")
    assert "(10, 8) in the model and (3, 8) in the checkpoint" in shapes["message"]
    assert shapes["fixes"] == ["Skip the head `head` (its shape differs), strict=False"]
    assert by_code["missing-file"]["severity"] == "warning"

    # --no-build builds no model (runs none of the workspace's code): only what the
    # checkpoints and paths alone show remains.
    done = _check("--no-build", "--format", "json", "scripts", cwd=tmp_path)
    codes = [d["code"] for d in json.loads(done.stdout)["diagnostics"]]
    assert codes == ["missing-file"] and done.returncode == 0


def test_usage_errors(tmp_path: Path) -> None:
    done = _check("nothere", cwd=tmp_path)
    assert done.returncode == 2 and "nothere: no such file or folder" in done.stderr


def test_a_virtualenv_inside_the_workspace_is_not_user_code() -> None:
    # The repository keeps its .venv at the root: from there, the worker must import torch's
    # dependencies as the libraries they are, not as skeletons of workspace files.
    done = _check("examples/train.py", cwd=ROOT)
    assert done.returncode == 1
    assert "information" not in done.stdout and "cannot check" not in done.stdout
    assert done.stdout.count(": error: ") == 2
