"""Input dtypes as users write them after the colon, complex ones included (`:complex64` for a
complex-valued layer), in --input and `# torchls: input=` alike; counted exactly."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.source.inputs import from_text
from torchls.source.spec import SpecError

WORKSPACE = FIXTURES / "workspace_args"


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(WORKSPACE)
    yield runner
    runner.close()


@pytest.mark.parametrize(
    ("written", "dtype"),
    [
        ("complex64", "complex64"),
        ("cfloat", "complex64"),
        ("torch.complex128", "complex128"),
        ("int8", "int8"),
        ("int16", "int16"),
    ],
)
def test_dtype_names(written: str, dtype: str) -> None:
    spec = from_text(f"(2, 8):{written}", "--input")
    assert spec.as_json()["tensors"] == [{"shape": [2, 8], "dtype": dtype}]


def test_an_unknown_dtype_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match="complex64"):
        from_text("(2, 8):quaternion", "--input")


def test_a_complex_input_is_counted_as_torch_counts_it(runner: Runner) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = from_text("(3, 8):complex64", "--input")
    result = runner.ok(WORKSPACE / "spectral.py", "ComplexMix", input_override=spec)
    sys.path.insert(0, str(WORKSPACE))
    try:
        from spectral import ComplexMix
    finally:
        sys.path.remove(str(WORKSPACE))
    model = ComplexMix()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(3, 8, dtype=torch.complex64))
    assert result["macs"] == counter.get_total_flops() // 2 > 0
    assert result["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert result["inputs"]["tensors"] == [{"shape": [3, 8], "dtype": "complex64"}]
