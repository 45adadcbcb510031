"""Constructors that fetch pretrained weights build the same architecture without them (torchls
never downloads; the counts do not depend on the weights), and a model that cannot be built on
the meta device at all (a layer reads its own parameter back, on every move too) is built on
the CPU; both say so, and both count as torch does."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.source.spec import InputSpec, TensorSpec

WORKSPACE = FIXTURES / "workspace_args"


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(WORKSPACE)
    yield runner
    runner.close()


def test_pretrained_weights_are_not_fetched_and_the_counts_are_torchs(runner: Runner) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    given = InputSpec(tensors=(TensorSpec((2, 3, 16, 16)),), source="--input")
    result = runner.ok(WORKSPACE / "pretrained.py", "System", input_override=given)
    notes = " | ".join(result["notes"])
    assert "pretrained weights not downloaded (backbone-5e1f.pth)" in notes
    assert "built on the CPU: the constructor cannot run on the meta device" in notes
    assert result["build"] == "cpu"

    sys.path.insert(0, str(WORKSPACE))
    try:
        from pretrained import System
    finally:
        sys.path.remove(str(WORKSPACE))
    model = System(pretrained=False)  # the same architecture, built here without the fetch
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(2, 3, 16, 16))
    assert result["macs"] == counter.get_total_flops() // 2 > 0
    assert result["parameters"]["total"] == sum(p.numel() for p in model.parameters())
