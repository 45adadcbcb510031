"""forward() arguments that are not tensors, written in --input (and `# torchls: input=`) as
plain Python values beside the shapes: `grid={'h': 4, 'w': 4}`, `mode='eval'`, a number. And a
helper the model calls that is defined under a decorator call (`@torch.autocast(...)`), which
the skeleton keeps since the model needs it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.test_profile_job import FIXTURES

from torchls.source.inputs import from_text
from torchls.source.skeleton import skeleton
from torchls.source.spec import SpecError

WORKSPACE = FIXTURES / "workspace_args"


def test_values_beside_shapes() -> None:
    spec = from_text("(1, 3, 8, 8), 5, grid={'h': 4, 'w': 4}, mode='a, b', on=True", "--input")
    assert spec.as_json()["tensors"] == [
        {"shape": [1, 3, 8, 8], "dtype": "float32"},
        {"value": 5},
    ]
    assert spec.as_json()["kwargs"] == {
        "grid": {"value": {"h": 4, "w": 4}},
        "mode": {"value": "a, b"},
        "on": {"value": True},
    }
    assert spec.describe() == "(1, 3, 8, 8), 5, grid={'h': 4, 'w': 4}, mode='a, b', on=True"


@pytest.mark.parametrize(
    "written", ["(1, 2), open('x')", "(1, 2), x=__import__('os')", "(1, 2), y"]
)
def test_only_plain_values(written: str) -> None:
    with pytest.raises(SpecError, match="a plain value"):
        from_text(written, "--input")


def test_a_helper_under_a_decorator_call_is_kept() -> None:
    tree = ast.parse((WORKSPACE / "rotary.py").read_text())
    kept, _ = skeleton(tree)
    assert "rotate_half" in {getattr(statement, "name", "") for statement in kept.body}


def _torch_counts(mode: str) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(WORKSPACE))
    try:
        from rotary import GridAttention
    finally:
        sys.path.remove(str(WORKSPACE))
    model = GridAttention(8)
    angles = (torch.randn(1, 16, 8), torch.randn(1, 16, 8))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 16, 8), angles, {"h": 4, "w": 4}, mode=mode)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_cli_passes_values_to_forward(mode: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchls",
            "profile",
            "rotary.py::GridAttention",
            "--args",
            "(8,)",
            "--input",
            f"(2, 16, 8), ((1, 16, 8), (1, 16, 8)), grid={{'h': 4, 'w': 4}}, mode={mode!r}",
            "--json",
            "--no-thop",
        ],
        cwd=WORKSPACE,
        env={"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)["result"]
    assert (result["parameters"]["total"], result["macs"]) == _torch_counts(mode)
