"""The torch side of "Convert checkpoint" (safetensors, extract, cast): load, convert, write a
temporary file the server names, read it back and compare tensor by tensor. Runs in a one-shot
worker process (worker/loop.py `--one-shot`), never in the language server.

Loading is the downgrade's: `torch.load(weights_only=True)` memory-mapped, or a mapped
safetensors file. Nothing the file names is imported. safetensors files are written here, tensor
by tensor from the mapped input, so a conversion holds about one tensor's copy at a time (the
plain `save_file` script builds every tensor's bytes first); the safetensors package, when the
user's interpreter has it, reads the result back for the comparison.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torchls.checkpoint.dtypes import SAFETENSORS_DTYPE
from torchls.checkpoint.structure import subscript
from torchls.worker.downgrade import (
    _compare,
    _load_sources,
    _pause_for_tests,
    _same_bytes,
)
from torchls.worker.jobs import JobContext, JobError, Params

Emit = Callable[[str, float | None], None]
_SAFETENSORS_CODE = {name: code for code, name in SAFETENSORS_DTYPE.items()}
CAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# BatchNorm's statistics: kept in fp32 when asked (their variance underflows in half precision).
NORM_STATS = ("running_mean", "running_var")


def convert(context: JobContext, params: Params) -> dict[str, Any]:
    """params: {"kind": "safetensors" | "extract" | "cast", "outputs": [{"source": path,
    "format": "torch" | "safetensors", "temps": [path, ...]}], "key": reader path of the state
    dict ("" the root), ...}. `temps` holds one file, or (safetensors with a shard size) as many
    as the server planned at most; the result says which were written."""
    import torch

    say: Emit = context.emit or (lambda message, percentage: None)
    kind = str(params["kind"])
    outputs = list(params.get("outputs") or [])
    results = []
    for index, output in enumerate(outputs):
        share = 100.0 / max(1, len(outputs))
        base = index * share
        sources = [str(s) for s in output.get("sources") or [output["source"]]]
        source = sources[0]
        name = Path(source).name if len(sources) == 1 else f"{len(sources)} shards"
        say(f"loading {name}", base)
        if kind == "weights-only":
            # It does not load with weights_only=True: that is what this conversion mends.
            results.append(_weights_only(source, output) | {"source": source})
            continue
        loaded = _load_all(sources, str(output.get("format", "torch")))
        key = str(params.get("key") or "")
        state = _select(loaded, key)
        say(f"writing {name}", base + share * 0.2)
        if kind == "safetensors":
            result = _to_safetensors(state, output, int(params.get("max_shard_bytes") or 0))
        elif kind == "extract":
            result = _extract(loaded, state, key, output, str(params.get("strip_prefix") or ""))
        elif kind == "cast":
            result = _cast(loaded, state, output, params)
        elif kind == "consolidate":
            result = _split(state, output, int(params.get("max_shard_bytes") or 0))
        else:
            raise JobError("error", f"unknown conversion {kind!r}")
        _pause_for_tests()
        say(f"verifying {name}", base + share * 0.7)
        result["source"] = source
        results.append(result)
        del loaded, state
    say("done", 100.0)
    return {"outputs": results, "torch": str(torch.__version__)}


def _load_all(sources: list[str], form: str) -> Any:
    """One file as it is; the shards of one state dict merged (a name in two shards refused)."""
    if len(sources) == 1 or form == "safetensors":
        return _load_sources(sources, form)
    merged: dict[str, Any] = {}
    for source in sources:
        part = _load_sources([source], form)
        if not isinstance(part, dict):
            raise JobError("error", f"{Path(source).name} is not a state dict shard")
        for key, value in part.items():
            if key in merged:
                raise JobError("error", f"{Path(source).name} repeats the key {key!r}")
            merged[key] = value
    return merged


def _select(root: Any, path: str) -> Any:
    """The object at the reader's path (`['state_dict']`), found by walking the loaded object
    with the reader's own naming so both sides agree on every key's spelling."""
    if not path:
        return root
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, where = stack.pop()
        items: Iterator[tuple[Any, Any]]
        if isinstance(value, dict):
            items = iter(value.items())
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        else:
            continue
        for key, item in items:
            at = subscript(where, key)
            if at == path:
                return item
            if path.startswith(at):
                stack.append((item, at))
    raise JobError("error", f"the checkpoint has nothing at {path}")


def _plain(tensor: Any) -> Any:
    import torch

    plain = tensor.detach()
    if type(plain) is not torch.Tensor:
        plain = plain.as_subclass(torch.Tensor)
    if plain.is_conj():
        plain = plain.resolve_conj()
    if plain.is_neg():
        plain = plain.resolve_neg()
    return plain


def _tensors_of(state: Any) -> dict[str, Any]:
    import torch

    if not isinstance(state, dict):
        raise JobError("error", "the chosen object is not a mapping of names to tensors")
    found = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise JobError("error", f"{key!r} is not a named tensor; choose a state dict")
        found[key] = _plain(value)
    return found


# -- safetensors ---------------------------------------------------------------------------


def _to_safetensors(state: Any, output: dict[str, Any], max_shard_bytes: int) -> dict[str, Any]:
    """Like safetensors' own converter: a tensor that is the very same data as one already kept
    (tied weights, an alias) is dropped and named in `__metadata__` (dropped -> kept); other
    views of one storage are written as their own contiguous copies."""
    import torch

    tensors = _tensors_of(state)
    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in tensors.items():
        code = _SAFETENSORS_CODE.get(str(tensor.dtype).removeprefix("torch."))
        if code is None or tensor.layout != torch.strided or tensor.is_quantized:
            raise JobError(
                "unsupported-dtypes",
                f"{name} is a {str(tensor.dtype).removeprefix('torch.')} "
                f"{'tensor' if tensor.layout == torch.strided else str(tensor.layout)} tensor, "
                "which safetensors cannot hold",
            )
        if tensor.device.type == "meta":
            raise JobError("error", f"{name} is on the meta device: it has no values to write")
        if tensor.numel():
            alias = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tuple(tensor.stride()),
                tensor.dtype,
            )
            if alias in seen:
                dropped[name] = seen[alias]
                continue
            seen[alias] = name
        kept[name] = tensor
    temps = [str(t) for t in output["temps"]]
    shards = _shards(kept, max_shard_bytes) if max_shard_bytes else [list(kept)]
    if len(shards) > len(temps):
        raise JobError("error", "the shards the server planned do not fit the tensors")
    metadata = {"format": "pt", **dropped}
    files: list[dict[str, Any]] = []
    for names, temp in zip(shards, temps, strict=False):
        # Every shard carries the dropped names (each loads by itself), the index maps them once.
        _write_safetensors(temp, {n: kept[n] for n in names}, metadata)
        size = Path(temp).stat().st_size
        files.append({"temp": temp, "names": names, "bytes": size, "format": "safetensors"})
    for shard in files:
        names_read: list[str] = []
        # One tensor read back at a time: a second copy of the whole file is never held.
        for name, tensor in _read_back_safetensors(str(shard["temp"])):
            names_read.append(name)
            if name not in kept:
                raise JobError("verify", f"{name}: written but not asked for")
            if tensor.dtype != kept[name].dtype or tuple(tensor.shape) != tuple(kept[name].shape):
                raise JobError("verify", f"{name}: the written dtype or shape differs")
            if not _same_bytes(kept[name], tensor):
                raise JobError("verify", f"{name}: the written values differ from the original")
            del tensor
        if sorted(names_read) != sorted(shard["names"]):
            raise JobError("verify", f"{Path(shard['temp']).name} lists other tensors than written")
    return {
        "files": files,
        "tensors": len(kept),
        "dropped": dropped,
        "bytes": sum(Path(str(f["temp"])).stat().st_size for f in files),
        "total_size": sum(t.numel() * t.element_size() for t in kept.values()),
    }


def _shards(tensors: dict[str, Any], limit: int) -> list[list[str]]:
    """Names in file order, a new shard whenever the next tensor would pass the limit (a tensor
    larger than the limit gets a shard of its own, as transformers does)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_safetensors(path: str, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_CODE[str(tensor.dtype).removeprefix("torch.")],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    try:
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(blob)))
            handle.write(blob)
            for tensor in tensors.values():
                if not tensor.numel():
                    continue
                # One tensor's contiguous copy at most (none for the usual contiguous weights),
                # handed to write() without another copy into a bytes object.
                data = tensor.contiguous()
                nbytes = data.numel() * data.element_size()
                handle.write((ctypes.c_char * nbytes).from_address(data.data_ptr()))
                del data
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(path, exc) from None


