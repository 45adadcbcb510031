"""Where each tensor's bytes lie in a checkpoint: file, byte offset of its storage, element
offset, shape and strides. For `torchls diff --values`, which then reads exactly those bytes.

Read as the reader reads (no torch, no pickle code run), in the reader's child process.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from torchls.checkpoint import zipdir
from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.reader import HF_WEIGHTS, INDEX_SUFFIX, ReadBudget, _read_file
from torchls.checkpoint.records import TensorRecord
from torchls.checkpoint.structure import _children, _is_container, key_text, subscript

Location = dict[str, Any]


def locate_tensors(path: str | Path) -> list[Location]:
    """Every tensor of the checkpoint (a file or a model folder), where its bytes are."""
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHTS:
            if (path / name).is_file():
                path = path / name
                break
        else:
            indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
            if not indexes:
                raise CheckpointError(path, "the folder holds no weights file")
            path = indexes[0]
    if path.name.endswith(INDEX_SUFFIX):
        return _locate_sharded(path)
    return _locate_file(path)


def _locate_sharded(index_path: Path) -> list[Location]:
    index = json.loads(index_path.read_bytes())
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(index_path, "an index without a weight_map")
    found: list[Location] = []
    for shard in sorted(set(weight_map.values())):
        listed = {key for key, file in weight_map.items() if file == shard}
        for location in _locate_file(index_path.parent / shard):
            if location["container"] == "" and location["key"] in listed:
                found.append(location)
    return found


def _locate_file(path: Path) -> list[Location]:
    size = path.stat().st_size
    parsed = _read_file(path, size, ReadBudget())
    if parsed.format == "safetensors":
        return _locate_safetensors(path)
    if parsed.format == "torch-zip":
        starts = _zip_storage_starts(path, size, parsed.details["archive_folder"])
    elif parsed.format == "torch-legacy":
        starts = parsed.storage_offsets
    else:
        raise CheckpointError(path, f"tensors of a {parsed.format} file cannot be located")
    byteorder = parsed.details.get("byteorder", "little")
    if parsed.details.get("little_endian") is False:
        byteorder = "big"
    found: list[Location] = []
    for container, key, tensor in _tensors(parsed.root):
        storage = tensor.storage
        if storage is None or storage.key not in starts:
            continue
        found.append(
            {
                "container": container,
                "key": key,
                "file": str(path),
                "offset": starts[storage.key],
                "storage_offset": tensor.offset,
                "storage_bytes": storage.nbytes,
                "shape": list(tensor.shape),
                "stride": list(tensor.stride) if tensor.stride is not None else None,
                "dtype": tensor.dtype,
                "byteorder": byteorder,
            }
        )
    return found


def _locate_safetensors(path: Path) -> list[Location]:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    from torchls.checkpoint.dtypes import SAFETENSORS_DTYPE

    found: list[Location] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        found.append(
            {
                "container": "",
                "key": key,
                "file": str(path),
                "offset": 8 + length + start,
                "storage_offset": 0,
                "storage_bytes": end - start,
                "shape": list(entry["shape"]),
                "stride": None,  # contiguous
                "dtype": SAFETENSORS_DTYPE[entry["dtype"]],
                "byteorder": "little",
            }
        )
    return found


def _zip_storage_starts(path: Path, size: int, prefix: str) -> dict[str, int]:
    """Byte offsets of each `data/<key>` record; torch stores them uncompressed."""
    starts: dict[str, int] = {}
    local = struct.Struct("<4s2B4HL2L2H")
    with open(path, "rb") as handle:
        members, _ = zipdir.read_directory(handle, size)
        for member in members:
            head = f"{prefix}/data/"
            if not member.name.startswith(head) or member.method != 0:
                continue
            handle.seek(member.header_offset)
            fields = local.unpack(handle.read(local.size))
            starts[member.name[len(head) :]] = (
                member.header_offset + local.size + fields[10] + fields[11]
            )
    return starts


def _tensors(root: Any) -> list[tuple[str, str, TensorRecord]]:
    """(container path, key, tensor) for every tensor, named as the reader's summary names
    them, each container once."""
    found: list[tuple[str, str, TensorRecord]] = []
    visited: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        obj, path = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        for key, value in _children(obj):
            if type(value) is TensorRecord:
                found.append((path, key if type(key) is str else key_text(key), value))
            elif _is_container(value):
                stack.append((value, subscript(path, key)))
    return found
