"""The torch side of "Downgrade checkpoint": load, make legacy-safe, save in the legacy format,
read back and compare. Runs in a one-shot worker process (see worker/loop.py `--one-shot`), never
in the language server.

Loading is `torch.load(weights_only=True)` (zip files memory-mapped, so a 1 GiB checkpoint is not
copied into memory to be read) or a safetensors reader that maps the file and builds tensors on
it. Nothing the file names is imported unless the user allowed those globals by name, and the
server only passes them in a trusted workspace.

The server decides every path: it hands this job a temporary output name, renames it into place
after its own check, and deletes it if this process dies or is cancelled half-way.
"""

from __future__ import annotations

import copy
import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchls.checkpoint.dtypes import SAFETENSORS_DTYPE
from torchls.worker.jobs import JobContext, JobError, Params

# Dtypes torch's legacy format writes but cannot read back (measured with torch 2.13: the
# legacy loader looks up a typed storage class that does not exist for them), each with the
# dtype `cast` turns it into without losing a value.
CAST_TO: dict[str, str] = {
    "float8_e4m3fn": "float32", "float8_e4m3fnuz": "float32", "float8_e5m2": "float32",
    "float8_e5m2fnuz": "float32", "float8_e8m0fnu": "float32",
    "uint16": "int32", "uint32": "int64", "uint64": "int64", "complex32": "complex64",
}  # fmt: skip
# Sub-byte and bit dtypes: neither format can hold them in a way old torch reads.
NO_LEGACY = {"float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2"}

Emit = Callable[[str, float | None], None]


def downgrade(context: JobContext, params: Params) -> dict[str, Any]:
    """params: {"outputs": [{"temp": path, "sources": [path, ...], "format": "torch" |
    "safetensors"}], "cast": bool, "allow_globals": [name, ...]}. Several sources are merged into
    one output (safetensors shards into one pytorch_model.bin). Returns, per output, the tensors
    written (dtype and shape, in the order a walk of the object meets them), the casts made and
    the bytes written, after the read-back comparison passed."""
    import torch

    say: Emit = context.emit or (lambda message, percentage: None)
    outputs = list(params.get("outputs") or [])
    allowed = [str(name) for name in params.get("allow_globals") or []]
    if allowed and not context.allow_user_code:
        raise JobError(
            "untrusted", "allowing more globals runs the file's code: only in a trusted workspace"
        )
    extra = _import_globals(allowed)
    results = []
    for index, output in enumerate(outputs):
        sources = [str(s) for s in output["sources"]]
        temp = str(output["temp"])
        share = 100.0 / max(1, len(outputs))
        base = index * share
        name = Path(sources[0]).name if len(sources) == 1 else f"{len(sources)} shards"
        say(f"loading {name}", base)
        with torch.serialization.safe_globals(extra):
            original = _load_sources(sources, str(output.get("format", "torch")))
        say(f"preparing {name}", base + share * 0.3)
        casts: list[str] = []
        refused: list[tuple[str, str]] = []
        prepared = _legacy_safe(original, bool(params.get("cast")), (casts, refused), {}, "")
        if refused:
            raise _unsupported(name, refused, bool(params.get("cast")))
        say(f"writing {Path(temp).name}", base + share * 0.4)
        try:
            with open(temp, "wb") as handle:
                torch.save(prepared, handle, _use_new_zipfile_serialization=False)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # a full disk, a quota, a folder made read-only meanwhile
            why = (exc.strerror or type(exc).__name__).lower()
            raise JobError(
                "error", f"cannot write in {Path(temp).parent} ({why}): choose another output"
            ) from None
        _pause_for_tests()
        say(f"verifying {name}", base + share * 0.7)
        with torch.serialization.safe_globals(extra):
            reloaded = torch.load(temp, weights_only=True, map_location="cpu")
        # Against a fresh read of the input, not the object just saved: a fault in the
        # preparation itself would otherwise compare equal to its own output.
        del original, prepared
        with torch.serialization.safe_globals(extra):
            again = _load_sources(sources, str(output.get("format", "torch")))
        problem = _compare(again, reloaded, "", set(casts))
        if problem:
            raise JobError("verify", f"the re-saved file differs from the original: {problem}")
        tensors: list[list[Any]] = []
        _tensor_list(reloaded, tensors)
        results.append(
            {"temp": temp, "tensors": tensors, "bytes": Path(temp).stat().st_size, "cast": casts}
        )
        del again, reloaded
    say("done", 100.0)
    return {"outputs": results, "torch": str(torch.__version__)}