def _write_error(path: str, exc: OSError) -> JobError:
    why = (exc.strerror or type(exc).__name__).lower()
    return JobError("error", f"cannot write in {Path(path).parent} ({why}): choose another output")


def _read_back_safetensors(path: str) -> Iterator[tuple[str, Any]]:
    """The written file's tensors one at a time, each read into its own buffer (a mapping
    would keep every page read in the process's memory, doubling its peak on a big file); the
    safetensors package, when the interpreter has it, must list the same names, dtypes and
    shapes (an independent reader of the header)."""
    import torch

    listed = _safetensors_listing(path)
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        start = 8 + length
        header.pop("__metadata__", None)
        if listed is not None and set(listed) != set(header):
            raise JobError("verify", f"safetensors lists other tensors in {Path(path).name}")
        for name, entry in header.items():
            if listed is not None and listed[name] != (entry["dtype"], list(entry["shape"])):
                raise JobError("verify", f"{name}: safetensors reads another dtype or shape")
            dtype = getattr(torch, SAFETENSORS_DTYPE[entry["dtype"]])
            begin, end = (int(n) for n in entry["data_offsets"])
            buffer = bytearray(end - begin)
            handle.seek(start + begin)
            if handle.readinto(buffer) != len(buffer):
                raise JobError("verify", f"{name}: the written file is cut short")
            flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            yield name, flat.reshape(entry["shape"])


