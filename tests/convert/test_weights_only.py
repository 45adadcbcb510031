"""`convert weights-only`: a checkpoint torch >= 2.6 refuses by default (Namespace, numpy,
paths, enums) re-saved as plain data that torch.load(weights_only=True) loads, every
replacement listed; code (a custom class with state, a function) refused without ever importing
the module that defines it."""

from __future__ import annotations

import argparse
import enum
import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.convert.helpers import cli, run
from tests.downgrade.helpers import fingerprint


class Mode(enum.Enum):
    TRAIN = "train"


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    weights = {"w": torch.randn(3, 3), "b": torch.zeros(3)}
    args = argparse.Namespace(lr=0.1, out=pathlib.Path("/runs/a"), mode=Mode.TRAIN, layers=[2, 3])
    torch.save(
        {"model": weights, "args": args, "best": np.float64(0.25), "step": np.int64(7),
         "history": np.array([[1.5, 2.5]], dtype=np.float32)},
        path,
    )  # fmt: skip
    return weights


async def test_plain_data_is_replaced_and_listed(tmp_path: Path) -> None:
    source = tmp_path / "run.pt"
    weights = _checkpoint(source)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(source, weights_only=True)
    before = fingerprint(source)
    outcome = await run(source, "weights-only")
    assert outcome.ok, outcome.message
    assert "weights_only=False only after torchls's reader found no code-running global" in (
        outcome.message
    )
    assert outcome.output == tmp_path / "run.clean.pt" and fingerprint(source) == before
    loaded = torch.load(tmp_path / "run.clean.pt", weights_only=True)
    assert loaded["args"] == {"lr": 0.1, "out": "/runs/a", "mode": "train", "layers": [2, 3]}
    assert loaded["best"] == 0.25 and type(loaded["best"]) is float
    assert loaded["step"] == 7 and type(loaded["step"]) is int
    assert torch.equal(loaded["history"], torch.tensor([[1.5, 2.5]]))
    assert all(torch.equal(loaded["model"][k], v) for k, v in weights.items())
    replaced = "\n".join(outcome.replaced)
    expectations = [
        "argparse.Namespace -> dict", "PosixPath -> str", "Mode('train') -> 'train'",
        "numpy.float64 -> float", "numpy.int64 -> int", "numpy.ndarray float32",
    ]  # fmt: skip
    for expected in expectations:
        assert expected in replaced, expected
    again = cli("weights-only", str(tmp_path / "run.clean.pt"))
    assert again.returncode == 1 and "already loads" in again.stderr


def test_code_is_refused_and_its_module_never_imported(tmp_path: Path) -> None:
    """The class lives in a module that leaves a sentinel when imported: the conversion must
    name the class and never import it."""
    sentinel = tmp_path / "imported"
    (tmp_path / "userlib.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\n"
        "class Trainer:\n    def __init__(self):\n        self.depth = 3\n"
        "def schedule(step):\n    return step\n"
    )
    source = tmp_path / "t.pt"
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import userlib\n"
        "torch.save({'w': torch.ones(2), 'trainer': userlib.Trainer(), "
        "'fn': userlib.schedule}, sys.argv[2])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), str(source)], check=True)
    sentinel.unlink()
    # Run from the folder that holds userlib.py: a worker that imported what the file names
    # would find it there (the worker puts the folder it runs in on its path).
    done = cli("weights-only", str(source), "--format", "json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    result = json.loads(done.stdout)
    assert result["reason"] == "code"
    assert "userlib.Trainer" in result["message"] and "userlib.schedule" in result["message"]
    assert not sentinel.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "t.pt", "userlib.py",
    ]  # fmt: skip
