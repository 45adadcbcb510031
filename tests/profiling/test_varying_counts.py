"""Counts that vary between runs (issue 15, item 8): models that skip layers at random even in
eval mode (stochastic depth, layer dropout written without a `self.training` check). The job
runs the forward more than once; when the runs differ, the result gives the range and the
report says the count varies instead of showing one run's figure as exact.

Fixtures: fixtures/varying_counts/stochastic.py, 16 blocks of Linear(32, 32) (1,024 MACs per
sample, 2 samples) each kept with probability one half.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.test_profile_job import Runner, runner_on

from torchls.cost import report

FIXTURE = ROOT / "tests" / "profiling" / "fixtures" / "varying_counts" / "stochastic.py"
BLOCK = 2 * 32 * 32  # MACs of one block on the (2, 32) input
STEM = 2 * 32 * 32
HEAD = 2 * 32 * 10
DEPTH = 16


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    yield from runner_on(tmp_path_factory, FIXTURE)


def profile(runner: Runner, name: str) -> dict[str, Any]:
    return runner.ok(runner.workspace / FIXTURE.name, name)


def blocks_in(macs: int, fixed: int) -> int:
    """How many blocks a count holds, checking it holds a whole number of them."""
    assert (macs - fixed) % BLOCK == 0, macs
    blocks = (macs - fixed) // BLOCK
    assert 0 <= blocks <= DEPTH
    return blocks


def test_layers_skipped_with_pythons_random_give_a_range_on_meta(runner: Runner) -> None:
    result = profile(runner, "LayerDropNet")
    assert result["mode"] == "meta"
    variation = result["variation"]
    assert variation is not None
    low, high = variation["macs"]["min"], variation["macs"]["max"]
    assert blocks_in(low, HEAD) < blocks_in(high, HEAD)
    assert variation["flops"] == {"min": 2 * low, "max": 2 * high}
    assert variation["runs"] >= 3
    assert variation["module"] is None  # the model's own forward decides
    assert result["macs"] == high  # the figures of the largest run, layers included
    expected = f"varies between runs: {report.count_range(low, high)}; stochastic layers in forward"
    text = report.text(result, report.ReportContext())
    assert f"  MACs         {expected} (MACs {low:,} to {high:,} in" in text
    assert f"  MACs         {high:,} ({report.count(high)})" not in text
    hover = report.markdown(result, report.ReportContext())
    assert f"| MACs | **{expected}** |" in hover
    assert f"**{report.count(result['macs'])}** ({result['macs']:,})" not in hover


def test_layers_gated_by_a_torch_random_number_give_a_range_on_cpu(runner: Runner) -> None:
    result = profile(runner, "TorchGatedNet")
    assert result["mode"] == "cpu"  # `if torch.rand(1, device=x.device) >= p` needs a value
    variation = result["variation"]
    assert variation is not None
    low, high = variation["macs"]["min"], variation["macs"]["max"]
    assert blocks_in(low, STEM + HEAD) < blocks_in(high, STEM + HEAD)
    assert variation["module"] == "`body` (GatedStack)"
    text = report.text(result, report.ReportContext())
    assert "stochastic layers in forward of `body` (GatedStack)" in text


def test_a_steady_model_has_one_exact_count(runner: Runner) -> None:
    result = profile(runner, "SteadyNet")
    assert result["variation"] is None
    assert result["macs"] == DEPTH * BLOCK
    text = report.text(result, report.ReportContext())
    assert f"  MACs         {DEPTH * BLOCK:,} ({report.count(DEPTH * BLOCK)})" in text
    assert "varies" not in text


def test_count_range_shares_one_unit() -> None:
    assert report.count_range(6_370_000_000, 7_060_000_000) == "6.37-7.06 G"
    assert report.count_range(950_000, 1_200_000) == "950 K - 1.2 M"
