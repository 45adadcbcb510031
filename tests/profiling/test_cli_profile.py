"""`torchls profile`: the hover's report in a terminal and as JSON, with clear usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES, ROOT

FIXTURES = ROOT / "tests" / "profiling" / "fixtures"


def _torchls(*args: str, cwd: Path = EXAMPLES) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{FIXTURES}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_profile_prints_the_report() -> None:
    done = _torchls("model.py::SmallConvNet")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "parameters   20,234 (20.2 K): 20,234 trainable, 0 frozen" in out
    assert "MACs         5,603,968" in out and "FLOPs        11,207,936" in out
    assert "(1, 3, 32, 32), from the call `model(torch.randn(1, 3, 32, 32))`" in out
    assert "features.4" in out and "thop" in out


def test_profile_json_with_input_and_args() -> None:
    done = _torchls(
        "model.py::TabularMLP", "--input", "8,20", "--args", "(20, hidden=32)", "--json"
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["schema"] == "torchls.profile/1" and payload["ok"]
    result = payload["result"]
    assert result["parameters"]["total"] == 20 * 32 + 32 + 32 * 2 + 2
    assert result["macs"] == 8 * (20 * 32 + 32 * 2)
    assert result["inputs"]["source"] == "--input"
    assert payload["memory"]["fp32"] == 4 * result["parameters"]["total"]


def test_profile_an_installed_librarys_constructor() -> None:
    done = _torchls("visionlib.models::resnet18", "--input", "1,3,224,224", "--no-thop")
    assert done.returncode == 0, done.stderr
    assert "11,689,512" in done.stdout
    assert "MACs         1,814,073,344" in done.stdout


def test_usage_errors_exit_2_with_one_line() -> None:
    for args, says in [
        (["model.py"], "expected FILE::Name"),
        (["model.py::Nope"], "defines no class or function 'Nope'"),
        (["missing.py::Net"], "missing.py is not a file"),
        (["model.py::SmallConvNet", "--input", "1,x.5"], "positive whole number"),
        (["model.py::SmallConvNet", "--input", "1,x"], "names a dimension x: give it a value"),
        (["model.py::SmallConvNet", "--input", "1,3,S,S", "--sweep", "L=1,2"], "is S, not L"),
        (["model.py::SmallConvNet", "--input", "1,3,32,32", "--sweep", "S=1,2"], "no dimension"),
        (["model.py::SmallConvNet", "--input", "1,3,S,S", "--sweep", "S=32"], "2 to 12"),
        (["model.py::SmallConvNet", "--input", "1,3,S,S", "--sweep", "S=a"], "not a positive"),
        (["model.py::SmallConvNet", "--args", "(len(x))"], "cannot read `len(x)`"),
    ]:
        done = _torchls(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_model_that_cannot_be_profiled_exits_1(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self, classes):\n        super().__init__()\n"
    )
    done = _torchls("net.py::Net", cwd=tmp_path)
    assert done.returncode == 1
    assert "needs `classes`" in done.stderr


def test_a_forward_that_fails_every_way_is_one_line_on_stderr(tmp_path: Path) -> None:
    """The meta device, fake tensors and the CPU all fail on a shape error: torchls's tries are
    its own business (torch logs a failed fake-tensor kernel with a traceback), the user sees one
    line naming the line of their forward, then the shape error's explanation (indented
    lines: where the layer is built, the fix)."""
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(10, 2)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n"
    )
    done = _torchls("net.py::Net", "--input", "(1, 3, 4)", "--no-thop", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert "net.py" in lines[0] and "mat1 and mat2" in lines[0]
    explanation = lines[1:]
    assert all(line.startswith("  ") for line in explanation), done.stderr
    assert any("fc (Linear) expects 10 input features" in line for line in explanation)
    assert any(line.startswith("  net.py:6: fc is built here") for line in explanation)