def _pause_for_tests() -> None:
    """Tests interrupt a downgrade after the temporary file is written: they hold it here."""
    from torchls.worker.protocol import test_jobs_enabled

    seconds = os.environ.get("TORCHLS_TEST_DOWNGRADE_PAUSE")
    if seconds and test_jobs_enabled():
        import time

        time.sleep(float(seconds))


def _import_globals(names: list[str]) -> list[Any]:
    import importlib

    found = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        try:
            value: Any = importlib.import_module(module)
            for part in attribute.split("."):
                value = getattr(value, part)
        except Exception as exc:
            raise JobError("refused-globals", f"cannot import {name}: {exc}") from None
        found.append(value)
    return found


def _load_sources(sources: list[str], form: str) -> Any:
    import torch

    if form == "safetensors":
        merged: dict[str, Any] = {}
        for source in sources:
            for key, tensor in _read_safetensors(source).items():
                if key in merged:
                    raise JobError("error", f"{Path(source).name} repeats the key {key!r}")
                merged[key] = tensor
        return merged
    (source,) = sources
    # Memory-mapped when torch can (zip format, a name the C++ side can encode).
    mapped = _is_zip(source) and _encodable(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(source, weights_only=True, map_location="cpu", mmap=mapped)
    except MemoryError:
        raise
    except Exception as exc:  # torch's UnpicklingError carries the refused global
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        if "Cannot allocate memory" in text:
            raise JobError(
                "memory", f"loading {Path(source).name} needs more memory than the worker's limit"
            ) from None
        kind = "refused-globals" if "Unsupported global" in text else "error"
        raise JobError(kind, f"torch.load refused {Path(source).name}: {first}") from None


def _encodable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_zip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _read_safetensors(path: str) -> dict[str, Any]:
    """A safetensors file's tensors, built on a private mapping of the file (nothing copied until
    a page is touched; writes, which nothing makes, would never reach the file)."""
    import torch

    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise JobError("error", f"{Path(path).name} is too short for safetensors")
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, 100 * 1024 * 1024):
            raise JobError("error", f"{Path(path).name} has a broken safetensors header")
        header = json.loads(handle.read(length))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + length
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype_name = SAFETENSORS_DTYPE.get(entry.get("dtype"))
        if dtype_name is None:
            raise JobError("error", f"{key}: safetensors dtype {entry.get('dtype')} is unknown")
        dtype = getattr(torch, dtype_name)
        shape = [int(n) for n in entry["shape"]]
        begin, end = (int(n) for n in entry["data_offsets"])
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or start + end > size:
            raise JobError("error", f"{key}: its data offsets do not fit the file")
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin)
        tensors[key] = flat.reshape(shape)
    return tensors


def _unsupported(name: str, refused: list[tuple[str, str]], cast: bool) -> JobError:
    dtypes = sorted({dtype for _, dtype in refused})
    castable = not cast and all(dtype in CAST_TO for dtype in dtypes)
    where = ", ".join(f"{label} ({dtype})" for label, dtype in refused[:3])
    more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
    advice = " Cast them (float8 -> float32, uint -> wider int, complex32 -> complex64) to go on."
    return JobError(
        "unsupported-dtypes",
        f"{name} has {len(refused)} tensor(s) in dtypes torch's legacy format cannot load back: "
        f"{where}{more}." + (advice if castable else " They cannot be cast without loss."),
        {"dtypes": dtypes, "castable": castable},
    )


