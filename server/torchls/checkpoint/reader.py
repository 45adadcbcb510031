"""Recognise a checkpoint's format and read it: torch zip, torch legacy, safetensors, sharded
indexes and Hugging Face folders. Everything else gets a sentence saying what the file is.

Only metadata is read: the zip directory and `data.pkl`, a legacy file's pickles (not the raw
storages behind them), a safetensors header. Reading costs grows with the number of tensors, not
with the size of the file.
"""

from __future__ import annotations

import errno
import itertools
import json
import mmap
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from torchls.checkpoint import zipdir
from torchls.checkpoint.dtypes import SAFETENSORS_DTYPE
from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.pickle_vm import Budget, PickleError, RestrictedUnpickler
from torchls.checkpoint.records import StorageRecord, TensorRecord
from torchls.checkpoint.safety import is_dangerous, weights_only_allows, weights_only_verdict
from torchls.checkpoint.structure import Walk, pickled_module_state
from torchls.checkpoint.summary import CheckpointSummary, GlobalRef, StateDictCandidate
from torchls.checkpoint.torch_pickle import INT64_LIMIT, MAX_DIMS, TORCH_REDUCERS, StorageTable

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
INDEX_SUFFIX = ".index.json"
# Hugging Face weight files, in the order transformers prefers them.
HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ReadBudget:
    max_pickle_bytes: int = 128 * 1024 * 1024
    max_header_bytes: int = 128 * 1024 * 1024  # safetensors header, index.json, config.json
    max_zip_members: int = 2_000_000
    pickle: Budget = field(default_factory=Budget)
    # The viewer shows a sharded checkpoint whose index and shards disagree, with the problems
    # listed (details["shard_problems"]); `torchls inspect` and the load checks refuse it.
    shard_problems: bool = False


@dataclass
class _Parsed:
    """One file's contents before they are summarised."""

    format: str
    root: Any
    details: dict[str, Any] = field(default_factory=dict)
    storages: dict[str, StorageRecord] = field(default_factory=dict)
    globals_seen: dict[str, int] | None = None  # None: the format has no pickle
    opcodes: set[int] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    storage_bytes: int = 0
    unloadable: str | None = None  # why torch.load fails on it whatever its arguments
    tensor_shards: dict[str, str] = field(default_factory=dict)  # sharded: key -> shard file
    # Legacy format: where each storage's bytes begin in the file (`torchls diff --values`).
    storage_offsets: dict[str, int] = field(default_factory=dict)
    # What the checkpoint takes on disk when that is not the size of the file read: a sharded
    # checkpoint's shards together (its index is a few KB of names).
    size: int | None = None


