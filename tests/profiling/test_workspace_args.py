"""Arguments that name a workspace class the profiled file does not import (`--args` and
`# torchls: args=`): a training wrapper given a model of the package next to it. The class is
found by its definition in the workspace and imported by module name, as Python would import
it from the workspace root; the output says where it came from, and a name two classes share
is reported as ambiguous instead of guessed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.test_profile_job import FIXTURES, Runner

WORKSPACE = FIXTURES / "workspace_args"


def _torchls(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args, "--json", "--no-thop"],
        cwd=WORKSPACE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _imported(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    sys.path.insert(0, str(WORKSPACE))
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    finally:
        sys.path.remove(str(WORKSPACE))


def _torch_counts(model: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(shape))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def _counts(payload: dict[str, Any]) -> tuple[int, int]:
    result = payload["result"]
    return result["parameters"]["total"], result["macs"]


def test_args_name_a_class_of_another_workspace_module() -> None:
    done = _torchls(
        "lightning_wrapper.py::Trainer",
        "--args",
        '(ConvAutoencoder(3, 8), {"lr": 0.001})',
        "--input",
        "(2, 3, 16, 16)",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    expected = _torch_counts(_imported("autoenc.conv.ConvAutoencoder")(3, 8), (2, 3, 16, 16))
    assert _counts(payload) == expected
    # the argument's model is built on the meta device as the wrapper is, so both run there
    assert payload["result"]["mode"] == "meta"
    (note,) = [p for p in payload["problems"] if "ConvAutoencoder" in p]
    assert "autoenc/conv.py" in note and "from autoenc.conv import ConvAutoencoder" in note


def test_of_two_classes_of_one_name_the_package_export_is_taken() -> None:
    # diffuse/__init__.py exports plain.py's Backbone; guided.py has another one
    done = _torchls(
        "diffuse/timed.py::TimedDenoiser", "--args", "(Backbone(16),)", "--input", "(1, 3, 8, 8)"
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    expected = _torch_counts(_imported("diffuse.plain.Backbone")(16), (1, 3, 8, 8))
    assert _counts(payload) == expected
    assert any("diffuse/plain.py" in p for p in payload["problems"])


def test_an_ambiguous_name_is_reported_and_a_dotted_one_is_taken() -> None:
    done = _torchls("outside.py::Chooser", "--args", "(Backbone(16),)", "--input", "(1, 16)")
    assert done.returncode == 2
    message = done.stderr.strip()
    assert "2 classes named `Backbone`" in message and "Traceback" not in message
    assert "diffuse/plain.py" in message and "diffuse/guided.py" in message
    assert len(message.splitlines()) == 1

    done = _torchls(
        "outside.py::Chooser", "--args", "(diffuse.guided.Backbone(16),)", "--input", "(1, 16)"
    )
    assert done.returncode == 0, done.stderr
    expected = _torch_counts(_imported("diffuse.guided.Backbone")(16), (1, 16))
    assert _counts(json.loads(done.stdout)) == expected


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(WORKSPACE)
    yield runner
    runner.close()


def test_the_args_comment_finds_the_class_too(runner: Runner) -> None:
    path = WORKSPACE / "with_comment.py"
    (target,) = [t for t in runner.targets(path).targets() if t.name == "Wrapped"]
    assert any("autoenc/conv.py" in p for p in target.problems)
    result = runner.ok(path, "Wrapped")
    expected = _torch_counts(_imported("autoenc.conv.ConvAutoencoder")(3, 8), (2, 3, 16, 16))
    assert (result["parameters"]["total"], result["macs"]) == expected