Found = tuple[list[str], list[tuple[str, str]]]  # (casts made, (where, dtype) refused)


def _legacy_safe(value: Any, cast: bool, found: Found, seen: dict[int, Any], where: str) -> Any:
    """The object with every tensor made plain for the legacy format: detached, no Parameter or
    subclass, conjugate and negative bits resolved, dtypes old torch cannot read cast (when
    asked) or refused. Containers are rebuilt with their type (an OrderedDict keeps the
    `_metadata` that load_state_dict reads); one tensor met twice stays one object, so storages
    and views stay shared."""
    import torch

    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            prepared = seen[id(value)]
            if prepared.dtype != value.dtype:  # the same tensor, cast once: said for each place
                found[0].append(f"{where or 'the root'}: {_dtype_name(value)} -> "
                                f"{_dtype_name(prepared)}")  # fmt: skip
            return prepared
        tensor = value.detach()
        if type(tensor) is not torch.Tensor:
            tensor = tensor.as_subclass(torch.Tensor)
        if tensor.is_conj():
            tensor = tensor.resolve_conj()
        if tensor.is_neg():
            tensor = tensor.resolve_neg()
        name = str(tensor.dtype).removeprefix("torch.")
        if name in NO_LEGACY or (name in CAST_TO and not cast):
            found[1].append((where or "the root", name))
        elif name in CAST_TO:
            wider = tensor.to(getattr(torch, CAST_TO[name]))
            if name.startswith("uint") and wider.numel() and bool((wider < 0).any()):
                # uint64 values of 2**63 and more have no int64: casting would change them.
                found[1].append((f"{where or 'the root'} (values >= 2**63)", name))
            else:
                tensor = wider
                found[0].append(f"{where or 'the root'}: {name} -> {CAST_TO[name]}")
        seen[id(value)] = tensor
        return tensor
    if isinstance(value, dict):
        # A shallow copy keeps the mapping's type and its attributes (the `_metadata` an
        # OrderedDict from state_dict() carries, a defaultdict's factory, a Counter).
        try:
            rebuilt = copy.copy(value)
            rebuilt.clear()
        except Exception:
            rebuilt = {}  # the comparison then reports the changed type
        for key, item in value.items():
            rebuilt[key] = _legacy_safe(item, cast, found, seen, f"{where}[{key!r}]")
        return rebuilt
    if isinstance(value, (list, tuple)):
        items = [
            _legacy_safe(item, cast, found, seen, f"{where}[{n}]") for n, item in enumerate(value)
        ]
        if type(value) in (list, tuple):
            return type(value)(items)
        return value  # a named tuple or other sequence the user allowed: kept as loaded
    return value


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _compare(original: Any, written: Any, where: str, cast: set[str]) -> str | None:
    """None when `written` holds the same structure and, tensor by tensor, the same dtype, shape
    and bytes as `original` (a cast tensor: the original's values in the new dtype)."""
    import torch

    label = where or "the root"
    if isinstance(original, torch.Tensor):
        if not isinstance(written, torch.Tensor):
            return f"{label} is no longer a tensor"
        expected = original.detach()
        if expected.is_conj():
            expected = expected.resolve_conj()
        if expected.is_neg():
            expected = expected.resolve_neg()
        if expected.dtype != written.dtype and any(c.startswith(f"{label}:") for c in cast):
            # A cast must be exact: back in the original dtype it is the original, bit for bit,
            # and an unsigned value never turns negative.
            unsigned = _dtype_name(expected).startswith("uint")
            if unsigned and written.numel() and bool((written < 0).any()):
                return f"{label}: the cast changed values"
            back = _tensor_difference(expected, written.to(expected.dtype), label)
            if back:
                return back
            expected = expected.to(written.dtype)
        return _tensor_difference(expected, written, label)
    if isinstance(original, dict):
        if type(original) is not type(written) or len(original) != len(written):
            return f"{label}: the mapping changed ({type(original).__name__} of {len(original)})"
        # Keys in order (pickle keeps it), each compared like a value: NaN and tensor keys too.
        for n, (a, b) in enumerate(zip(original, written, strict=True)):
            problem = _compare(a, b, f"{where}.keys()[{n}]", cast)
            if problem:
                return problem
        for (key, a), b in zip(original.items(), written.values(), strict=True):
            problem = _compare(a, b, f"{where}[{key!r}]", cast)
            if problem:
                return problem
        return None
    if isinstance(original, (set, frozenset)):
        if type(original) is not type(written) or len(original) != len(written):
            return f"{label}: the set changed"
        if any(isinstance(item, torch.Tensor) for item in original):
            return f"{label}: a set holding tensors cannot be compared item by item"
        return None if original == written else f"{label}: the set changed"
    if isinstance(original, (list, tuple)):
        if type(original) is not type(written) or len(original) != len(written):
            return f"{label}: the sequence differs"
        for n, (a, b) in enumerate(zip(original, written, strict=True)):
            problem = _compare(a, b, f"{where}[{n}]", cast)
            if problem:
                return problem
        return None
    if isinstance(original, float) and isinstance(written, float):
        same = original == written or (math.isnan(original) and math.isnan(written))
        return None if same else f"{label}: {original!r} became {written!r}"
    try:
        same = bool(original == written)
    except Exception:
        same = type(original) is type(written)
    return None if same else f"{label}: {original!r} became {written!r}"