def read_checkpoint(path: str | Path, budget: ReadBudget | None = None) -> CheckpointSummary:
    """Read what `path` holds; raises CheckpointError with one sentence when it can't."""
    path = Path(path)
    budget = budget or ReadBudget()
    try:
        if path.is_dir():
            parsed = _read_folder(path, budget)
            size = parsed.size or 0
        else:
            size = path.stat().st_size
            parsed = _read_file(path, size, budget)
            size = size if parsed.size is None else parsed.size
        return _summarise(path, size, parsed)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder") from None
    except PermissionError:
        raise CheckpointError(path, "permission denied") from None
    except PickleError as exc:
        raise CheckpointError(path, str(exc)) from None
    except MemoryError:
        raise CheckpointError(path, "reading it needs more memory than allowed") from None
    except RecursionError:
        raise CheckpointError(path, "its structure is nested too deeply to read") from None
    except (OSError, ValueError, struct.error, UnicodeDecodeError, zlib.error) as exc:
        raise CheckpointError(path, f"unreadable: {_short(exc)}") from None
    except Exception as exc:  # a reader bug must still end in one line, never a traceback
        raise CheckpointError(path, f"unreadable ({type(exc).__name__}: {_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _summarise(path: Path, size: int, parsed: _Parsed) -> CheckpointSummary:
    walk = Walk(parsed.root)
    summary = CheckpointSummary(
        path=str(path),
        format=parsed.format,
        file_size=size,
        details=parsed.details,
        tree=walk.tree(),
        candidates=walk.candidates,
        tensors=walk.tensors,
        storage_bytes=parsed.storage_bytes,
        warnings=parsed.warnings + walk.warnings,
    )
    if parsed.tensor_shards:
        for tensor in summary.tensors:
            if not tensor.container:
                tensor.shard = parsed.tensor_shards.get(tensor.key)
    module_state = pickled_module_state(parsed.root)
    if module_state:
        summary.candidates.insert(0, _module_candidate(module_state))
        summary.warnings.append(
            "the whole nn.Module is pickled (torch.save(model)); loading it runs its class's code "
            "and needs weights_only=False: save model.state_dict() instead"
        )
    if parsed.globals_seen is not None:
        summary.globals = [
            GlobalRef(name, count, weights_only_allows(name), is_dangerous(name))
            for name, count in sorted(parsed.globals_seen.items())
        ]
        summary.weights_only = weights_only_verdict(
            list(parsed.globals_seen), parsed.opcodes, parsed.unloadable
        )
        if parsed.unloadable:
            summary.warnings.insert(0, f"torch.load cannot load this file: {parsed.unloadable}")
        if summary.weights_only.dangerous_globals:
            summary.warnings.insert(
                0,
                "torch.load(weights_only=False) would run code from this file: it calls "
                + ", ".join(summary.weights_only.dangerous_globals),
            )
    return summary


def _module_candidate(state: dict[str, TensorRecord]) -> StateDictCandidate:
    dtypes: dict[str, int] = {}
    for tensor in state.values():
        dtypes[tensor.dtype] = dtypes.get(tensor.dtype, 0) + 1
    return StateDictCandidate(
        path="(pickled module).state_dict()",
        keys=tuple(state),
        tensors=len(state),
        nbytes=sum(tensor.nbytes for tensor in state.values()),
        dtypes=dtypes,
    )


# -- recognising a file ----------------------------------------------------------------------


def _read_file(path: Path, size: int, budget: ReadBudget) -> _Parsed:
    if path.name.endswith(INDEX_SUFFIX):
        return _read_index(path, budget)
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        return _read_zip(path, size, budget)
    # Before pickles: a safetensors header length can begin with the byte 0x80 too.
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path, size, budget)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _read_legacy(path, size, budget)
    if head[:1] in _OLD_PICKLE_STARTS:  # protocol 0/1 pickles have no PROTO opcode
        try:
            return _read_legacy(path, size, budget)
        except PickleError:
            pass
    raise CheckpointError(path, _describe_unknown(path, head, size))


# Opcodes a protocol 0 or 1 pickle of a container or a call usually starts with.
_OLD_PICKLE_STARTS = frozenset(b"(]}cl"[i : i + 1] for i in range(5))


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack_from("<Q", head)
    return head[8:9] == b"{" and 0 < length <= size - 8


def _describe_unknown(path: Path, head: bytes, size: int) -> str:
    text = head.lstrip()
    lowered = text[:64].lower()
    if text.startswith(b"version https://git-lfs.github.com/spec/"):
        return "a Git LFS pointer, not the checkpoint itself: run `git lfs pull` to fetch it"
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML page saved under a checkpoint's name (a failed download?), not a checkpoint"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array, not a torch checkpoint: load it with numpy.load"
    if head.startswith(b"GGUF"):
        return "a GGUF model file (llama.cpp), not a torch checkpoint"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file (Keras .h5?), not a torch checkpoint"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return _describe_tar(path)
    if head[:1] in (b"{", b"["):
        return "a JSON file, not a checkpoint"
    if size >= 22 and _has_zip_directory(path, size):
        return (
            "data precedes a zip archive: torch.load would read this file as a legacy pickle, "
            "not as the zip archive, so torchls refuses the ambiguous file"
        )
    # Its bytes are not quoted: the path may name a file that is not the user's to show
    # (torch.load("/etc/shadow")), and a diagnostic is read by whoever sees the editor.
    return (
        "not a checkpoint format torchls knows (neither a torch zip archive, a legacy torch "
        "pickle, nor safetensors)"
    )


