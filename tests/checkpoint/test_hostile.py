"""Hostile and broken files: nothing they contain ever runs, and each ends in one clear line.

Every hostile file carries a payload that would create a sentinel file; after torchls has read
it (in the isolated reader process, with its memory and time limits), the sentinel must not
exist. For some, the test also loads the file with torch.load(weights_only=False) to prove the
payload is live: the same sentinel then appears.
"""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.checkpoint.factories import (
    LEGACY_MAGIC,
    Payload,
    absurd_shape_zip,
    deep_marks,
    deep_nesting,
    exponential_graph,
    legacy_with_payload_in,
    memo_bomb,
    rewrite_zip,
    save,
    zip_folder,
)

from torchls.checkpoint import CheckpointError, read_checkpoint
from torchls.checkpoint.isolated import read_isolated


def read(path: Path, **kwargs: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        return read_isolated(path, timeout=30, memory_mb=512, **kwargs)
    finally:
        assert time.monotonic() - started < 30


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def payloads(sentinel: Path) -> dict[str, Any]:
    command = f"touch {sentinel}"
    return {
        "os.system": Payload(os.system, command),
        "eval": Payload(builtins.eval, f"__import__('os').system({command!r})"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(sentinel)]),
        "exec": Payload(builtins.exec, f"import os; os.system({command!r})"),
        "importlib": Payload(importlib.import_module, "antigravity_not_really"),
        "nested pickle.loads": Payload(pickle.loads, pickle.dumps(Payload(os.system, command))),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    "name", ["os.system", "eval", "subprocess.Popen", "exec", "importlib", "nested pickle.loads"]
)
def test_reduce_payload_inside_a_zip_checkpoint(
    tmp_path: Path, sentinel: Path, name: str, protocol: int
) -> None:
    payload = payloads(sentinel)[name]
    path = save(
        {"weight": torch.ones(2), "extra": payload}, tmp_path / "evil.pt", pickle_protocol=protocol
    )
    summary = read(path)
    assert not sentinel.exists()
    verdict = summary["weights_only"]
    assert verdict["accepted"] is False
    assert any("runs code" in w or "would run code" in w for w in summary["warnings"])
    assert summary["tensors"][0]["key"] == "weight"  # the data is still described


def test_payload_is_live_under_torch_load(tmp_path: Path, sentinel: Path) -> None:
    """The corpus is not toothless: torch.load(weights_only=False) runs the same payload."""
    path = save({"extra": payloads(sentinel)["os.system"]}, tmp_path / "evil.pt")
    read(path)
    assert not sentinel.exists()
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_getattr_indirection(tmp_path: Path, sentinel: Path) -> None:
    # getattr(__import__('os'), 'system')('touch ...') spelled as pickle opcodes
    data = (
        b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostRX\x06\x00\x00\x00systemtR"
        + b"(X"
        + len(f"touch {sentinel}").to_bytes(4, "little")
        + f"touch {sentinel}".encode()
        + b"tR."
    )
    path = tmp_path / "getattr.pt"
    path.write_bytes(data)
    summary = read(path)
    assert not sentinel.exists()
    assert summary["format"] == "pickle"
    names = {g["name"] for g in summary["globals"]}
    assert names == {"builtins.getattr", "builtins.__import__"}
    assert "builtins.getattr" in summary["weights_only"]["dangerous_globals"]


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_raw_pickle_named_pt(tmp_path: Path, sentinel: Path, protocol: int) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(payloads(sentinel)["os.system"], protocol=protocol))
    summary = read(path)
    assert not sentinel.exists()
    assert summary["format"] == "pickle"
    assert "a plain pickle, not a torch checkpoint" in summary["warnings"][1]
    assert summary["weights_only"]["accepted"] is False


@pytest.mark.parametrize("position", [0, 2, 4])
def test_legacy_file_with_payload_in_a_later_pickle(
    tmp_path: Path, sentinel: Path, position: int
) -> None:
    path = tmp_path / "legacy.pt"
    path.write_bytes(legacy_with_payload_in(position, payloads(sentinel)["os.system"]))
    try:
        summary = read(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
    else:
        assert summary["weights_only"]["accepted"] is False
        assert "posix.system" in summary["weights_only"]["dangerous_globals"] or (
            "os.system" in summary["weights_only"]["dangerous_globals"]
        )
    assert not sentinel.exists()


def test_polyglot_zip_with_a_pickle_prefix(tmp_path: Path, sentinel: Path) -> None:
    """torch.load reads a file that does not start with a zip header as a legacy pickle: the
    benign archive behind the prefix is never looked at. torchls reads it the same way."""
    archive = save({"w": torch.ones(2)}, tmp_path / "benign.pt").read_bytes()
    path = tmp_path / "polyglot.pt"
    path.write_bytes(pickle.dumps(payloads(sentinel)["os.system"], protocol=2) + archive)
    summary = read(path)
    assert not sentinel.exists()
    assert summary["format"] == "pickle"
    assert any("zip archive is appended" in w for w in summary["warnings"])


def test_polyglot_zip_with_garbage_prefix(tmp_path: Path) -> None:
    archive = save({"w": torch.ones(2)}, tmp_path / "benign.pt").read_bytes()
    path = tmp_path / "prefixed.pt"
    path.write_bytes(b"GARBAGE!" * 8 + archive)
    with pytest.raises(CheckpointError, match="data precedes a zip archive"):
        read(path)


def test_zip_bomb_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\x80\x02]" + b"N" * (600 * 1024 * 1024) + b".")
        archive.writestr("bomb/version", b"3\n")
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"over the .* limit|inflates past"):
        read(path)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_zip_checkpoints(tmp_path: Path, keep: float) -> None:
    data = save({"w": torch.ones(1000), "b": torch.ones(10)}, tmp_path / "full.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        read(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty file \(0 bytes\)"):
        read(path)


