"""`convert consolidate`: shards (safetensors or torch.save, with their index) into one file,
and one file into shards with an index, compared tensor by tensor."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tests.convert.helpers import cli, run
from tests.downgrade.helpers import fingerprint, leftovers


def _state() -> dict[str, torch.Tensor]:
    return {f"h.{i}.weight": torch.randn(32, 32) for i in range(4)} | {"ids": torch.arange(3)}


def _write_shards(folder: Path, state: dict[str, torch.Tensor], safetensors: bool) -> Path:
    folder.mkdir()
    names = list(state)
    weight_map = {}
    stem, ext = ("model", ".safetensors") if safetensors else ("pytorch_model", ".bin")
    for n, part in enumerate((names[:2], names[2:]), start=1):
        shard = f"{stem}-0000{n}-of-00002{ext}"
        tensors = {k: state[k] for k in part}
        if safetensors:
            save_file(tensors, folder / shard)
        else:
            torch.save(tensors, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = folder / f"{stem}{ext}.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


async def test_safetensors_shards_into_one_file_and_back(tmp_path: Path) -> None:
    state = _state()
    index = _write_shards(tmp_path / "m", state, safetensors=True)
    before = fingerprint(index.parent)
    outcome = await run(index.parent, "consolidate")
    assert outcome.ok, outcome.message
    merged = tmp_path / "m" / "model.safetensors"
    assert outcome.output == merged and outcome.tensors == len(state)
    loaded = load_file(merged)
    assert loaded.keys() == state.keys() and all(_same(loaded[k], v) for k, v in state.items())
    merged.rename(tmp_path / "one.safetensors")
    assert fingerprint(index.parent) == before
    split = cli("consolidate", str(tmp_path / "one.safetensors"), "--max-shard-size", "5KB")
    assert split.returncode == 0, split.stderr
    folder = tmp_path / "one-shards"
    again = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(again["weight_map"].values())) == 4
    for name, tensor in state.items():
        assert _same(load_file(folder / again["weight_map"][name])[name], tensor)
    assert leftovers(tmp_path) == [] and leftovers(folder) == []


async def test_torch_shards_into_one_file_and_back(tmp_path: Path) -> None:
    state = _state()
    index = _write_shards(tmp_path / "m", state, safetensors=False)
    done = cli("consolidate", str(index))
    assert done.returncode == 0, done.stderr
    merged = torch.load(tmp_path / "m" / "pytorch_model.bin", weights_only=True)
    assert list(merged) == list(state) and all(_same(merged[k], v) for k, v in state.items())
    outcome = await run(
        tmp_path / "m" / "pytorch_model.bin", "consolidate", max_shard_bytes=5000,
        output=tmp_path / "again",
    )  # fmt: skip
    assert outcome.ok, outcome.message
    again = json.loads((tmp_path / "again" / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(again["weight_map"].values()))
    assert shards == [f"pytorch_model-0000{i}-of-00004.bin" for i in (1, 2, 3, 4)]
    for name, tensor in state.items():
        part = torch.load(tmp_path / "again" / again["weight_map"][name], weights_only=True)
        assert _same(part[name], tensor)
    exists = cli("consolidate", str(index))
    assert exists.returncode == 1 and "--force" in exists.stderr
    single = cli("consolidate", str(tmp_path / "m" / "pytorch_model.bin"))
    assert single.returncode == 1 and "--max-shard-size" in single.stderr