def _describe_tar(path: Path) -> str:
    import tarfile

    try:
        with tarfile.open(path) as archive:
            names = set(archive.getnames())
    except (tarfile.TarError, OSError):
        return "a tar archive that cannot be read"
    if {"sys_info", "pickle", "storages", "tensors"} <= names:
        return (
            "a checkpoint in torch's old tar format (torch 0.1-0.3): torchls recognises it but "
            "does not read it; load it with torch.load and save it again to convert it"
        )
    return "a tar archive, not a torch checkpoint"


def _has_zip_directory(path: Path, size: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 65_557))
        return b"PK\x05\x06" in handle.read()


# -- torch zip format (torch >= 1.6) ---------------------------------------------------------


def _safe_member_name(name: str) -> bool:
    if not name or name[0] == "/" or "\\" in name or ":" in name.split("/", 1)[0]:
        return False
    return ".." not in name or ".." not in name.split("/")


def _read_zip(path: Path, size: int, budget: ReadBudget) -> _Parsed:
    with open(path, "rb") as handle:
        try:
            members, directory_offset = zipdir.read_directory(handle, size)
        except zipdir.ZipError as exc:
            raise CheckpointError(path, f"damaged zip archive: {exc}") from None
        if len(members) > budget.max_zip_members:
            raise CheckpointError(path, f"zip archive has {len(members):,} members (limit)")
        by_name: dict[str, zipdir.Member] = {}
        folded: set[str] = set()
        for member in members:
            name = member.name
            # torch's zip reader matches names without regard to case: two members whose names
            # differ only in case would let torch load another data.pkl than the one we read.
            if name.lower() in folded:
                raise CheckpointError(
                    path,
                    f"the zip archive holds two members named {name!r} (ignoring case); torch "
                    "and torchls could read different ones, so torchls refuses the ambiguous file",
                )
            if not _safe_member_name(name):
                raise CheckpointError(path, f"zip member name {name!r} escapes the archive")
            folded.add(name.lower())
            by_name[name] = member
        if not members:
            raise CheckpointError(path, "an empty zip archive")
        # torch takes the archive's folder from its first member, as torch.save writes it.
        prefix = members[0].name.split("/", 1)[0]
        pickles = [n for n in by_name if n.count("/") == 1 and n.endswith("/data.pkl")]
        if pickles != [f"{prefix}/data.pkl"]:
            raise CheckpointError(path, _describe_zip(list(by_name), pickles))
        if f"{prefix}/version" not in by_name and f"{prefix}/.data/version" not in by_name:
            raise CheckpointError(
                path, "the zip archive has no version record: torch.load refuses it"
            )
        if f"{prefix}/constants.pkl" in by_name or any(
            name.startswith(f"{prefix}/code/") for name in by_name
        ):
            raise CheckpointError(
                path, "a TorchScript archive: load it with torch.jit.load, not torch.load"
            )

        def read(name: str, limit: int) -> bytes:
            try:
                return zipdir.read_member(handle, by_name[name], limit)
            except zipdir.ZipError as exc:
                raise CheckpointError(path, str(exc)) from None

        details: dict[str, Any] = {"archive_folder": prefix}
        for record, key in (
            ("byteorder", "byteorder"),
            ("version", "version"),
            (".format_version", "format_version"),
            (".storage_alignment", "storage_alignment"),
            (".data/serialization_id", "serialization_id"),
        ):
            if f"{prefix}/{record}" in by_name:
                text = read(f"{prefix}/{record}", 256).decode("utf-8", "replace").strip()
                details[key] = text
        byteorder = details.setdefault("byteorder", "little")
        if byteorder not in ("little", "big"):
            raise CheckpointError(path, f"unknown byteorder record {byteorder!r}")
        pickle_data = read(pickles[0], budget.max_pickle_bytes)
    table = StorageTable()
    vm = RestrictedUnpickler(
        pickle_data,
        budget=budget.pickle,
        reducers=TORCH_REDUCERS,
        persistent_load=table.persistent_load,
    )
    root = vm.load()
    details["pickle_protocol"] = vm.protocol
    storage_bytes = 0
    for key, storage in table.storages.items():
        entry = by_name.get(f"{prefix}/data/{key}")
        if entry is None:
            raise CheckpointError(path, f"storage '{key}' has no record data/{key} in the archive")
        if entry.header_offset + entry.compressed_size > directory_offset:
            raise CheckpointError(path, f"record data/{key} lies outside the archive (truncated?)")
        if entry.file_size != storage.nbytes:
            raise CheckpointError(
                path,
                f"record data/{key} holds {entry.file_size:,} bytes, but the pickle says "
                f"{storage.numel:,} x {storage.dtype} = {storage.nbytes:,} bytes",
            )
        storage_bytes += storage.nbytes
    warnings = []
    if byteorder == "big":
        warnings.append("tensors are stored big-endian; torch converts them when loading")
    _note_devices(details, table)
    return _Parsed(
        format="torch-zip",
        root=root,
        details=details,
        storages=table.storages,
        globals_seen=vm.globals_seen,
        opcodes=vm.opcodes_seen,
        warnings=warnings,
        storage_bytes=storage_bytes,
    )


