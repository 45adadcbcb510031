"""`convert extract` and `convert cast`: a training checkpoint's weights as a plain state dict,
and floating tensors in another dtype, each loaded back with weights_only=True and compared."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tests.convert.helpers import cli, run
from tests.downgrade.helpers import fingerprint, leftovers


def _training_checkpoint(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(
        {"epoch": 2, "global_step": 10, "state_dict": state,
         "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [{"last_epoch": 2}],
         "rng": torch.get_rng_state()},
        path,
    )  # fmt: skip
    return state


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


async def test_extract_keeps_the_weights_and_strips_a_prefix(tmp_path: Path) -> None:
    source = tmp_path / "last.ckpt"
    state = _training_checkpoint(source, prefix="model.")
    before = fingerprint(source)
    outcome = await run(source, "extract", strip_prefix="model.")
    assert outcome.ok, outcome.message
    out = tmp_path / "last.weights.pt"
    assert outcome.output == out and fingerprint(source) == before and leftovers(tmp_path) == []
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == [k.removeprefix("model.") for k in state]
    assert all(_bitwise(loaded[k.removeprefix("model.")], v) for k, v in state.items())
    # The optimizer, schedulers and RNG state are gone, and said so.
    assert sorted(outcome.removed) == sorted(
        ["['epoch']", "['global_step']", "['optimizer_states']", "['lr_schedulers']", "['rng']"]
    )
    torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).load_state_dict(loaded)
    missing = await run(source, "extract", strip_prefix="module.", output=tmp_path / "o.pt")
    assert not missing.ok and "module." in missing.message and not (tmp_path / "o.pt").exists()
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    already = cli("extract", str(plain))
    assert already.returncode == 1 and "already a plain state dict" in already.stderr


async def test_cast_to_bf16_leaves_integers_and_the_optimizer(tmp_path: Path) -> None:
    source = tmp_path / "last.ckpt"
    state = _training_checkpoint(source)
    original = torch.load(source, weights_only=True)
    done = cli("cast", str(source), "--dtype", "bf16", "--keep-norm-fp32", "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    out = tmp_path / "last.bf16.ckpt"
    assert result["ok"] and result["output"] == str(out)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert result["before"] == sum(v.numel() * v.element_size() for v in state.values())
    assert result["before"] > result["after"]
    cast = torch.load(out, weights_only=True)
    for name, tensor in state.items():
        got = cast["state_dict"][name]
        if name.endswith(("running_mean", "running_var")) or not tensor.is_floating_point():
            assert _bitwise(got, tensor), name
        else:
            assert got.dtype == torch.bfloat16 and _bitwise(got, tensor.to(torch.bfloat16))
    assert floats
    momentum = original["optimizer_states"][0]["state"][0]["momentum_buffer"]
    assert _bitwise(cast["optimizer_states"][0]["state"][0]["momentum_buffer"], momentum)
    assert cast["epoch"] == 2 and _bitwise(cast["rng"], original["rng"])


async def test_cast_refuses_a_value_fp16_cannot_hold(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    fits = torch.tensor([65504.0, -65504.0, float("inf")])  # the largest fp16, and inf stays inf
    torch.save({"ok": fits, "big": torch.tensor([1.0, 70000.0])}, source)
    outcome = await run(source, "cast", dtype="fp16")
    assert not outcome.ok and outcome.reason == "overflow"
    assert "big" in outcome.message and "70000" in outcome.message and "\n" not in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]
    torch.save({"ok": fits}, source)
    assert (await run(source, "cast", dtype="fp16")).ok
    assert torch.equal(torch.load(tmp_path / "w.fp16.pt")["ok"], fits.half())


async def test_a_safetensors_file_is_cast_to_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = {"w": torch.randn(3, 3), "ids": torch.arange(4)}
    source = tmp_path / "m.safetensors"
    save_file(state, source)
    outcome = await run(source, "cast", dtype="fp16")
    assert outcome.ok, outcome.message
    loaded = load_file(tmp_path / "m.fp16.safetensors")
    assert _bitwise(loaded["w"], state["w"].half()) and _bitwise(loaded["ids"], state["ids"])
