"""Round trips: a checkpoint re-saved in the legacy format loads back equal, tensor by tensor,
with its structure, its shared storages and its dtypes; the original is never touched."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from tests.downgrade.helpers import fingerprint, is_legacy, leftovers, run
from torch import nn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


async def test_a_state_dict_loads_strictly_into_the_model_after_the_downgrade(
    tmp_path: Path,
) -> None:
    net = _net()
    source = tmp_path / "weights.pth"
    torch.save(net.state_dict(), source)
    before = fingerprint(source)
    progress: list[tuple[str, float | None]] = []
    outcome = await run(source, progress=progress)
    assert outcome.ok, outcome.message
    out = tmp_path / "weights.legacy.pth"
    assert outcome.output == out and is_legacy(out) and not is_legacy(source)
    assert fingerprint(source) == before  # the original is never modified
    assert leftovers(tmp_path) == []
    assert outcome.tensors == len(net.state_dict()) and "verified" in outcome.message
    loaded = torch.load(out, weights_only=True)
    assert isinstance(loaded, OrderedDict) and hasattr(loaded, "_metadata")  # as state_dict() made
    fresh = _net()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(loaded, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    steps = [m for m, _ in progress]
    assert steps[0] == "checking the input" and any(m.startswith("writing ") for m in steps)
    percentages = [p for _, p in progress if p is not None]
    assert percentages == sorted(percentages) and percentages[-1] <= 100


async def test_a_training_checkpoint_keeps_its_structure(tmp_path: Path) -> None:
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    net(torch.randn(2, 3, 3, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    checkpoint = {
        "epoch": 7,
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "metrics": {"loss": [0.5, float("nan"), float("inf")], "best": (1, "a")},
        "name": "run-1",
        "nothing": None,
    }
    source = tmp_path / "last.ckpt"
    torch.save(checkpoint, source)
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "last.legacy.ckpt", weights_only=True)
    assert list(loaded) == list(checkpoint) and loaded["epoch"] == 7
    assert loaded["metrics"]["best"] == (1, "a") and math.isnan(loaded["metrics"]["loss"][1])
    assert loaded["optimizer"]["param_groups"] == checkpoint["optimizer"]["param_groups"]
    for index, state in checkpoint["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(loaded["optimizer"]["state"][index][name], value)
    # The re-saved optimizer state resumes training.
    resumed = torch.optim.AdamW(_net().parameters(), lr=0.01)
    resumed.load_state_dict(loaded["optimizer"])


async def test_shared_storages_and_views_stay_shared(tmp_path: Path) -> None:
    base = torch.arange(12.0)
    weight = torch.randn(3, 3)
    source = tmp_path / "shared.pt"
    torch.save({"base": base, "view": base[2:8].view(2, 3), "t": base[::2], "a": weight,
                "tied": weight}, source)  # fmt: skip
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "shared.legacy.pt", weights_only=True)
    assert torch.equal(loaded["view"], base[2:8].view(2, 3))
    assert torch.equal(loaded["t"], base[::2]) and loaded["t"].stride() == (2,)
    loaded["base"][3] = -1.0  # one storage: the views see the change
    assert loaded["view"][0, 1] == -1.0
    assert loaded["a"] is loaded["tied"]
    assert outcome.bytes < 2 * (base.nbytes + weight.nbytes) + 2000  # storages written once


SUPPORTED = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128,
    torch.complex64, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
]  # fmt: skip


def _values(dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.tensor([True, False, True])
    if dtype.is_complex:
        return torch.tensor([1 + 2j, float("nan"), -0.0], dtype=dtype)
    if dtype.is_floating_point:
        return torch.tensor([float("nan"), float("-inf"), -0.0, 1e-3, 3.5], dtype=dtype)
    info = torch.iinfo(dtype)
    return torch.tensor([info.min, 0, info.max], dtype=dtype)


@pytest.mark.parametrize("dtype", SUPPORTED, ids=lambda d: str(d).removeprefix("torch."))
async def test_every_supported_dtype_comes_back_bit_for_bit(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    values = _values(dtype)
    source = tmp_path / "t.pt"
    torch.save({"x": values, "scalar": values[0].clone()}, source)
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "t.legacy.pt", weights_only=True)
    assert loaded["x"].dtype == dtype and loaded["x"].shape == values.shape
    # Bytes, so NaN, -0.0 and infinities count as equal only when they are the same bits.
    assert loaded["x"].view(torch.uint8).tolist() == values.view(torch.uint8).tolist()
    assert loaded["scalar"].dim() == 0


async def test_parameters_subclasses_and_lazy_bits_are_saved_plain(tmp_path: Path) -> None:
    complex_values = torch.tensor([1 + 2j, 3 - 4j])
    source = tmp_path / "odd.pt"
    torch.save(
        {
            "p": nn.Parameter(torch.ones(2)),
            "conj": complex_values.conj(),
            "neg": torch.tensor([2.0, -4.0])._neg_view(),  # a negative-bit view
            "grad": torch.ones(2, requires_grad=True),
        },
        source,
    )
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "odd.legacy.pt", weights_only=True)
    assert type(loaded["p"]) is torch.Tensor and not loaded["grad"].requires_grad
    assert not loaded["conj"].is_conj() and torch.equal(loaded["conj"], complex_values.conj())
    assert not loaded["neg"].is_neg() and loaded["neg"].tolist() == [-2.0, 4.0]


async def test_sparse_and_quantized_tensors(tmp_path: Path) -> None:
    dense = torch.zeros(4, 4)
    dense[1, 2] = 3.0
    quantized = torch.quantize_per_tensor(torch.tensor([0.1, -0.5, 2.0]), 0.1, 3, torch.qint8)
    source = tmp_path / "layouts.pt"
    torch.save({"sparse": dense.to_sparse(), "q": quantized}, source)
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "layouts.legacy.pt", weights_only=True)
    assert torch.equal(loaded["sparse"].to_dense(), dense)
    assert (
        torch.equal(loaded["q"].int_repr(), quantized.int_repr()) and loaded["q"].q_scale() == 0.1
    )


async def test_a_named_output_and_a_suffix(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"x": torch.ones(2)}, source)
    assert (await run(source, suffix="torch15")).output == tmp_path / "w.torch15.pt"
    target = tmp_path / "elsewhere.bin"
    assert (await run(source, output=target)).output == target and is_legacy(target)