def _note_devices(details: dict[str, Any], table: StorageTable) -> None:
    """Storage locations other than the CPU (`cuda:0`, ...): loading needs map_location there."""
    devices = sorted({s.location for s in table.storages.values()} - {"cpu"})
    if devices:
        details["devices"] = devices


def _describe_zip(names: list[str], pickles: list[str]) -> str:
    if len(pickles) == 1:
        return "data.pkl is not in the folder of the archive's first member, where torch looks"
    if len(pickles) > 1:
        return "the zip archive holds several data.pkl records: refusing an ambiguous file"
    if names and all(name.endswith(".npy") for name in names):
        return "a NumPy .npz archive, not a torch checkpoint: load it with numpy.load"
    if "model.json" in names or any(name.endswith("/model.json") for name in names):
        return "a TorchScript archive in the old format: load it with torch.jit.load"
    return "a zip archive without a data.pkl record: not a torch checkpoint"


# -- torch legacy format (torch < 1.6, or _use_new_zipfile_serialization=False) ---------------


def _read_legacy(path: Path, size: int, budget: ReadBudget) -> _Parsed:
    # Map only the head of the file where the pickles live: the raw storages behind them are
    # never touched, and a mapping of a whole multi-GB file would count against the reader's
    # address-space limit.
    mapped = min(size, budget.max_pickle_bytes)
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), mapped, access=mmap.ACCESS_READ)
        except OSError as exc:
            if exc.errno == errno.ENOMEM:
                raise MemoryError from None
            raise
    try:
        return _parse_legacy(path, size, data, budget)
    except PickleError as exc:
        if mapped < size and "ended" in str(exc):
            raise CheckpointError(
                path, f"its pickles run past the first {mapped:,} bytes (limit)"
            ) from None
        raise
    finally:
        data.close()


