"""What the viewer's header and the inspect report say about a model folder's size, and the
shard messages' counts: as a user would check them against `ls -l`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from torchls.checkpoint import read_checkpoint
from torchls.checkpoint.reader import ReadBudget
from torchls.inspect_report import render_inspect


def _model_folder(folder: Path) -> tuple[int, int]:
    """A sharded save_pretrained folder, with a tokenizer and an optimizer state beside the
    weights (as a Trainer checkpoint folder has); the second shard holds one tensor. Returns the
    shards' bytes on disk and the index's."""
    folder.mkdir()
    first = {"embed.weight": torch.zeros(64, 16), "layer.0.weight": torch.zeros(16, 16)}
    second = {"head.weight": torch.zeros(3, 16)}
    save_file(first, folder / "model-00001-of-00002.safetensors")
    save_file(second, folder / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in second}
    index = folder / "model.safetensors.index.json"
    index.write_text(
        json.dumps({"metadata": {"total_size": 4 * (1024 + 256 + 48)}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "tokenizer.json").write_bytes(b"{}" + b" " * 200_000)
    (folder / "optimizer.pt").write_bytes(b"\0" * 300_000)
    shards = sum(p.stat().st_size for p in folder.glob("model-*.safetensors"))
    return shards, index.stat().st_size


def test_a_sharded_folder_is_as_large_as_its_shards(tmp_path: Path) -> None:
    shards, index_size = _model_folder(tmp_path / "bert")
    by_folder = read_checkpoint(tmp_path / "bert")
    by_index = read_checkpoint(tmp_path / "bert" / "model.safetensors.index.json")
    for summary in (by_folder, by_index):
        assert summary.file_size == shards
        assert summary.details["index_size"] == index_size
        assert [s["file_size"] for s in summary.details["shards"]] == [
            (tmp_path / "bert" / s["file"]).stat().st_size for s in summary.details["shards"]
        ]
    text = render_inspect(by_index.as_json())
    assert f"{shards:,} bytes on disk in 2 shards (and the index, {index_size:,} bytes)" in text


def test_a_folder_with_one_weights_file_is_as_large_as_that_file(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    save_file({"w": torch.zeros(10)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    (folder / "optimizer.pt").write_bytes(b"\0" * 100_000)
    summary = read_checkpoint(folder)
    assert summary.file_size == (folder / "model.safetensors").stat().st_size


def test_shard_messages_count_one_tensor_in_the_singular(tmp_path: Path) -> None:
    _model_folder(tmp_path / "bert")
    (tmp_path / "bert" / "model-00002-of-00002.safetensors").unlink()
    summary = read_checkpoint(tmp_path / "bert", ReadBudget(shard_problems=True))
    [problem] = summary.details["shard_problems"]
    assert problem.endswith("is missing (1 tensor)"), problem
    strict = subprocess.run(
        [sys.executable, "-m", "torchls", "inspect", str(tmp_path / "bert")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert strict.returncode == 1 and "(1 tensor)" in strict.stderr, strict.stderr
