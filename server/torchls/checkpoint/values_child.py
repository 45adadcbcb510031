"""`python -I values_child.py`: the numeric part of `torchls diff --values`, run with the
interpreter that has torch (never in the language server's process).

Reads {"pairs": [{"key", "a": location, "b": location}]} on stdin (locations from
torchls.checkpoint.locate: the reader found them without running the files), maps each file
read-only, views each tensor's bytes in place and compares them a chunk at a time, so memory
stays bounded by the chunk, not the checkpoint. Prints {"values": [...]}.
"""

from __future__ import annotations

import json
import math
import mmap
import sys
import warnings
from typing import Any

CHUNK = 1 << 20  # elements compared at a time (8 MB per float64 copy)


def _storage_view(location: dict[str, Any], maps: dict[str, mmap.mmap], torch: Any) -> Any:
    mapped = maps.get(location["file"])
    if mapped is None:
        with open(location["file"], "rb") as handle:
            # Copy-on-write: torch wants a writable buffer; nothing is ever written back.
            mapped = maps[location["file"]] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    dtype = getattr(torch, location["dtype"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = location["storage_bytes"] // itemsize
    shape = location["shape"]
    if count == 0 or math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    storage = torch.frombuffer(mapped, dtype=dtype, count=count, offset=location["offset"])
    stride = location["stride"]
    if stride is None:
        stride, step = [], 1
        for size in reversed(shape):
            stride.insert(0, step)
            step *= size
    return storage.as_strided(shape, stride, location["storage_offset"])


def _release(maps: dict[str, mmap.mmap], location: dict[str, Any]) -> None:
    """Drop the pages just read from this process's memory: a checkpoint larger than the
    machine's memory is compared one tensor's pages at a time."""
    mapped = maps.get(location["file"])
    if mapped is None or not hasattr(mapped, "madvise"):
        return
    start = location["offset"] - location["offset"] % mmap.PAGESIZE
    end = min(len(mapped), location["offset"] + location["storage_bytes"])
    if end > start:
        mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


def _compare(a: Any, b: Any, torch: Any) -> dict[str, Any]:
    if a.is_complex() or b.is_complex():
        return {"error": "complex tensors are not compared"}
    if a.dtype == b.dtype and bool(torch.equal(a, b)):
        # The common case (a frozen backbone, a copy): one pass without converting anything.
        return {"max_abs_diff": 0.0, "rel_norm": 0.0}
    flat_a = a.reshape(-1)  # a view when contiguous, which state dicts nearly always are
    flat_b = b.reshape(-1)
    max_abs = 0.0
    diff_sq = 0.0
    ref_sq = 0.0
    nan = False
    for start in range(0, flat_a.numel(), CHUNK):
        x = flat_a[start : start + CHUNK].to(torch.float64)
        y = flat_b[start : start + CHUNK].to(torch.float64)
        d = x - y
        if bool(torch.isnan(d).any()):
            nan = True
            d = torch.nan_to_num(d, nan=0.0)
        max_abs = max(max_abs, float(d.abs().max()))
        diff_sq += float((d * d).sum())
        ref_sq += float((x * x).sum())
    relative: float | None
    if ref_sq > 0:
        relative = math.sqrt(diff_sq) / math.sqrt(ref_sq)
    else:
        relative = 0.0 if diff_sq == 0 else None  # None: A is all zeros and B is not
    result: dict[str, Any] = {"max_abs_diff": max_abs, "rel_norm": relative}
    if nan:
        result["note"] = "NaN values (left out of the figures)"
    if not math.isfinite(max_abs):
        result["max_abs_diff"] = None
        result["note"] = "infinite values"
    return result


def main() -> int:
    warnings.simplefilter("ignore")
    import torch

    request = json.load(sys.stdin)
    maps: dict[str, mmap.mmap] = {}
    values = []
    for pair in request["pairs"]:
        entry: dict[str, Any] = {"key": pair["key"]}
        if "b_key" in pair:
            entry["b_key"] = pair["b_key"]
        try:
            if "big" in (pair["a"]["byteorder"], pair["b"]["byteorder"]):
                entry["error"] = "big-endian tensors are not compared"
            else:
                a = _storage_view(pair["a"], maps, torch)
                b = _storage_view(pair["b"], maps, torch)
                entry.update(_compare(a, b, torch))
                del a, b
                _release(maps, pair["a"])
                _release(maps, pair["b"])
        except Exception as exc:  # one tensor's failure is its row's, never the whole diff's
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        values.append(entry)
    sys.stdout.write(json.dumps({"values": values}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