def _parse_legacy(path: Path, size: int, data: mmap.mmap, budget: ReadBudget) -> _Parsed:
    view: Any = data
    first = RestrictedUnpickler(view, budget=budget.pickle)
    magic = first.load()
    if magic != LEGACY_MAGIC:
        return _raw_pickle(path, first, magic, size)
    second = RestrictedUnpickler(view, pos=first.pos, budget=budget.pickle)
    protocol = second.load()
    if protocol != LEGACY_PROTOCOL:
        shown = (
            protocol if type(protocol) is int and abs(protocol) < 10**9 else type(protocol).__name__
        )
        raise CheckpointError(path, f"legacy torch file with unknown protocol {shown}")
    third = RestrictedUnpickler(view, pos=second.pos, budget=budget.pickle)
    sys_info = third.load()
    table = StorageTable()
    main = RestrictedUnpickler(
        view,
        pos=third.pos,
        budget=budget.pickle,
        reducers=TORCH_REDUCERS,
        persistent_load=table.persistent_load,
    )
    root = main.load()
    keys_vm = RestrictedUnpickler(view, pos=main.pos, budget=budget.pickle)
    keys = keys_vm.load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(path, "legacy file's storage key list is malformed")
    storage_offsets: dict[str, int] = {}
    offset, storage_bytes = _check_legacy_storages(
        path, size, keys_vm.pos, keys, table, storage_offsets
    )
    unloadable = None
    if table.untyped:
        unloadable = (
            "it holds untyped storages (tensors of dtypes such as uint16/32/64, float8 or "
            "complex32), which torch's legacy format can write but not read back"
        )
    globals_seen: dict[str, int] = {}
    for vm in (first, second, third, main, keys_vm):
        for name, count in vm.globals_seen.items():
            globals_seen[name] = globals_seen.get(name, 0) + count
    details: dict[str, Any] = {"legacy_protocol": protocol, "pickle_protocol": main.protocol}
    if isinstance(sys_info, dict):
        details["little_endian"] = sys_info.get("little_endian")
    _note_devices(details, table)
    warnings = []
    if offset < size:
        warnings.append(f"{size - offset:,} bytes follow the last storage")
    opcodes: set[int] = set()
    for vm in (first, second, third, main, keys_vm):
        opcodes |= vm.opcodes_seen
    return _Parsed(
        format="torch-legacy",
        root=root,
        details=details,
        storages=table.storages,
        globals_seen=globals_seen,
        opcodes=opcodes,
        warnings=warnings,
        storage_bytes=storage_bytes,
        unloadable=unloadable,
        storage_offsets=storage_offsets,
    )


def _check_legacy_storages(
    path: Path,
    size: int,
    offset: int,
    keys: list[str],
    table: StorageTable,
    positions: dict[str, int] | None = None,
) -> tuple[int, int]:
    """Raw storages follow the pickles: per key an 8-byte element count, then the bytes. Check
    each header and the total size against the pickle, reading 8 bytes per storage."""
    storage_bytes = 0
    with open(path, "rb") as handle:
        for key in keys:
            storage = table.storages.get(key)
            if storage is None:
                raise CheckpointError(
                    path, f"legacy file lists storage '{key}' the pickle never used"
                )
            if offset + 8 > size:
                raise CheckpointError(path, "legacy file ends before its storages (truncated?)")
            handle.seek(offset)
            (count,) = struct.unpack("<q", handle.read(8))
            if count != storage.numel:
                raise CheckpointError(
                    path,
                    f"storage '{key}' holds {count:,} elements; the pickle says {storage.numel:,}",
                )
            if positions is not None:
                positions[key] = offset + 8
            offset += 8 + storage.nbytes
            storage_bytes += storage.nbytes
    if offset > size:
        raise CheckpointError(
            path, f"legacy file is {size:,} bytes but its storages need {offset:,} (truncated?)"
        )
    return offset, storage_bytes


def _raw_pickle(path: Path, vm: RestrictedUnpickler, root: Any, size: int) -> _Parsed:
    warnings = []
    if _has_zip_directory(path, size):
        warnings.append("a zip archive is appended after the pickle: torch.load ignores it")
    return _Parsed(
        format="pickle",
        root=root,
        details={"pickle_protocol": vm.protocol},
        globals_seen=vm.globals_seen,
        opcodes=vm.opcodes_seen,
        # torch.load unpickles it (running what it names, under weights_only=False) and only
        # then finds torch's magic number missing.
        unloadable="it is a plain pickle, not a torch checkpoint (no magic number); with "
        "weights_only=False torch.load runs whatever the pickle names before it fails",
        warnings=warnings,
    )


# -- safetensors -----------------------------------------------------------------------------


