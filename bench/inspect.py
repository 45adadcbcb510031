"""`torchls inspect` against loading the checkpoint with torch, each as a whole process.

    python bench/inspect.py [--dir /tmp/torchls-bench] [--runs 3] [--quick]

Writes three checkpoints (once; they are reused), then times, as separate processes, medians of
--runs after one warm-up run (the files are in the page cache for every tool alike):
  torchls       torchls inspect PATH --json > /dev/null
  torch.load    python -c "import torch; torch.load(PATH, weights_only=True)"
  torch mmap    python -c "import torch; torch.load(PATH, weights_only=True, mmap=True,
                                                    map_location='meta')"
Peak memory is the largest resident set of the process and the processes it waited for (for
torchls, that includes its isolated reader process), from wait4().

Files: 1,024 float32 tensors in 4 GiB; the same 1,024 tensors in 4 MiB (same count, 1/1024 of
the bytes: the cost follows the tensor count); 50,000 small tensors. --quick uses 256 MiB
instead of 4 GiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(path: Path, count: int, elements: int) -> Path:
    if path.exists():
        return path
    code = (
        "import sys, torch\n"
        "count, elements = int(sys.argv[2]), int(sys.argv[3])\n"
        "state = {f'layer{i}.weight': torch.empty(elements) for i in range(count)}\n"
        "torch.save(state, sys.argv[1] + '.tmp')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(count), str(elements)], check=True)
    Path(str(path) + ".tmp").rename(path)
    return path


def run(command: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise RuntimeError(f"{command} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


def measure(command: list[str], runs: int) -> tuple[float, float]:
    run(command)  # warm-up
    results = [run(command) for _ in range(runs)]
    return statistics.median(t for t, _ in results), max(m for _, m in results)


def commands(path: Path) -> dict[str, list[str]]:
    torchls = str(Path(sys.executable).with_name("torchls"))
    load = "import sys, torch; torch.load(sys.argv[1], weights_only=True"
    return {
        "torchls": [torchls, "inspect", str(path), "--json"],
        "torch.load": [sys.executable, "-c", load + ")", str(path)],
        "torch mmap": [sys.executable, "-c", load + ", mmap=True, map_location='meta')", str(path)],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/torchls-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 4 GiB")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    big_elements = (256 if args.quick else 4096) * 1024 * 1024 // 4 // 1024
    label = "256 MiB" if args.quick else "4 GiB"
    files = {
        f"1,024 tensors, {label}": make(
            args.dir / f"big-{label.replace(' ', '')}.pt", 1024, big_elements
        ),
        "1,024 tensors, 4 MiB": make(args.dir / "small-4MiB.pt", 1024, 1024),
        "50,000 small tensors": make(args.dir / "many-50k.pt", 50_000, 16),
    }
    print(f"{'file':<26} {'tool':<11} {'median s':>9} {'peak MB':>8} {'torchls is':>12}")
    for name, path in files.items():
        results = {tool: measure(cmd, args.runs) for tool, cmd in commands(path).items()}
        ours = results["torchls"][0]
        for tool, (seconds, peak) in results.items():
            ratio = "" if tool == "torchls" else f"{seconds / ours:6.1f}x faster"
            print(f"{name:<26} {tool:<11} {seconds:9.3f} {peak:8.1f} {ratio:>12}")
        size = path.stat().st_size
        print(f"{'':<26} ({size / 2**20:,.1f} MiB on disk)")


if __name__ == "__main__":
    main()
