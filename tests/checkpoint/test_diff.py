"""`torchls diff A B` on real pairs written by torch in the test, and the `torchls/diff`
request. The expected numbers come from torch comparing the tensors it saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from tests.conftest import _plain, lsp_session
from torch import nn


def run_diff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchls", "diff", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def diff_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = run_diff(*args, "--json")
    assert done.stderr == "", done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, document


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.fc = nn.Linear(8, 10)


class FineTuned(nn.Module):
    """The base's backbone, trained further, with a new two-layer head instead of `fc`."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.fixture
def base_and_tuned(tmp_path: Path) -> tuple[Path, Path, dict[str, float]]:
    torch.manual_seed(0)
    base = Base()
    tuned = FineTuned()
    tuned.backbone.load_state_dict(base.backbone.state_dict())
    with torch.no_grad():
        tuned.backbone.conv.weight.add_(0.125)  # only the conv's weight is trained further
    torch.save(base.state_dict(), tmp_path / "base.pt")
    torch.save({"epoch": 5, "state_dict": tuned.state_dict()}, tmp_path / "tuned.ckpt")
    a = base.backbone.conv.weight.detach().double()
    b = tuned.backbone.conv.weight.detach().double()
    expected = {
        "max_abs_diff": float((b - a).abs().max()),
        "rel_norm": float((b - a).norm() / a.norm()),
    }
    return tmp_path / "base.pt", tmp_path / "tuned.ckpt", expected


def test_fine_tuned_against_base_with_a_new_head(
    base_and_tuned: tuple[Path, Path, dict[str, float]],
) -> None:
    base, tuned, expected = base_and_tuned
    code, document = diff_json(str(base), str(tuned), "--values")
    assert code == 1
    assert document["schema"] == "torchls.diff/1"
    assert document["a"]["container"] == "" and document["b"]["container"] == "['state_dict']"
    assert {r["key"] for r in document["removed"]} == {"fc.weight", "fc.bias"}
    added = {r["key"]: r["shape"] for r in document["added"]}
    assert added == {
        "head.0.weight": [16, 8],
        "head.0.bias": [16],
        "head.2.weight": [3, 16],
        "head.2.bias": [3],
    }
    assert document["renamed"] is None
    assert document["shape_changed"] == document["dtype_changed"] == []
    backbone = Backbone().state_dict()
    assert document["unchanged"] == len(backbone)
    values = {row["key"]: row for row in document["values"]}
    assert set(values) == {f"backbone.{key}" for key in backbone}
    changed = values["backbone.conv.weight"]
    assert changed["max_abs_diff"] == pytest.approx(expected["max_abs_diff"], rel=1e-9)
    assert changed["rel_norm"] == pytest.approx(expected["rel_norm"], rel=1e-9)
    assert all(row["max_abs_diff"] == 0.0 for key, row in values.items() if key != changed["key"])

    text = run_diff(str(base), str(tuned), "--values")
    assert text.returncode == 1
    assert "removed (only in A)" in text.stdout and "head.2.weight" in text.stdout
    assert text.stdout.strip().splitlines()[-1] == (
        "4 added; 2 removed; 1 tensor with different values; 1 metadata value changed"
    )
    assert document["metadata_changed"] == [{"key": "['epoch']", "a": None, "b": 5}]


def test_fine_tuned_with_a_head_of_another_size_under_the_same_name(tmp_path: Path) -> None:
    # The commonest fine-tuning: the same architecture, `fc` rebuilt for 3 classes instead of
    # 10, saved as a Lightning-style training checkpoint.
    torch.manual_seed(5)
    base = Base()
    tuned = Base()
    tuned.fc = nn.Linear(8, 3)
    tuned.backbone.load_state_dict(base.backbone.state_dict())
    torch.save(base.state_dict(), tmp_path / "base.pt")
    torch.save({"epoch": 2, "state_dict": tuned.state_dict()}, tmp_path / "tuned.ckpt")
    code, document = diff_json(str(tmp_path / "base.pt"), str(tmp_path / "tuned.ckpt"), "--values")
    assert code == 1
    assert {r["key"]: (r["a"], r["b"]) for r in document["shape_changed"]} == {
        "fc.weight": ([10, 8], [3, 8]),
        "fc.bias": ([10], [3]),
    }
    assert document["added"] == document["removed"] == document["dtype_changed"] == []
    assert document["unchanged"] == len(Backbone().state_dict())
    # Values are compared where shapes agree: the backbone, unchanged.
    values = {row["key"]: row["max_abs_diff"] for row in document["values"]}
    assert values == {f"backbone.{k}": 0.0 for k in Backbone().state_dict()}
    text = run_diff(str(tmp_path / "base.pt"), str(tmp_path / "tuned.ckpt"))
    assert text.returncode == 1 and "fc.weight" in text.stdout and "[10, 8]" in text.stdout