def _read_safetensors(path: Path, size: int, budget: ReadBudget) -> _Parsed:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > budget.max_header_bytes:
            raise CheckpointError(path, f"safetensors header of {length:,} bytes is over the limit")
        if 8 + length > size:
            raise CheckpointError(path, "safetensors header runs past the end of the file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(path, "safetensors __metadata__ must map strings to strings")
    data_size = size - 8 - length
    root: dict[str, TensorRecord] = {}
    extents: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CheckpointError(path, f"safetensors entry {name!r} is not an object")
        code = entry.get("dtype")
        dtype = SAFETENSORS_DTYPE.get(code) if isinstance(code, str) else None
        if dtype is None:
            shown = code if isinstance(code, str) else type(code).__name__
            raise CheckpointError(path, f"tensor {name!r} has unknown dtype {shown[:40]!r}")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < INT64_LIMIT for d in shape)
        ):
            raise CheckpointError(path, f"tensor {name!r} has a malformed shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(path, f"tensor {name!r} has malformed data_offsets")
        tensor = TensorRecord(dtype, tuple(shape), None, 0, None)
        if tensor.numel >= INT64_LIMIT:
            raise CheckpointError(path, f"tensor {name!r} has more elements than torch can address")
        if offsets[1] - offsets[0] != tensor.nbytes:
            raise CheckpointError(
                path,
                f"tensor {name!r} spans {offsets[1] - offsets[0]:,} bytes, but {dtype} "
                f"x {shape} needs {tensor.nbytes:,}",
            )
        if offsets[1] > data_size:
            raise CheckpointError(
                path, f"tensor {name!r} lies past the end of the file (truncated?)"
            )
        extents.append((offsets[0], offsets[1], name))
        root[name] = tensor
    extents.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(extents):
        if start < end:
            raise CheckpointError(path, f"tensors {first!r} and {second!r} overlap in the file")
        if start > end:
            raise CheckpointError(
                path, f"a gap lies between tensors {first!r} and {second!r}; safetensors refuses it"
            )
    covered = extents[-1][1] if extents else 0
    if (extents and extents[0][0] != 0) or covered != data_size:
        raise CheckpointError(
            path, "the tensors do not cover the file's data exactly; safetensors refuses it"
        )
    details: dict[str, Any] = {"header_bytes": length}
    if metadata:
        details["metadata"] = metadata
    return _Parsed(
        format="safetensors",
        root=root,
        details=details,
        storage_bytes=sum(t.nbytes for t in root.values()),
    )


# -- sharded checkpoints and Hugging Face folders --------------------------------------------


def _read_json(path: Path, limit: int, pairs_hook: Any = None) -> Any:
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(path, f"{size:,} bytes of JSON is over the limit")
    try:
        return json.loads(path.read_bytes(), object_pairs_hook=pairs_hook)
    except ValueError as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from None


def _read_index(path: Path, budget: ReadBudget) -> _Parsed:
    listed_twice: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                listed_twice.append(key)
            seen.add(key)
        return dict(pairs)

    index = _read_json(path, budget.max_header_bytes, pairs_hook)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(path, "an index without a weight_map of tensor names to shard files")
    lenient = budget.shard_problems
    problems: list[str] = []

    def problem(text: str) -> None:
        if not lenient:
            raise CheckpointError(path, text)
        problems.append(text)

    for key in listed_twice[:20]:
        if key in weight_map:
            problem(f"tensor {key!r} is listed twice in the index's weight_map")
    folder = path.parent
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    root: dict[str, TensorRecord] = {}
    shard_details = []
    tensor_shards: dict[str, str] = {}
    found_in: dict[str, str] = {}  # every tensor any shard holds -> the first shard holding it
    globals_seen: dict[str, int] | None = None
    opcodes: set[int] = set()
    warnings: list[str] = []
    storage_bytes = 0
    shard_files = 0  # bytes of the shard files found
    for shard, keys in shards.items():
        # Checked by name, not by resolving symlinks: the Hugging Face cache keeps each shard as
        # a symlink into ../../blobs, which is where the cache put it, not where a name points.
        parts = PurePosixPath(shard).parts
        if not parts or PurePosixPath(shard).is_absolute() or ".." in parts or "\\" in shard:
            raise CheckpointError(path, f"shard {shard!r} lies outside the checkpoint's folder")
        if shard.endswith(INDEX_SUFFIX):
            raise CheckpointError(path, f"shard {shard!r} is itself an index")
        shard_path = folder / shard
        if not shard_path.is_file():
            problem(f"shard {shard!r} listed in the index is missing ({_tensors(len(keys))})")
            continue
        shard_size = shard_path.stat().st_size
        shard_files += shard_size
        try:
            parsed = _read_file(shard_path, shard_size, budget)
        except CheckpointError as exc:
            if not lenient:
                raise
            problems.append(f"shard {shard!r} cannot be read: {exc.reason}")
            continue
        tensors = _flat_tensors(parsed.root)
        missing = [key for key in keys if key not in tensors]
        if missing:
            problem(
                f"shard {shard!r} lacks {_tensors(len(missing))} the index puts there, "
                f"e.g. {missing[0]!r}"
            )
        for key in tensors:
            other = found_in.setdefault(key, shard)
            if other != shard and lenient:
                problems.append(f"tensor {key!r} is stored twice, in {other!r} and {shard!r}")
        extra = sorted(set(tensors) - set(keys))
        if extra:
            warnings.append(f"shard {shard!r} holds {_tensors(len(extra))} the index does not list")
        shard_bytes = 0
        for key in keys:
            if key in tensors:
                root[key] = tensors[key]
                tensor_shards[key] = shard
                shard_bytes += tensors[key].nbytes
        shard_details.append(
            {
                "file": shard,
                "format": parsed.format,
                "tensors": len(keys) - len(missing),
                "bytes": shard_bytes,
                "file_size": shard_size,
            }
        )
        storage_bytes += parsed.storage_bytes
        if parsed.globals_seen is not None:
            globals_seen = globals_seen or {}
            for name, count in parsed.globals_seen.items():
                globals_seen[name] = globals_seen.get(name, 0) + count
            opcodes |= parsed.opcodes
        warnings.extend(f"{shard}: {w}" for w in parsed.warnings)
    details: dict[str, Any] = {"shards": shard_details, "index_size": path.stat().st_size}
    metadata = index.get("metadata")
    if isinstance(metadata, dict):
        details["metadata"] = metadata
        total = metadata.get("total_size")
        held = sum(tensor.nbytes for tensor in root.values())
        # Checked only when every shard was read: a missing shard already explains a gap.
        complete = len(shard_details) == len(shards) and len(root) == len(weight_map)
        if lenient and complete and type(total) is int and total != held:
            problems.append(
                f"the index's total_size is {total:,} bytes, but its tensors hold {held:,}"
            )
    if lenient:
        details["shard_problems"] = problems
    return _Parsed(
        format="sharded",
        root=root,
        details=details,
        globals_seen=globals_seen,
        opcodes=opcodes,
        warnings=warnings,
        storage_bytes=storage_bytes,
        tensor_shards=tensor_shards,
        size=shard_files,
    )


def _tensors(count: int) -> str:
    return f"{count:,} tensor" + ("" if count == 1 else "s")


def _flat_tensors(root: Any) -> dict[str, TensorRecord]:
    if isinstance(root, dict):
        return {k: v for k, v in root.items() if isinstance(k, str) and isinstance(v, TensorRecord)}
    return {}


def _read_folder(path: Path, budget: ReadBudget) -> _Parsed:
    config_path = path / "config.json"
    for name in HF_WEIGHTS:
        weights = path / name
        if weights.is_file():
            break
    else:
        indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
        if not indexes:
            found = "a config.json but no weights" if config_path.is_file() else "no checkpoint"
            raise CheckpointError(
                path, f"the folder holds {found} (looked for {', '.join(HF_WEIGHTS)})"
            )
        weights = indexes[0]
    weights_size = weights.stat().st_size
    parsed = _read_file(weights, weights_size, budget)
    # The weights' size, not the folder's: tokenizer files, optimizer states and the like beside
    # them are not the checkpoint.
    if parsed.size is None:
        parsed.size = weights_size
    parsed.details = {"weights": weights.name, "weights_format": parsed.format, **parsed.details}
    if config_path.is_file():
        config = _read_json(config_path, budget.max_header_bytes)
        if isinstance(config, dict):
            parsed.details["config"] = {
                key: config[key]
                for key in (
                    "model_type",
                    "architectures",
                    "torch_dtype",
                    "dtype",
                    "transformers_version",
                )
                if key in config
            }
        parsed.format = "huggingface"
    return parsed
