"""forward() code the meta device cannot run (issue 15, item 5): tensors made without a device,
tensors put on the CPU, values read back with `.item()`/`.tolist()`/`.numpy()`, and
nn.TransformerEncoder's mask check. The profile job runs the forward on meta with the default
device set there, then with fake tensors, then on the CPU with random weights; each way's count
must be torch's own count of a real forward of the same model and input, and the report must
say which way ran.

The fixtures (fixtures/meta_fallbacks/heads.py) run in a real worker; the reference counts are
FlopCounterMode over real tensors in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tests.conftest import ROOT
from tests.profiling.test_profile_job import Runner, import_fixture, runner_on
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from torchls.cost import report

FIXTURE = ROOT / "tests" / "profiling" / "fixtures" / "meta_fallbacks" / "heads.py"


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    yield from runner_on(tmp_path_factory, FIXTURE)


@pytest.fixture(scope="module")
def heads() -> ModuleType:
    return import_fixture(FIXTURE, "meta_fallback_heads")


def torch_flops(model: nn.Module, inputs: list[torch.Tensor]) -> int:
    """torch's count of a real forward. On the math attention backend: the CPU's fused
    attention kernel is counted as nothing by FlopCounterMode (torch 2.13), where the meta
    device and the math backend count its matmuls."""
    model.eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def profile(runner: Runner, name: str) -> dict[str, Any]:
    return runner.ok(runner.workspace / FIXTURE.name, name)


def text_of(result: dict[str, Any]) -> str:
    return report.text(result, report.ReportContext())


def test_a_tensor_made_in_forward_without_a_device_is_counted_on_meta(
    runner: Runner, heads: ModuleType
) -> None:
    result = profile(runner, "ScoreHead")
    assert result["mode"] == "meta"
    assert result["mode_reason"] is None
    assert result["flops"] == torch_flops(heads.ScoreHead(), [torch.randn(4, 64)])
    assert "counted      on the meta device" in text_of(result)
    assert "Counted on the meta device." in report.markdown(result, report.ReportContext())


@pytest.mark.parametrize(
    ("name", "inputs", "line", "code"),
    [
        # torch.Tensor(n) ignores the default device: a CPU tensor meets meta weights
        ("OldStyleWeights", lambda: [torch.randn(2, 10, 48)], 38, "return torch.matmul("),
        # positions on self.device (the CPU), scores moved with .cpu()
        ("PinnedToCpu", lambda: [torch.randint(0, 16, (2, 16))], 55, "scores = (self.mix(h)"),
    ],
)
def test_tensors_on_the_cpu_in_forward_are_counted_with_fake_tensors(
    runner: Runner, heads: ModuleType, name: str, inputs: Any, line: int, code: str
) -> None:
    result = profile(runner, name)
    assert result["mode"] == "fake"
    assert result["flops"] == torch_flops(getattr(heads, name)(), inputs())
    assert f"on line {line} of heads.py" in result["mode_reason"]
    assert f"`{code}" in result["mode_reason"]
    assert "counted      with fake tensors (the meta device could not run `" in text_of(result)


def test_values_read_back_in_forward_are_counted_on_cpu_with_random_weights(
    runner: Runner, heads: ModuleType
) -> None:
    result = profile(runner, "RoutedByValue")
    assert result["mode"] == "cpu"
    assert result["flops"] == torch_flops(heads.RoutedByValue(), [torch.randn(3, 24)])
    assert result["parameters"]["total"] == 24 * 2 + 2 + 24 * 24 + 24
    reason = result["mode_reason"]
    assert reason.startswith("the meta device could not run `repeats = int(weights.sum().item()")
    assert "on line 86 of heads.py (Tensor.item() cannot be called on meta tensors)" in reason
    assert f"counted      on CPU with random weights ({reason})" in text_of(result)
    hover = report.markdown(result, report.ReportContext())
    assert f"Counted on CPU with random weights ({reason})." in hover


def test_a_transformer_encoders_mask_check_counts_attention_in_every_mode(
    runner: Runner, heads: ModuleType
) -> None:
    # The mask made on the CPU: torch reads its values, the weights stay on meta.
    on_meta = profile(runner, "CausalLM")
    # The mask moved to the input's device: no values on meta, a real forward on the CPU.
    on_cpu = profile(runner, "CausalLMMaskOnInput")
    assert on_meta["mode"] == "meta"
    assert on_cpu["mode"] == "cpu"
    assert "Tensor.item() cannot be called on meta tensors" in on_cpu["mode_reason"]
    tokens = torch.randint(0, 200, (20, 2))
    assert on_meta["flops"] == on_cpu["flops"] == torch_flops(heads.CausalLM(), [tokens])
    # per token and layer: q, k, v and out projections, the feed-forward's two layers
    linear_macs = 40 * 2 * (4 * 32 * 32 + 2 * 32 * 64) + 40 * 32 * 200
    # attention's matmuls: 2 layers x 2 sequences x 4 heads x (QK^T and AV) of 20x20x8
    attention_macs = 2 * 2 * 4 * 2 * 20 * 20 * 8
    assert on_cpu["macs"] == linear_macs + attention_macs


def test_weights_too_large_for_a_cpu_forward_are_named_with_the_memory(runner: Runner) -> None:
    result = runner.run(runner.workspace / FIXTURE.name, "WideRoutedByValue")
    assert not result.ok
    message = result.message
    assert message.startswith("forward() failed with the input (1, 40000): RuntimeError: ")
    assert "Tensor.item() cannot be called on meta tensors (heads.py, line 102)" in message
    assert "a CPU forward with random weights would need about 18,3" in message
    assert "\n" not in message


def test_a_real_bug_in_forward_is_reported_from_the_real_forward(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn

        class Mismatched(nn.Module):  # torchls: input=(2, 8)
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(8, 16)
                self.b = nn.Linear(12, 4)

            def forward(self, x):
                if x.sum().item() > 0:
                    x = x * 2
                return self.b(self.a(x))
        """
    )
    result = runner.run(path, "Mismatched")
    assert not result.ok
    assert "forward() failed with the input (2, 8): RuntimeError: mat1 and mat2" in result.message
    assert f"{Path(path).name}, line 14" in result.message