def test_wrong_magic_number(tmp_path: Path) -> None:
    data = bytearray(io.BytesIO().getvalue())
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue().replace(
        pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(LEGACY_MAGIC + 1, protocol=2), 1
    )
    path = tmp_path / "magic.pt"
    path.write_bytes(data)
    summary = read(path)
    assert summary["format"] == "pickle"  # not a torch file: reported as a plain pickle


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )
    with pytest.raises(CheckpointError, match=r"Git LFS pointer.*git lfs pull"):
        read(path)


def test_html_error_page(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        read(path)


def test_absurd_shape(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"reaches element .* but its storage '0' holds 4"):
        read(absurd_shape_zip(tmp_path))


@pytest.mark.parametrize(
    "shape",
    [
        b"J\xff\xff\xff\xff\x85",  # BININT -1, TUPLE1: a negative size
        b"\x8a\x09" + (1 << 63).to_bytes(9, "little") + b"\x85",  # 2**63: past int64
        b"\x88\x85",  # NEWTRUE, TUPLE1: a bool is no size
    ],
)
def test_shape_outside_int64_sizes_is_one_line(tmp_path: Path, shape: bytes) -> None:
    path = save({"w": torch.zeros(4)}, tmp_path / "src.pt")
    folder = zip_folder(path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(f"{folder}/data.pkl")
    patched = data.replace(b"K\x04\x85", shape, 1)  # the shape (4,), as torch pickled it
    assert patched != data
    bad = rewrite_zip(path, tmp_path / "bad.pt", {f"{folder}/data.pkl": patched})
    with pytest.raises(CheckpointError, match=r"shape must hold integers from 0 to 2\*\*63-1$"):
        read(bad)


def test_memo_index_bomb(tmp_path: Path) -> None:
    path = tmp_path / "memo.pt"
    path.write_bytes(memo_bomb())
    summary = read(path)  # a dict memo: a huge index costs nothing
    assert summary["format"] == "pickle"


def test_memo_bomb_inside_a_zip(tmp_path: Path) -> None:
    path = save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    folder = zip_folder(path)
    bomb = rewrite_zip(path, tmp_path / "zbomb.pt", {f"{folder}/data.pkl": memo_bomb()})
    summary = read(bomb)
    assert summary["tensors"] == []


def test_exponential_shared_references(tmp_path: Path) -> None:
    path = tmp_path / "expo.pt"
    path.write_bytes(exponential_graph(200))  # 2**200 leaves as a tree
    started = time.monotonic()
    summary = read(path)
    assert time.monotonic() - started < 10
    assert summary["format"] == "pickle"


def test_deep_nesting_through_the_memo(tmp_path: Path) -> None:
    path = tmp_path / "deep.pt"
    path.write_bytes(deep_nesting(200_000))
    summary = read(path)
    assert any("nested deeper than" in w for w in summary["warnings"])


def test_deep_marks_exceed_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "marks.pt"
    path.write_bytes(deep_marks(100_000))
    with pytest.raises(CheckpointError, match="nests deeper than 1000 levels"):
        read(path)


def test_unknown_opcode(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02]\xff.")
    with pytest.raises(CheckpointError, match="unknown opcode 0xff"):
        read(path)


def test_huge_claimed_string_length(tmp_path: Path) -> None:
    path = tmp_path / "str.pt"
    path.write_bytes(b"\x80\x02X\xff\xff\xff\x7fabc.")
    with pytest.raises(CheckpointError, match="ended inside a string"):
        read(path)


def test_in_process_api_is_equally_safe(tmp_path: Path, sentinel: Path) -> None:
    """The unit-level API (no child process) never runs anything either."""
    for name, payload in payloads(sentinel).items():
        path = save({"x": payload}, tmp_path / f"{name.replace(' ', '_')}.pt")
        summary = read_checkpoint(path)
        assert summary.weights_only is not None and not summary.weights_only.accepted
    assert not sentinel.exists()


def test_memory_limit_of_the_reader_process(tmp_path: Path) -> None:
    """A pickle that builds a huge object in the reader fails on the limit, not the machine."""
    # 30 million small lists through the memo: several GB of Python objects.
    body = b"\x80\x02]q\x00" + b"]h\x00aq\x00" * 30_000_000 + b"h\x00."
    path = tmp_path / "big.pt"
    path.write_bytes(body)
    with pytest.raises(CheckpointError, match=r"needs more than 128 MB|more memory|opcodes"):
        read_isolated(path, timeout=60, memory_mb=128)


def test_time_limit_of_the_reader_process(tmp_path: Path) -> None:
    body = b"\x80\x02]q\x00" + b"]h\x00aq\x00" * 5_000_000 + b"h\x00."
    path = tmp_path / "slow.pt"
    path.write_bytes(body)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"took longer than 0\.5 s \(limit\)"):
        read_isolated(path, timeout=0.5, memory_mb=2048)
    assert time.monotonic() - started < 5


async def test_async_reader_for_the_language_server(tmp_path: Path, sentinel: Path) -> None:
    from torchls.checkpoint.isolated import read_isolated_async

    good = save({"w": torch.ones(3)}, tmp_path / "good.pt")
    summary = await read_isolated_async(good)
    assert summary["tensors"][0]["shape"] == [3]
    evil = save({"x": payloads(sentinel)["os.system"]}, tmp_path / "evil.pt")
    assert (await read_isolated_async(evil))["weights_only"]["accepted"] is False
    assert not sentinel.exists()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="damaged zip archive"):
        await read_isolated_async(broken)