def _tensor_difference(expected: Any, written: Any, label: str) -> str | None:
    import torch

    if expected.dtype != written.dtype:
        return f"{label}: dtype {expected.dtype} became {written.dtype}"
    if tuple(expected.shape) != tuple(written.shape):
        return f"{label}: shape {tuple(expected.shape)} became {tuple(written.shape)}"
    if expected.layout != written.layout or expected.is_quantized != written.is_quantized:
        return f"{label}: the layout changed"
    if expected.device.type == "meta" or written.device.type == "meta":
        return None if expected.device == written.device else f"{label}: the device changed"
    if expected.is_quantized:
        same = (
            expected.qscheme() == written.qscheme()
            and _same_bytes(expected.int_repr(), written.int_repr())
            and _same_quantization(expected, written)
        )
        return None if same else f"{label}: the quantized values differ"
    if expected.layout == torch.sparse_coo:
        a, b = expected.coalesce(), written.coalesce()
        same = _same_bytes(a.indices(), b.indices()) and _same_bytes(a.values(), b.values())
        return None if same else f"{label}: the sparse values differ"
    if expected.layout != torch.strided:
        same = _same_bytes(expected.to_dense(), written.to_dense())
        return None if same else f"{label}: the values differ"
    return None if _same_bytes(expected, written) else f"{label}: the values differ"


def _same_bytes(a: Any, b: Any) -> bool:
    """Bit for bit (so NaN payloads, -0.0 and every other value compare as written)."""
    import torch

    if a.numel() == 0:
        return True
    flat_a = a.reshape(-1).contiguous().view(torch.uint8)
    flat_b = b.reshape(-1).contiguous().view(torch.uint8)
    return bool(torch.equal(flat_a, flat_b))


def _same_quantization(a: Any, b: Any) -> bool:
    import torch

    if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return bool(a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point())
    return bool(
        torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
        and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
        and a.q_per_channel_axis() == b.q_per_channel_axis()
    )


def _tensor_list(value: Any, found: list[list[Any]]) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        found.append([str(value.dtype).removeprefix("torch."), list(value.shape)])
    elif isinstance(value, dict):
        for item in value.values():
            _tensor_list(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensor_list(item, found)
