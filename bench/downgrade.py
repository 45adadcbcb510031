"""Downgrading a 1 GiB checkpoint: `torchls downgrade` against the plain two-line script.

    python bench/downgrade.py [--size-mb 1024] [--runs 3] [--keep DIR]

The plain script is what the seed notes do, and all a user would otherwise run:

    obj = torch.load(path)
    torch.save(obj, out, _use_new_zipfile_serialization=False)

`torchls downgrade` does more: it reads the input with torchls's reader first (globals, dtypes),
loads with weights_only=True (memory-mapped), writes a temporary file, reads it back with
torch.load and compares every tensor with a fresh read of the input, reads it again with
torchls's reader, then renames it into place. Both write the same bytes of tensor data.

Each command runs under its own wrapper process, which reports the peak resident set size of
the largest process in the tree (RUSAGE_CHILDREN: the CLI, the reader and the worker; for the
script, the one process). Pages of a memory-mapped file count in RSS once touched, although the
kernel can drop them at will: the figure is an upper bound on what the run needs.

Prints a table (median wall time and peak RSS of N runs, and their ratios) and one JSON line.
"""

from __future__ import annotations

# No torch or torchls here (bench/inspect.py would shadow the standard library's `inspect` for
# them): the checkpoint writer, the script and the CLI run in subprocesses.
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAKE = """
import sys, torch
size_mb, path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
layers = max(1, size_mb // 16)  # 16 MiB tensors, like the layers of a mid-size model
state = {f"layers.{i}.weight": torch.randn(2048, 2048) for i in range(layers)}
state.update({f"layers.{i}.bias": torch.randn(2048) for i in range(layers)})
torch.save({"epoch": 3, "state_dict": state}, path)
"""

PLAIN = """
import sys, torch
obj = torch.load(sys.argv[1])
torch.save(obj, sys.argv[2], _use_new_zipfile_serialization=False)
"""

MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - started
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024, "code": done.returncode,
                  "stderr": done.stderr.decode()[-500:]}))
"""


def _measure(command: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    if result["code"] != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result['stderr']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="use this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="torchls-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    try:
        source = folder / "big.pt"
        if not source.exists():
            subprocess.run(
                [sys.executable, "-c", MAKE, str(args.size_mb), str(source)], check=True, env=env
            )
        size_mb = source.stat().st_size / 2**20
        plain, ours = [], []
        for run in range(args.runs):
            for leftover in (folder / "plain.pt", folder / "big.legacy.pt"):
                leftover.unlink(missing_ok=True)
            plain.append(
                _measure([sys.executable, "-c", PLAIN, str(source), str(folder / "plain.pt")])
            )
            ours.append(
                _measure([sys.executable, "-m", "torchls", "downgrade", str(source), "--force"])
            )
            print(
                f"run {run + 1}: script {plain[-1]['seconds']:.2f} s {plain[-1]['peak_mb']:.0f} MB"
                f" | torchls {ours[-1]['seconds']:.2f} s {ours[-1]['peak_mb']:.0f} MB",
                file=sys.stderr,
            )
        same = (folder / "plain.pt").stat().st_size, (folder / "big.legacy.pt").stat().st_size
        figures = {
            "checkpoint_mb": round(size_mb, 1),
            "runs": args.runs,
            "script_seconds": statistics.median(r["seconds"] for r in plain),
            "script_peak_mb": statistics.median(r["peak_mb"] for r in plain),
            "torchls_seconds": statistics.median(r["seconds"] for r in ours),
            "torchls_peak_mb": statistics.median(r["peak_mb"] for r in ours),
            "output_bytes_script_vs_torchls": same,
        }
        figures["time_ratio"] = figures["torchls_seconds"] / figures["script_seconds"]
        figures["memory_ratio"] = figures["torchls_peak_mb"] / figures["script_peak_mb"]
        rows = [
            ("plain two-line script", figures["script_seconds"], figures["script_peak_mb"], "MB"),
            ("torchls downgrade", figures["torchls_seconds"], figures["torchls_peak_mb"], "MB"),
            ("torchls / script", figures["time_ratio"], figures["memory_ratio"], "x"),
        ]
        print(f"\ndowngrade a {size_mb:.0f} MiB checkpoint (median of {args.runs})")
        print(f"{'':24}{'wall time':>10}{'peak RSS':>12}")
        for name, seconds, memory, unit in rows:
            time_unit = "x" if unit == "x" else "s"
            print(f"{name:24}{seconds:8.2f} {time_unit}{memory:9.2f} {unit}")
        print(json.dumps(figures))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
