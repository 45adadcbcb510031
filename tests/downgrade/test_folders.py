"""Hugging Face model folders: `pytorch_model.bin` (single or sharded with its index) re-saved
in the legacy format, safetensors weights (single or sharded) merged into one legacy
`pytorch_model.bin`, the config and tokenizer files copied, and the result loaded by
transformers' `from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests.downgrade.helpers import fingerprint, is_legacy, leftovers, run


def _tiny_bert(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertModel(config)
    folder.mkdir()
    config.save_pretrained(folder)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return {k: v.clone() for k, v in model.state_dict().items()}


def _shard(weights: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    keys = list(weights)
    return [{k: weights[k] for k in keys[i::parts]} for i in range(parts)]


def _write(folder: Path, weights: dict[str, torch.Tensor], form: str, parts: int) -> None:
    ext, stem = ("bin", "pytorch_model") if form == "bin" else ("safetensors", "model")
    if parts == 1:
        if form == "bin":
            torch.save(weights, folder / f"{stem}.bin")
        else:
            save_file(weights, folder / f"{stem}.safetensors")
        return
    weight_map = {}
    for n, shard in enumerate(_shard(weights, parts), start=1):
        name = f"{stem}-{n:05d}-of-{parts:05d}.{ext}"
        if form == "bin":
            torch.save(shard, folder / name)
        else:
            save_file(shard, folder / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("form", "parts"),
    [("bin", 1), ("bin", 3), ("safetensors", 1), ("safetensors", 2)],
    ids=["bin", "bin-sharded", "safetensors", "safetensors-sharded"],
)
async def test_a_model_folder_is_rewritten_in_the_legacy_format(
    tmp_path: Path, form: str, parts: int
) -> None:
    from transformers import BertModel

    folder = tmp_path / "bert"
    weights = _tiny_bert(folder)
    _write(folder, weights, form, parts)
    before = fingerprint(folder)
    outcome = await run(folder)
    assert outcome.ok, outcome.message
    out = tmp_path / "bert-legacy"
    assert outcome.output == out and fingerprint(folder) == before
    assert leftovers(tmp_path) == []
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "vocab.txt" in names
    if form == "bin" and parts > 1:  # shards keep their names, and the index is carried over
        assert "pytorch_model.bin.index.json" in names
        shards = [n for n in names if n.startswith("pytorch_model-")]
        assert len(shards) == parts and all(is_legacy(out / n) for n in shards)
    else:  # one legacy pytorch_model.bin, which old transformers reads
        assert [n for n in names if "model" in n] == ["pytorch_model.bin"]
        assert is_legacy(out / "pytorch_model.bin")
    assert outcome.tensors == len(weights)
    loaded = BertModel.from_pretrained(out)
    for key, value in weights.items():
        assert torch.equal(loaded.state_dict()[key], value), key


async def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")
    outcome = await run(tmp_path / "notes")
    assert not outcome.ok and outcome.reason == "not-a-checkpoint"
    assert "config.json and weights" in outcome.message


async def test_an_index_naming_a_missing_shard_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "bert"
    weights = _tiny_bert(folder)
    _write(folder, weights, "bin", 2)
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    outcome = await run(folder)
    assert not outcome.ok and "names a shard that is not there" in outcome.message
    assert not (tmp_path / "bert-legacy").exists() and leftovers(tmp_path) == []
