"""`convert safetensors`: state dicts, training checkpoints, tied and non-contiguous tensors,
shards and Hugging Face folders, each read back by the safetensors package and compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model
from tests.convert.helpers import cli, run
from tests.downgrade.helpers import fingerprint, leftovers


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.contiguous(), b.contiguous()
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models do
        self.norm = torch.nn.BatchNorm1d(4)


async def test_a_state_dict_with_tied_and_strided_tensors(tmp_path: Path) -> None:
    model = Tied()
    state = model.state_dict()
    base = torch.randn(6, 8)
    state["transposed"] = base.t()  # non-contiguous
    state["half"] = torch.tensor([1.5, float("nan"), -0.0], dtype=torch.bfloat16)
    state["flags"] = torch.tensor([True, False])
    source = tmp_path / "model.bin"
    torch.save(state, source)
    before = fingerprint(source)
    outcome = await run(source, "safetensors")
    assert outcome.ok, outcome.message
    out = tmp_path / "model.safetensors"
    assert outcome.output == out and fingerprint(source) == before and leftovers(tmp_path) == []
    loaded = load_file(out)
    # One copy of the tied weight, the other name recorded so load_model can restore it.
    assert outcome.dropped == {"head.weight": "embed.weight"}
    assert "head.weight" not in loaded
    with safe_open(out, framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata == {"format": "pt", "head.weight": "embed.weight"}
    for name, tensor in state.items():
        kept = outcome.dropped.get(name, name)
        assert _bitwise(loaded[kept], tensor), name
    fresh = Tied()
    missing, unexpected = load_model(fresh, out, strict=False)
    assert not missing and sorted(unexpected) == ["flags", "half", "transposed"]
    assert fresh.head.weight is fresh.embed.weight
    assert _bitwise(fresh.head.weight.detach(), model.embed.weight.detach())


async def test_a_training_checkpoint_asks_which_state_dict(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    ema = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    source = tmp_path / "last.ckpt"
    torch.save(
        {"epoch": 3, "state_dict": model.state_dict(), "ema": ema,
         "optimizer_states": [optimizer.state_dict()]},
        source,
    )  # fmt: skip
    asked = await run(source, "safetensors")
    assert not asked.ok and asked.reason == "several-state-dicts"
    assert asked.candidates == ["['ema']", "['state_dict']"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    done = cli("safetensors", str(source), "--key", "ema")
    assert done.returncode == 0, done.stderr
    loaded = load_file(tmp_path / "last.safetensors")
    assert loaded.keys() == ema.keys()
    assert all(_bitwise(loaded[k], ema[k]) for k in ema)
    refused = cli("safetensors", str(tmp_path / "last.ckpt"), "-o", str(tmp_path / "x.st"))
    assert refused.returncode == 1 and "--key" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


async def test_sharded_output_has_an_index_transformers_reads(tmp_path: Path) -> None:
    state = {f"layer{i}.weight": torch.randn(64, 64) for i in range(5)}  # 16 KiB each
    source = tmp_path / "big.pt"
    torch.save(state, source)
    outcome = await run(source, "safetensors", max_shard_bytes=40_000)
    assert outcome.ok, outcome.message
    folder = tmp_path / "big-safetensors"
    assert outcome.output == folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == 5 * 64 * 64 * 4
    for name, tensor in state.items():
        part = load_file(folder / index["weight_map"][name])
        assert _bitwise(part[name], tensor)
        assert (folder / index["weight_map"][name]).stat().st_size <= 40_000 + 1024
    assert leftovers(tmp_path) == []


async def test_a_hugging_face_folder_is_converted_whole(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16, tie_word_embeddings=True
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "tiny"
    # What transformers < 5 wrote (5 writes safetensors only): pytorch_model.bin shards and
    # their index, the tied head saved under both names.
    model.config.save_pretrained(folder)
    state = model.state_dict()
    names = list(state)
    half = len(names) // 2
    weight_map = {}
    for n, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"pytorch_model-0000{n}-of-00002.bin"
        torch.save({k: state[k] for k in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (folder / "README.md").write_text("notes")
    resharded = await run(folder, "safetensors", max_shard_bytes=10**9)
    assert not resharded.ok and "keeps its shards" in resharded.message
    outcome = await run(folder, "safetensors")
    assert outcome.ok, outcome.message
    out = tmp_path / "tiny-safetensors"
    assert outcome.output == out
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    ]  # fmt: skip
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) | set(outcome.dropped) == set(state)
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert _bitwise(a, b), name
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids).logits, again(ids).logits)