def test_data_parallel_against_plain_is_a_rename(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Base()
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    code, document = diff_json(str(tmp_path / "dp.pt"), str(tmp_path / "plain.pt"), "--values")
    assert code == 1
    count = len(model.state_dict())
    assert document["renamed"] == {"a_prefix": "module.", "b_prefix": "", "tensors": count}
    assert document["added"] == document["removed"] == []
    assert document["unchanged"] == count
    assert len(document["values"]) == count
    assert all(row["max_abs_diff"] == 0.0 for row in document["values"])
    assert document["values"][0]["b_key"] == document["values"][0]["key"].removeprefix("module.")
    # The other way round: B has the prefix A lacks.
    code, document = diff_json(str(tmp_path / "plain.pt"), str(tmp_path / "dp.pt"))
    assert code == 1 and document["renamed"]["b_prefix"] == "module."


def test_fp32_against_a_bf16_copy(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = Base().state_dict()
    torch.save(state, tmp_path / "fp32.pt")
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, tmp_path / "bf16.safetensors")
    code, document = diff_json(
        str(tmp_path / "fp32.pt"), str(tmp_path / "bf16.safetensors"), "--values"
    )
    assert code == 1
    floats = {k for k, v in state.items() if v.is_floating_point()}
    assert {r["key"] for r in document["dtype_changed"]} == floats
    assert all(r["a"] == "float32" and r["b"] == "bfloat16" for r in document["dtype_changed"])
    assert document["added"] == document["removed"] == document["shape_changed"] == []
    assert {"key": "format", "a": "torch-zip", "b": "safetensors"} in document["metadata_changed"]
    values = {row["key"]: row for row in document["values"]}
    for key in floats:
        a = state[key].double()
        b = half[key].double()
        assert values[key]["max_abs_diff"] == pytest.approx(float((a - b).abs().max()), rel=1e-9)
        if float(a.norm()):
            expected = float((a - b).norm() / a.norm())
            assert values[key]["rel_norm"] == pytest.approx(expected, rel=1e-9)
    assert values["backbone.bn.num_batches_tracked"]["max_abs_diff"] == 0.0


def test_same_tensors_in_another_format_exit_0(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = Base().state_dict()
    torch.save(state, tmp_path / "model.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    code, document = diff_json(
        str(tmp_path / "model.pt"), str(tmp_path / "model.safetensors"), "--values"
    )
    assert code == 0, document["summary"]
    assert document["same_tensors"] is True and document["same_values"] is True
    assert document["unchanged"] == len(state)


def test_corrupt_file_exit_2_in_one_line(tmp_path: Path) -> None:
    torch.save(Base().state_dict(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    done = run_diff(str(tmp_path / "good.pt"), str(tmp_path / "cut.pt"))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"torchls diff: {tmp_path / 'cut.pt'}: ")
    missing = run_diff(str(tmp_path / "good.pt"), str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope.pt: no such file")


async def test_diff_request_matches_the_cli(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = Base()
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "dp.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    _, expected = diff_json(str(tmp_path / "dp.pt"), str(tmp_path / "plain.pt"))
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        reply = await session.client.protocol.send_request_async(
            "torchls/diff",
            {"a": (tmp_path / "dp.pt").as_uri(), "b": (tmp_path / "plain.pt").as_uri()},
        )
        with_values = await session.client.protocol.send_request_async(
            "torchls/diff",
            {
                "a": (tmp_path / "dp.pt").as_uri(),
                "b": (tmp_path / "plain.pt").as_uri(),
                "values": True,
            },
        )
        broken = await session.client.protocol.send_request_async(
            "torchls/diff",
            {"a": (tmp_path / "dp.pt").as_uri(), "b": (tmp_path / "nope.pt").as_uri()},
        )
    assert _plain(reply) == expected
    rows = _plain(with_values)["values"]
    assert len(rows) == len(model.state_dict())
    assert all(row["max_abs_diff"] == 0.0 and row["rel_norm"] == 0.0 for row in rows)
    assert _plain(broken) == {"error": "nope.pt: no such file or folder"}


def test_legacy_file_and_sharded_folder_values_are_read_from_their_bytes(tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = {
        "embed.weight": torch.randn(8, 4),
        "layer.weight": torch.randn(4, 4),
        "head.weight": torch.randn(2, 4),
    }
    # A view into a larger storage: the legacy file keeps the whole storage, the bytes of the
    # tensor begin at its storage offset.
    state["tail"] = torch.randn(20)[5:15]
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    folder = tmp_path / "sharded"
    folder.mkdir()
    shards = {"a.safetensors": ["embed.weight", "tail"], "b.safetensors": ["layer.weight"]}
    changed = dict(state, **{"head.weight": state["head.weight"] * 2})
    shards["b.safetensors"].append("head.weight")
    for file, keys in shards.items():
        save_file({k: changed[k].contiguous() for k in keys}, folder / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    code, document = diff_json(str(tmp_path / "legacy.pt"), str(folder), "--values")
    assert code == 1
    assert document["a"]["format"] == "torch-legacy" and document["b"]["format"] == "sharded"
    assert document["unchanged"] == 4 and document["same_tensors"] is True
    values = {row["key"]: row for row in document["values"]}
    assert {k: v["max_abs_diff"] for k, v in values.items() if k != "head.weight"} == {
        "embed.weight": 0.0,
        "layer.weight": 0.0,
        "tail": 0.0,
    }
    head = state["head.weight"].double()
    assert values["head.weight"]["max_abs_diff"] == pytest.approx(float(head.abs().max()))
    assert values["head.weight"]["rel_norm"] == pytest.approx(1.0)


def test_diff_has_help() -> None:
    done = run_diff("--help")
    assert done.returncode == 0 and "usage: torchls diff" in done.stdout
    assert "0 the same tensors" in " ".join(done.stdout.split())


def test_pickled_modules_are_compared_tensor_by_tensor(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = Base()
    torch.save(model, tmp_path / "a.pt")
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    torch.save(model, tmp_path / "b.pt")
    code, document = diff_json(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--values")
    assert code == 1
    assert document["a"]["container"] == "(all tensors)"
    assert document["unchanged"] == document["a"]["tensors"] == len(model.state_dict())
    changed = [row for row in document["values"] if row["max_abs_diff"] != 0.0]
    assert len(changed) == 1 and changed[0]["key"].endswith("['fc']['_parameters']['bias']")
    assert changed[0]["max_abs_diff"] == pytest.approx(1.0)


def test_hostile_pickle_is_diffed_as_data(tmp_path: Path) -> None:
    import os

    from tests.checkpoint.factories import Payload, touch_command

    sentinel = tmp_path / "PWNED"
    weights = torch.arange(4.0)
    torch.save({"w": weights}, tmp_path / "good.pt")
    payload = Payload(os.system, touch_command(sentinel))
    torch.save({"w": weights + 1, "x": payload}, tmp_path / "bad.pt")
    code, document = diff_json(str(tmp_path / "good.pt"), str(tmp_path / "bad.pt"), "--values")
    assert not sentinel.exists()
    assert code == 1
    # B - A = (1, 1, 1, 1), of norm 2; A = (0, 1, 2, 3), of norm sqrt(14).
    expected = {"key": "w", "max_abs_diff": 1.0, "rel_norm": pytest.approx(2 / 14**0.5)}
    assert document["values"] == [expected]
