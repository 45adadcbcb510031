"""Two ways real models stopped a profile with no help from the user: an image model sized for
28x28 or 32x32 got the usual 224x224 guess (a shape error in its flatten), and a constructor that
puts its layers on a device (`nn.Conv2d(...).to(device)`) failed on the meta device with
"Cannot copy out of meta tensor". The counts must still be torch's own, on real tensors."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch
from tests.conftest import ROOT
from tests.profiling.test_profile_job import Runner, import_fixture, runner_on
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FIXTURE = ROOT / "tests" / "profiling" / "fixtures" / "placement" / "nets.py"


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    yield from runner_on(tmp_path_factory, FIXTURE)


@pytest.fixture(scope="module")
def nets() -> ModuleType:
    return import_fixture(FIXTURE, "placement_nets")


def _torch_counts(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(shape))
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops())


def _profile(runner: Runner, name: str) -> dict[str, Any]:
    return runner.ok(runner.workspace / FIXTURE.name, name)


@pytest.mark.parametrize(("name", "side"), [("DigitNet", 28), ("Critic", 32)])
def test_an_image_model_sized_for_small_images_gets_the_size_it_accepts(
    runner: Runner, nets: ModuleType, name: str, side: int
) -> None:
    result = _profile(runner, name)
    channels = 1 if name == "DigitNet" else 3
    shape = [1, channels, side, side]
    assert result["inputs"]["tensors"] == [{"shape": shape, "dtype": "float32"}]
    # still a guess, and it says how it was found
    assert result["inputs"]["guess"] is True
    assert f"at {side}x{side}" in result["inputs"]["source"]
    assert "224x224 does not fit" in result["inputs"]["source"]
    params, flops = _torch_counts(getattr(nets, name)(), tuple(shape))
    assert (result["parameters"]["total"], result["flops"]) == (params, flops)
    assert result["mode"] == "meta"


def test_a_model_that_takes_any_size_keeps_the_usual_guess(runner: Runner) -> None:
    result = _profile(runner, "AnySize")
    assert result["inputs"]["tensors"][0]["shape"] == [1, 3, 224, 224]
    assert "does not fit" not in result["inputs"]["source"]


def test_layers_put_on_a_device_in_the_constructor_are_built_on_meta(
    runner: Runner, nets: ModuleType
) -> None:
    result = _profile(runner, "Placed")
    assert result["build"] == "meta"
    params, flops = _torch_counts(nets.Placed(), (1, 1, 28, 28))
    assert result["inputs"]["tensors"][0]["shape"] == [1, 1, 28, 28]
    assert (result["parameters"]["total"], result["flops"]) == (params, flops)
    # the dtype the constructor asked for is kept: 10 half-precision values
    assert result["buffers"]["bytes"] == 10 * 2


@pytest.mark.parametrize(
    ("name", "shape", "why"),
    [
        ("TinyViT", (1, 3, 64, 64), "takes images: (192,) of the first layer"),
        ("SizedCoder", (1, 3, 96, 96), "the side the constructor was given (96)"),
    ],
)
def test_an_image_model_gets_the_side_it_was_built_for(
    runner: Runner, nets: ModuleType, name: str, shape: tuple[int, ...], why: str
) -> None:
    result = _profile(runner, name)
    assert result["inputs"]["tensors"] == [{"shape": list(shape), "dtype": "float32"}]
    assert result["inputs"]["guess"] is True and why in result["inputs"]["source"]
    params, flops = _torch_counts(getattr(nets, name)(), shape)
    assert (result["parameters"]["total"], result["flops"]) == (params, flops)
