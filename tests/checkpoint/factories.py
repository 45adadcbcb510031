"""Checkpoint files made by code for the tests: real ones written by torch, tampered ones, and
hostile ones. Nothing binary is committed."""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def save(obj: Any, path: Path, **kwargs: Any) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def rewrite_zip(source: Path, target: Path, changes: dict[str, bytes | None]) -> Path:
    """Copy a zip archive member by member, replacing (bytes) or dropping (None) members."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename in changes:
                replacement = changes[info.filename]
                if replacement is not None:
                    dst.writestr(info.filename, replacement)
            else:
                dst.writestr(info.filename, src.read(info))
        for name, data in changes.items():
            if data is not None and name not in src.namelist():
                dst.writestr(name, data)
    return target


def zip_folder(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()[0].split("/", 1)[0]


class Payload:
    """`__reduce__` that runs `func(*args)` when unpickled: the classic checkpoint exploit."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def touch_command(sentinel: Path) -> str:
    return f"touch {sentinel}"


def pickled(obj: Any, protocol: int = 2) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def split_pickles(data: bytes, count: int) -> tuple[list[bytes], bytes]:
    """The first `count` pickles of `data` and what follows, found with pickletools (which
    only decodes opcodes and never runs them)."""
    parts = []
    pos = 0
    for _ in range(count):
        for opcode, _arg, offset in pickletools.genops(io.BytesIO(data[pos:])):
            if opcode.name == "STOP":
                end = pos + offset + 1
                break
        parts.append(data[pos:end])
        pos = end
    return parts, data[pos:]


def legacy_with_payload_in(position: int, payload: Any) -> bytes:
    """A legacy-format file whose `position`-th pickle (0 magic, 1 protocol, 2 sys_info,
    3 the object, 4 the storage keys) is replaced by a hostile one."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer, _use_new_zipfile_serialization=False)
    parts, tail = split_pickles(buffer.getvalue(), 5)
    parts[position] = pickled(payload)
    return b"".join(parts) + tail


def memo_bomb() -> bytes:
    # PROTO 2, EMPTY_LIST, LONG_BINPUT 0xFFFFFFF0, then GET it back: a C unpickler resizes its
    # memo array to the index, i.e. tens of gigabytes.
    return (
        b"\x80\x02]r" + struct.pack("<I", 0xFFFFFFF0) + b"j" + struct.pack("<I", 0xFFFFFFF0) + b"."
    )


def exponential_graph(levels: int = 60) -> bytes:
    """[[a, a], [a, a]]... : 2**levels leaves as a tree, `levels` objects as a graph."""
    out = bytearray(b"\x80\x02]q\x00")  # L0 = [] in memo 0
    for level in range(1, levels + 1):
        # L_level = [L_{level-1}, L_{level-1}]
        out += b"(h" + bytes([(level - 1) % 256]) + b"h" + bytes([(level - 1) % 256]) + b"l"
        out += b"q" + bytes([level % 256])
    out += b"."
    return bytes(out)


def deep_nesting(depth: int) -> bytes:
    """A list nested `depth` levels deep with a constant-size stack (via the memo)."""
    out = bytearray(b"\x80\x02]q\x00")
    for _ in range(depth):
        out += b"]h\x00aq\x00"  # new = []; new.append(memo[0]); memo[0] = new
    out += b"h\x00."
    return bytes(out)


def deep_marks(depth: int) -> bytes:
    return b"\x80\x02" + b"(" * depth + b"t" * depth + b"."


def absurd_shape_zip(tmp: Path) -> Path:
    path = save({"w": torch.zeros(4)}, tmp / "absurd_src.pt")
    folder = zip_folder(path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(f"{folder}/data.pkl")
    # The 1-D shape (4,) is pickled as BININT1 4 then TUPLE1; claim 2**40 elements instead.
    patched = data.replace(b"K\x04\x85", b"\x8a\x06" + (1 << 40).to_bytes(6, "little") + b"\x85", 1)
    assert patched != data
    return rewrite_zip(path, tmp / "absurd.pt", {f"{folder}/data.pkl": patched})
