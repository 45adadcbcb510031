"""Cases an adversarial review found: each failed (or wrote a wrong file while saying
"verified") before its fix."""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tests.downgrade.helpers import is_legacy, leftovers, run

ROOT = Path(__file__).resolve().parents[2]


def _model_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text("{}")


async def test_a_shard_with_any_name_is_converted_not_copied(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _model_folder(folder)
    torch.save({"a": torch.ones(2)}, folder / "w.bin")
    index = {"weight_map": {"a": "w.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    outcome = await run(folder)
    assert outcome.ok, outcome.message
    assert is_legacy(tmp_path / "m-legacy" / "w.bin")


async def test_a_uint64_value_past_int64_is_refused_even_when_casting(tmp_path: Path) -> None:
    source = tmp_path / "u64.safetensors"
    save_file({"big": torch.tensor([2**63 + 5, 1], dtype=torch.uint64)}, source)
    outcome = await run(source, cast=True)
    assert not outcome.ok and outcome.reason == "unsupported-dtypes"
    assert "values >= 2**63" in outcome.message and "cannot be cast without loss" in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u64.safetensors"]


async def test_a_tied_tensor_is_cast_once_and_stays_tied(tmp_path: Path) -> None:
    shared = torch.tensor([1, 2, 65535], dtype=torch.uint16)
    source = tmp_path / "tied.pt"
    torch.save({"a": shared, "b": shared}, source)
    outcome = await run(source, cast=True)
    assert outcome.ok, outcome.message
    assert sorted(outcome.cast) == ["['a']: uint16 -> int32", "['b']: uint16 -> int32"]
    loaded = torch.load(tmp_path / "tied.legacy.pt", weights_only=True)
    assert loaded["a"] is loaded["b"] and loaded["a"].tolist() == [1, 2, 65535]


async def test_replacing_a_folder_output_leaves_no_old_copy_and_keeps_subfolders(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "st"
    _model_folder(folder)
    torch.save({"w": torch.ones(2)}, folder / "pytorch_model.bin")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}')
    (folder / ".gitattributes").write_text("*.bin filter=lfs\n")
    assert (await run(folder)).ok
    again = await run(folder, overwrite=True)
    assert again.ok, again.message
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "st",
        "st-legacy",
    ]
    out = tmp_path / "st-legacy"
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling": "mean"}'
    assert (out / ".gitattributes").exists()


async def test_a_users_folder_named_like_the_output_is_never_moved(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    (tmp_path / "w.legacy.pt").mkdir()
    (tmp_path / "w.legacy.pt" / "mine.txt").write_text("mine")
    outcome = await run(source, overwrite=True)
    assert not outcome.ok and "is a folder" in outcome.message
    assert (tmp_path / "w.legacy.pt" / "mine.txt").read_text() == "mine"
    assert leftovers(tmp_path) == []


async def test_mapping_types_odd_keys_and_safetensors_under_another_name(tmp_path: Path) -> None:
    source = tmp_path / "odd.pt"
    torch.save(
        {
            "counts": collections.Counter(a=2),
            "ordered": collections.OrderedDict(b=torch.ones(1)),
            float("nan"): 1,
            3: (torch.zeros(0), torch.tensor(5)),
        },
        source,
    )
    outcome = await run(source)
    assert outcome.ok, outcome.message
    loaded = torch.load(tmp_path / "odd.legacy.pt", weights_only=True)
    assert type(loaded["counts"]) is collections.Counter and loaded["counts"]["a"] == 2
    assert type(loaded["ordered"]) is collections.OrderedDict
    assert any(isinstance(k, float) and math.isnan(k) for k in loaded)
    assert loaded[3][1].item() == 5
    disguised = tmp_path / "st_as.pt"
    save_file({"w": torch.arange(4.0)}, disguised)
    converted = await run(disguised)
    assert converted.ok, converted.message
    assert torch.equal(torch.load(tmp_path / "st_as.legacy.pt", weights_only=True)["w"],
                       torch.arange(4.0))  # fmt: skip
