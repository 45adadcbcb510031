"""The checkpoint viewer's requests through a real LSP session over stdio (the contract:
/work/notes/viewer-protocol.md). Checkpoints are written by torch in the test; the server reads
them without torch, in its reader process, and only compareModel builds a model (in the worker).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from tests.checkpoint.factories import Payload, touch_command
from tests.conftest import Session, _plain, lsp_session
from torch import nn


async def request(session: Session, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = await session.client.protocol.send_request_async(method, params)
    result: dict[str, Any] = _plain(reply)
    return result


async def inspect(session: Session, path: Path) -> dict[str, Any]:
    return await request(session, "torchls/inspect", {"uri": path.as_uri()})


def tensors_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's tensor table as objects (its columns named by tensor_columns), as the
    viewer makes them; the report's own list is empty."""
    assert answer["report"]["tensors"] == []
    columns = answer["tensor_columns"]
    optional = ("subclass", "shard", "shared_with")
    return [
        {n: v for n, v in zip(columns, row, strict=False) if n not in optional or v}
        for row in answer["tensor_rows"]
    ]


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)


def _training_checkpoint(path: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Net()
    model.fc.weight.data = model.fc.weight.data.to(torch.float16)  # a second dtype to count
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    obj = {
        "epoch": 12,
        "lr": 3e-4,
        "pytorch-lightning_version": "2.2.1",
        "hyper_parameters": {"num_classes": 10, "lr": 3e-4, "optim": {"name": "adam"}},
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(obj, path)
    return obj


async def test_inspect_training_checkpoint_numbers(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    obj = _training_checkpoint(ckpt)
    state = obj["state_dict"]
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        answer = await inspect(session, ckpt)
    assert "error" not in answer, answer
    report = answer["report"]
    assert report["schema"] == "torchls.inspect/1"
    assert report["format"] == "torch-zip"
    assert report["file_size"] == ckpt.stat().st_size
    assert answer["stamp"] == {
        "size": ckpt.stat().st_size,
        "mtime_ns": ckpt.stat().st_mtime_ns,
    }
    assert answer["cached"] is False
    # Counts and bytes by dtype, as torch itself has them.
    assert report["totals"]["tensors"] == len(state)
    by_dtype: dict[str, dict[str, int]] = {}
    for tensor in state.values():
        name = str(tensor.dtype).removeprefix("torch.")
        entry = by_dtype.setdefault(name, {"tensors": 0, "elements": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["elements"] += tensor.numel()
        entry["bytes"] += tensor.numel() * tensor.element_size()
    assert report["totals"]["by_dtype"] == by_dtype
    rows = {t["key"]: t for t in tensors_of(answer) if t["container"] == "['state_dict']"}
    assert {k: v["shape"] for k, v in rows.items()} == {k: list(v.shape) for k, v in state.items()}
    # The verdict and the globals it names.
    assert report["weights_only"]["accepted"] is True
    names = {g["name"]: g for g in report["globals"]}
    assert "torch._utils._rebuild_tensor_v2" in names
    assert all(g["weights_only_allowed"] and not g["dangerous"] for g in names.values())
    # The container tree with its plain values.
    tree = report["tree"]
    assert tree["values"]["epoch"] == 12 and tree["values"]["lr"] == 3e-4
    children = {c["path"]: c for c in tree["children"]}
    assert children["['state_dict']"]["tensors"] == len(state)
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    assert children["['state_dict']"]["bytes"] == state_bytes
    assert tree["bytes"] == report["totals"]["bytes"]
    assert {"['state_dict']", "['optimizer']", "['hyper_parameters']"} <= set(children)
    assert answer["hparams"] == {"num_classes": 10, "lr": 3e-4, "optim": {"name": "adam"}}
    assert answer["versions"]["lightning"] == "2.2.1"
    assert answer["versions"]["torch"] is None  # torch.save records no torch version
    assert answer["shards"] is None and answer["shard_problems"] == []


async def test_shared_storages_safetensors_metadata_and_hf_versions(tmp_path: Path) -> None:
    tied = nn.Linear(4, 4)
    state = {"embed.weight": tied.weight, "lm_head.weight": tied.weight, "bias": tied.bias}
    torch.save({k: v.detach() for k, v in state.items()}, tmp_path / "tied.pt")
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(
        {"a": torch.zeros(2, 3), "b": torch.ones(5, dtype=torch.bfloat16)},
        folder / "model.safetensors",
        metadata={"format": "pt", "note": "made by a test"},
    )
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "transformers_version": "4.40.0"})
    )
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        tied_answer = await inspect(session, tmp_path / "tied.pt")
        folder_answer = await inspect(session, folder)
    rows = {t["key"]: t for t in tensors_of(tied_answer)}
    assert rows["lm_head.weight"]["shared_with"] == "embed.weight"
    assert "shared_with" not in rows["embed.weight"] and "shared_with" not in rows["bias"]
    assert folder_answer["report"]["format"] == "huggingface"
    assert folder_answer["metadata"] == {"format": "pt", "note": "made by a test"}
    assert folder_answer["versions"]["transformers"] == "4.40.0"
    assert folder_answer["report"]["totals"]["by_dtype"]["bfloat16"]["bytes"] == 10
    sizes = sum(f.stat().st_size for f in folder.iterdir())
    assert folder_answer["stamp"]["size"] == sizes


def _sharded(folder: Path) -> dict[str, torch.Tensor]:
    """A two-shard safetensors checkpoint with its index, as transformers writes one."""
    folder.mkdir()
    torch.manual_seed(1)
    first = {"embed.weight": torch.randn(8, 4), "layer.0.weight": torch.randn(4, 4)}
    second = {"layer.1.weight": torch.randn(4, 4), "head.weight": torch.randn(2, 4)}
    save_file(first, folder / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file(second, folder / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in second}
    total = sum(t.numel() * t.element_size() for t in (first | second).values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return first | second


async def test_sharded_folder_and_each_inconsistency(tmp_path: Path) -> None:
    good = tmp_path / "good"
    tensors = _sharded(good)
    # A shard the index lists is missing.
    missing = tmp_path / "missing"
    _sharded(missing)
    (missing / "model-00002-of-00002.safetensors").unlink()
    # A tensor listed twice in the weight_map (JSON with a repeated key).
    twice = tmp_path / "twice"
    _sharded(twice)
    index_path = twice / "model.safetensors.index.json"
    text = index_path.read_text()
    repeated = '"weight_map": {"head.weight": "model-00001-of-00002.safetensors", '
    index_path.write_text(text.replace('"weight_map": {', repeated))
    # A shard whose offsets run past its end.
    cut = tmp_path / "cut"
    _sharded(cut)
    shard = cut / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    # total_size wrong.
    total = tmp_path / "total"
    _sharded(total)
    index_path = total / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] += 4
    index_path.write_text(json.dumps(index))

    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        answers = {
            name: await inspect(session, tmp_path / name)
            for name in ("good", "missing", "twice", "cut", "total")
        }
        by_index = await inspect(session, good / "model.safetensors.index.json")

    ok = answers["good"]
    assert ok["shard_problems"] == []
    assert ok["shards"] == [
        {"file": "model-00001-of-00002.safetensors", "tensors": 2, "bytes": (32 + 16) * 4},
        {"file": "model-00002-of-00002.safetensors", "tensors": 2, "bytes": (16 + 8) * 4},
    ]
    rows = {t["key"]: t for t in tensors_of(ok)}
    assert set(rows) == set(tensors)
    assert rows["head.weight"]["shard"] == "model-00002-of-00002.safetensors"
    assert rows["embed.weight"]["shard"] == "model-00001-of-00002.safetensors"
    assert by_index["shards"] == ok["shards"]

    def problems(name: str) -> str:
        found = answers[name]["shard_problems"]
        assert len(found) == 1, found
        assert "\n" not in found[0]
        return str(found[0])

    assert "model-00002-of-00002.safetensors" in problems("missing")
    assert "missing" in problems("missing")
    assert answers["missing"]["report"]["totals"]["tensors"] == 2  # the shard that is there
    assert "'head.weight'" in problems("twice") and "twice" in problems("twice")
    assert "past the end" in problems("cut")
    assert "total_size" in problems("total")


async def test_hostile_pickle_runs_nothing_and_truncated_file_is_one_line(tmp_path: Path) -> None:
    sentinel = tmp_path / "PWNED"
    hostile = tmp_path / "hostile.pt"
    torch.save(
        {"weights": torch.zeros(2), "x": Payload(os.system, touch_command(sentinel))}, hostile
    )
    good = tmp_path / "model.pt"
    torch.save(Net().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        verdict = await inspect(session, hostile)
        broken = await inspect(session, truncated)
        assert await inspect(session, truncated) == broken  # the same error, until it changes
        nothing = await inspect(session, tmp_path / "nope.pt")
        truncated.write_bytes(good.read_bytes())
        os.utime(truncated, ns=(time.time_ns(), truncated.stat().st_mtime_ns + 10**9))
        repaired = await inspect(session, truncated)
        assert repaired["cached"] is False and repaired["report"]["totals"]["tensors"] == len(
            Net().state_dict()
        )
    assert not sentinel.exists()
    assert verdict["report"]["weights_only"]["accepted"] is False
    dangerous = [g for g in verdict["report"]["globals"] if g["dangerous"]]
    assert [g["name"] for g in dangerous] in (["posix.system"], ["os.system"])
    assert set(broken) == {"error"}
    assert broken["error"].startswith("truncated.pt: ") and "\n" not in broken["error"]
    assert nothing == {"error": "nope.pt: no such file or folder"}


async def test_cache_hit_after_reopen_and_refresh_after_change(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save(Net().state_dict(), ckpt)
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        first = await inspect(session, ckpt)
        started = time.perf_counter()
        again = await inspect(session, ckpt)
        hit_seconds = time.perf_counter() - started
        assert first["cached"] is False and again["cached"] is True
        assert again["report"] == first["report"]
        assert hit_seconds < 0.5
        torch.save(Net(num_classes=3).state_dict(), ckpt)
        os.utime(ckpt, ns=(time.time_ns(), first["stamp"]["mtime_ns"] + 10**9))
        changed = await inspect(session, ckpt)
    assert changed["cached"] is False
    shapes = {t["key"]: t["shape"] for t in tensors_of(changed)}
    assert shapes["fc.weight"] == [3, 8]
    assert changed["stamp"]["mtime_ns"] == first["stamp"]["mtime_ns"] + 10**9


MODEL_PY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)


def helper():
    return 1
"""


def _workspace(tmp_path: Path) -> Path:
    (tmp_path / "model.py").write_text(MODEL_PY)
    (tmp_path / "train.py").write_text("from model import Net\n\nmodel = Net(num_classes=3)\n")
    return tmp_path / "model.py"


async def test_model_targets_and_compare_with_a_model(tmp_path: Path) -> None:
    model_py = _workspace(tmp_path)
    wrapped = tmp_path / "dp.pt"
    torch.save(nn.DataParallel(Net()).state_dict(), wrapped)
    other_head = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": Net(num_classes=5).state_dict()}, other_head)
    state = Net().state_dict()
    async with lsp_session(workspace=tmp_path) as session:
        listed = await request(session, "torchls/modelTargets", {})
        targets = {t["label"]: t for t in listed["targets"]}
        assert "Net (model.py:6)" in targets, listed
        net = targets["Net (model.py:6)"]
        assert net == {
            "label": "Net (model.py:6)",
            "uri": model_py.as_uri(),
            "line": 5,
            "name": "Net",
            "kind": "class",
        }
        assert targets["Net(num_classes=3) (train.py:3)"]["kind"] == "construction"
        assert listed["targets"][0] == net  # classes first
        target = {"uri": net["uri"], "line": net["line"], "name": net["name"]}
        dp = await request(
            session, "torchls/compareModel", {"uri": wrapped.as_uri(), "target": target}
        )
        head = await request(
            session, "torchls/compareModel", {"uri": other_head.as_uri(), "target": target}
        )
    assert dp["prefix"] == {"checkpoint": "module.", "model": ""}, dp
    assert dp["matched"] == 0
    assert sorted(dp["missing"]) == sorted(state)
    assert sorted(dp["unexpected"]) == sorted("module." + key for key in state)
    assert dp["container"] == ""
    assert "'module.'" in dp["summary"] and "\n" not in dp["summary"]
    assert any("removeprefix('module.')" in fix for fix in dp["fixes"])

    assert head["container"] == "state_dict"
    assert head["prefix"] is None
    assert {m["key"]: (m["checkpoint"], m["model"]) for m in head["mismatched"]} == {
        "fc.weight": ([5, 8], [10, 8]),
        "fc.bias": ([5], [10]),
    }
    assert head["matched"] == len(state) - 2 and head["missing"] == head["unexpected"] == []


async def test_model_targets_and_compare_refused_when_untrusted(tmp_path: Path) -> None:
    model_py = _workspace(tmp_path)
    ckpt = tmp_path / "model.pt"
    torch.save(Net().state_dict(), ckpt)
    target = {"uri": model_py.as_uri(), "line": 5, "name": "Net"}
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        listed = await request(session, "torchls/modelTargets", {})
        compared = await request(
            session, "torchls/compareModel", {"uri": ckpt.as_uri(), "target": target}
        )
    assert listed["targets"] == [] and "not trusted" in listed["reason"]
    assert set(compared) == {"error"} and "not trusted" in compared["error"]


async def test_server_answers_while_reading(tmp_path: Path) -> None:
    import asyncio

    many = tmp_path / "many.pt"
    torch.save({f"layer{i}.weight": torch.zeros(2) for i in range(20_000)}, many)
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        reading = asyncio.ensure_future(inspect(session, many))
        await asyncio.sleep(0.05)
        status = await session.command("torchls.status")
        # The reader runs in its own process: the server answered meanwhile.
        assert not reading.done()
        assert status["heavy_modules_loaded"] == []
        answer = await reading
    assert answer["report"]["totals"]["tensors"] == 20_000


async def test_the_cache_keeps_a_bounded_number_of_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from torchls.lsp import checkpoints

    # Each file's table is about 2.6 KB of JSON: one fits, both do not.
    monkeypatch.setattr(checkpoints, "CACHE_BYTES", 4_000)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    torch.save({f"w{i}": torch.zeros(1) for i in range(60)}, first)
    torch.save({f"b{i}": torch.zeros(1) for i in range(60)}, second)
    cache = checkpoints.Checkpoints(SimpleNamespace(protocol=None))  # type: ignore[arg-type]
    assert (await cache.report(str(first)))["cached"] is False
    assert (await cache.report(str(first)))["cached"] is True
    assert (await cache.report(str(second)))["cached"] is False
    # Both tables are more than the cache keeps: the older report went, the newer stayed.
    assert (await cache.report(str(second)))["cached"] is True
    assert (await cache.report(str(first)))["cached"] is False


async def test_inspect_answer_is_the_cli_document_for_any_tensor_name(tmp_path: Path) -> None:
    # The server passes the reader's tensor table on as text; names with quotes, backslashes,
    # non-ASCII letters and control characters must reach the client intact, and the answer's
    # report must be what `torchls inspect --json` prints.
    import subprocess
    import sys

    names = ['enc."quoted"', "back\\slash", "Gewicht.ä.日本", "tab\there", "line\nbreak", "plain"]
    ckpt = tmp_path / "names.pt"
    torch.save({name: torch.zeros(i + 1) for i, name in enumerate(names)}, ckpt)
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        answer = await inspect(session, ckpt)
        again = await inspect(session, ckpt)
    assert [t["key"] for t in tensors_of(answer)] == names
    assert [t["shape"] for t in tensors_of(answer)] == [[i + 1] for i in range(6)]
    assert again["cached"] is True and again["tensor_rows"] == answer["tensor_rows"]
    printed = subprocess.run(
        [sys.executable, "-m", "torchls", "inspect", "--json", str(ckpt)],
        capture_output=True,
        check=True,
    )
    # The report is the CLI's document, its tensors given as the table's rows.
    assert {**answer["report"], "tensors": tensors_of(answer)} == json.loads(printed.stdout)