def _safetensors_listing(path: str) -> dict[str, tuple[str, list[int]]] | None:
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    listing = {}
    with safe_open(path, framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            part = handle.get_slice(name)
            listing[name] = (str(part.get_dtype()), list(part.get_shape()))
    return listing


# -- extract and cast (torch.save) ---------------------------------------------------------


def _save(obj: Any, temp: str) -> int:
    import torch

    try:
        with open(temp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(temp, exc) from None
    return Path(temp).stat().st_size


def _reload(temp: str) -> Any:
    import torch

    return torch.load(temp, weights_only=True, map_location="cpu", mmap=True)


def _extract(
    loaded: Any, state: Any, key: str, output: dict[str, Any], prefix: str
) -> dict[str, Any]:
    tensors = _tensors_of(state)
    if prefix:
        if not any(name.startswith(prefix) for name in tensors):
            raise JobError("no-prefix", f"no key of the state dict starts with {prefix!r}")
        tensors = {name.removeprefix(prefix): tensor for name, tensor in tensors.items()}
    temp = str(output["temps"][0])
    size = _save(tensors, temp)
    written = _reload(temp)
    problem = _compare(tensors, written, "", set())
    if problem:
        raise JobError("verify", f"the extracted file differs from the original: {problem}")
    left = [subscript("", k) for k in loaded if subscript("", k) != key] if key else []
    return {
        "files": [{"temp": temp, "bytes": size, "format": "torch-zip", "names": list(tensors)}],
        "tensors": len(tensors),
        "bytes": size,
        "dropped_entries": left,
    }


def _split(state: Any, output: dict[str, Any], max_shard_bytes: int) -> dict[str, Any]:
    """Shards merged into one file (no limit), or one file cut into shards, in the format it
    was in; each file written is read back and compared with the tensors it should hold."""
    if output.get("format") == "safetensors":
        return _to_safetensors(state, output, max_shard_bytes)
    tensors = _tensors_of(state)
    shards = _shards(tensors, max_shard_bytes) if max_shard_bytes else [list(tensors)]
    temps = [str(t) for t in output["temps"]]
    if len(shards) > len(temps):
        raise JobError("error", "the shards the server planned do not fit the tensors")
    files: list[dict[str, Any]] = []
    for names, temp in zip(shards, temps, strict=False):
        part = {name: tensors[name] for name in names}
        size = _save(part, temp)
        problem = _compare(part, _reload(temp), "", set())
        if problem:
            raise JobError("verify", f"the written file differs from the original: {problem}")
        files.append({"temp": temp, "names": names, "bytes": size, "format": "torch-zip"})
    return {
        "files": files,
        "tensors": len(tensors),
        "bytes": sum(int(f["bytes"]) for f in files),
        "total_size": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def _cast(loaded: Any, state: Any, output: dict[str, Any], params: Params) -> dict[str, Any]:
    """The chosen state dict's floating tensors in the new dtype; integer and boolean tensors,
    and everything outside the state dict (optimizer state), as they were."""
    import torch

    target = getattr(torch, CAST_DTYPES[str(params["dtype"])])
    keep_norm = bool(params.get("keep_norm_fp32"))
    tensors = _tensors_of(state)
    before = sum(t.numel() * t.element_size() for t in tensors.values())
    cast: dict[str, Any] = {}
    memo: dict[int, Any] = {}  # a tied tensor is cast once and stays tied
    changed = 0
    for name, tensor in tensors.items():
        skip = keep_norm and name.endswith(NORM_STATS)
        if not tensor.is_floating_point() or tensor.dtype == target or skip:
            cast[name] = tensor
            continue
        if id(state[name]) not in memo:
            new = tensor.to(target)
            # Exact: a finite value that becomes infinite does not fit the new dtype (the mask
            # only when the cast made an infinity at all, which is rare).
            overflow = None
            if bool(torch.isinf(new).any()):
                overflow = torch.isinf(new) & torch.isfinite(tensor)
            if overflow is not None and bool(overflow.any()):
                worst = float(tensor[overflow].abs().max())
                raise JobError(
                    "overflow",
                    f"{name} has values (up to {worst:.6g}) beyond the largest "
                    f"{CAST_DTYPES[str(params['dtype'])]} ({float(torch.finfo(target).max):.6g})",
                )
            memo[id(state[name])] = new
            changed += 1
        cast[name] = memo[id(state[name])]
    after = sum(t.numel() * t.element_size() for t in cast.values())
    temps = [str(t) for t in output["temps"]]
    if output.get("format") == "safetensors":
        result = _to_safetensors(cast, {"temps": temps[:1]}, 0)
        result.update(cast_tensors=changed, before=before, after=after)
        return result
    if state is loaded:
        new_root: Any = cast
    else:
        new_root = _replace(loaded, state, cast)
    size = _save(new_root, temps[0])
    written = _reload(temps[0])
    # Bit for bit what torch's cast made; everything not cast is the input's own tensor.
    problem = _compare(new_root, written, "", set())
    if problem:
        raise JobError("verify", f"the cast file differs from what was cast: {problem}")
    return {
        "files": [{"temp": temps[0], "bytes": size, "format": "torch-zip"}],
        "tensors": len(cast),
        "bytes": size,
        "cast_tensors": changed,
        "before": before,
        "after": after,
    }


def _replace(root: Any, old: Any, new: Any) -> Any:
    """`root` rebuilt with `old` (found by identity) replaced by `new`; the rest shared."""
    if root is old:
        return new
    if isinstance(root, dict):
        rebuilt = {k: _replace(v, old, new) for k, v in root.items()}
        if type(root) is not dict:
            copy = type(root)()
            copy.update(rebuilt)
            return copy
        return rebuilt
    if isinstance(root, list):
        return [_replace(v, old, new) for v in root]
    if type(root) is tuple:
        return tuple(_replace(v, old, new) for v in root)
    return root


# -- weights-only: plain data in place of the objects weights_only=True refuses --------------

# Globals imported for real when loading: plain-data types from the standard library and numpy
# (importing them runs no code from the file or the user's project). Everything else the file
# names that torch's weights_only allowlist does not hold is replaced, while unpickling, by an
# inert stand-in that records how it was built, so no module of the user is ever imported.
_PLAIN_GLOBALS = {
    "argparse.Namespace", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
    "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "pathlib._local.PosixPath", "pathlib._local.WindowsPath",
    "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
}  # fmt: skip


class _StandIn:
    """What a refused global becomes: never its real class or function."""

    _torchls_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        made = object.__new__(cls)
        made.__dict__.update(_torchls_args=args, _torchls_called=False, _torchls_state=None)
        return made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_torchls_called"] = True  # built by a call (REDUCE), not NEWOBJ

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_torchls_state"] = state


def _plain_pickle_module() -> Any:
    import _compat_pickle
    import importlib
    import pickle
    import types

    import torch

    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:
        raise JobError(
            "error",
            f"torch {torch.__version__} does not expose the weights_only allowlist this "
            "conversion imports from (torch >= 2.4 does)",
        ) from None
    allowed = _get_allowed_globals()
    stand_ins: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            numpy_dtype = module == "numpy.dtypes" and name.endswith("DType")
            if full in _PLAIN_GLOBALS or numpy_dtype:
                value: Any = importlib.import_module(module)
                for part in name.split("."):
                    value = getattr(value, part)
                return value
            if full not in stand_ins:
                stand_ins[full] = type(name, (_StandIn,), {"_torchls_name": full})
            return stand_ins[full]

    module = types.ModuleType("torchls_plain_pickle")
    module.__dict__.update(
        Unpickler=Unpickler,
        load=lambda handle, **kwargs: Unpickler(handle, **kwargs).load(),
        __name__="torchls_plain_pickle",
    )
    return module


def _weights_only(source: str, output: dict[str, Any]) -> dict[str, Any]:
    """Load with weights_only=False through an unpickler that imports only torch's allowlist and
    plain-data types (the server ran this only after torchls's reader found no code-running
    global), replace plain data by what weights_only=True loads, refuse code, save, reload with
    weights_only=True and compare."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(
                source, weights_only=False, map_location="cpu", pickle_module=_plain_pickle_module()
            )
    except MemoryError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError("error", f"cannot read {Path(source).name}: {first}") from None
    replaced: list[str] = []
    code: list[str] = []
    clean = _clean(loaded, "", replaced, code, {})
    if code:
        names = sorted(set(code))
        raise JobError(
            "code",
            f"{Path(source).name} holds objects that are code, not data: {', '.join(names[:5])}"
            + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            + "; they cannot be replaced by plain values",
            {"globals": [n.split(" ", 1)[0] for n in names]},
        )
    temp = str(output["temps"][0])
    size = _save(clean, temp)
    try:
        written = _reload(temp)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError(
            "verify", f"the cleaned file still needs weights_only=False: {first}"
        ) from None
    problem = _compare(clean, written, "", set())
    if problem:
        raise JobError("verify", f"the cleaned file differs from what was cleaned: {problem}")
    tensors: list[Any] = []
    _count_tensors(written, tensors)
    return {
        "files": [{"temp": temp, "bytes": size, "format": "torch-zip"}],
        "tensors": len(tensors),
        "bytes": size,
        "replaced": replaced,
    }


def _count_tensors(value: Any, found: list[Any]) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _count_tensors(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _count_tensors(item, found)


_PRIMITIVES = (str, int, float, bool, bytes, type(None))


def _clean(
    value: Any, where: str, replaced: list[str], code: list[str], memo: dict[int, Any]
) -> Any:
    """`value` with every object weights_only=True refuses replaced by plain data (said in
    `replaced`), or named in `code` when it is code."""
    import argparse
    import pathlib

    import torch

    label = where or "the root"
    # Exact types: numpy.float64 is a float subclass, and must become a plain float.
    if isinstance(value, torch.Tensor) or type(value) in _PRIMITIVES:
        return value
    if id(value) in memo:
        return memo[id(value)]
    result: Any
    if isinstance(value, type) and issubclass(value, _StandIn):
        code.append(f"{value._torchls_name} (a function or class, at {label})")
        return value
    if isinstance(value, _StandIn):
        record = value.__dict__
        args, state = record["_torchls_args"], record["_torchls_state"]
        called = record["_torchls_called"]
        name = value._torchls_name
        enum_like = (
            called and state is None and len(args) == 1 and isinstance(args[0], _PRIMITIVES)
            and name.rpartition(".")[2][:1].isupper()
        )  # fmt: skip
        if not enum_like:
            code.append(f"{name} (an object of a custom class, at {label})")
            return value
        replaced.append(f"{label}: {name}({args[0]!r}) -> {args[0]!r} (an enum member's value)")
        return args[0]
    if isinstance(value, argparse.Namespace):
        replaced.append(f"{label}: argparse.Namespace -> dict")
        result = {}
        memo[id(value)] = result
        for key, item in vars(value).items():
            result[key] = _clean(item, f"{where}[{key!r}]", replaced, code, memo)
        return result
    if isinstance(value, pathlib.PurePath):
        replaced.append(f"{label}: {type(value).__name__} -> str")
        return str(value)
    kind = type(value).__module__.split(".", 1)[0]
    if kind == "numpy":
        return _from_numpy(value, label, replaced, code)
    if isinstance(value, dict):
        result = type(value)() if type(value) in (dict, _ordered_dict()) else {}
        memo[id(value)] = result
        for key, item in value.items():
            new_key = _clean(key, f"{where}.keys()", replaced, code, memo)
            result[new_key] = _clean(item, f"{where}[{key!r}]", replaced, code, memo)
        return result
    if isinstance(value, list):
        result = []
        memo[id(value)] = result
        result.extend(
            _clean(item, f"{where}[{n}]", replaced, code, memo) for n, item in enumerate(value)
        )
        return result
    if type(value) in (tuple, set, frozenset):
        items = [
            _clean(item, f"{where}[{n}]", replaced, code, memo) for n, item in enumerate(value)
        ]
        return type(value)(items)
    return value  # torch's allowlist (torch.Size, dtypes, OrderedDict...): loads as it is


def _ordered_dict() -> type:
    import collections

    return collections.OrderedDict


def _from_numpy(value: Any, label: str, replaced: list[str], code: list[str]) -> Any:
    import numpy
    import torch

    name = f"numpy.{type(value).__name__}"
    if isinstance(value, numpy.ndarray):
        if value.dtype.kind not in "biufc":
            code.append(f"{name} of {value.dtype} (not numbers, at {label})")
            return value
        replaced.append(f"{label}: {name} {value.dtype} {list(value.shape)} -> tensor")
        return torch.from_numpy(numpy.ascontiguousarray(value).copy())
    if isinstance(value, numpy.generic):
        plain = value.item()
        replaced.append(f"{label}: {name} -> {type(plain).__name__}")
        return plain
    if isinstance(value, numpy.dtype):
        replaced.append(f"{label}: numpy dtype -> str")
        return str(value)
    code.append(f"{name} (at {label})")
    return value
