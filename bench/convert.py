"""Converting a 1 GiB checkpoint: `torchls convert safetensors` and `torchls convert cast`
against the plain scripts a user would write.

    python bench/convert.py [--size-mb 1024] [--runs 3] [--keep DIR]

The plain scripts:

    sd = torch.load(path)["state_dict"]; save_file(sd, out, {"format": "pt"})
    obj = torch.load(path); obj["state_dict"] = {k: v.to(torch.bfloat16) ...}; torch.save(obj, out)

torchls does more: it reads the input with its own reader first (globals, state dicts), loads
with weights_only=True (memory-mapped), writes a temporary file (safetensors tensor by tensor),
reads it back and compares every tensor bit for bit, reads it again with its reader, then
renames it into place. The checkpoint, the wrapper that measures the peak RSS of the largest
process in each command's tree, and the table are bench/downgrade.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from downgrade import MAKE, ROOT, _measure

PLAIN = {
    "safetensors": """
import sys, torch
from safetensors.torch import save_file
state = torch.load(sys.argv[1])["state_dict"]
save_file(state, sys.argv[2], {"format": "pt"})
""",
    "cast": """
import sys, torch
obj = torch.load(sys.argv[1])
obj["state_dict"] = {k: v.to(torch.bfloat16) for k, v in obj["state_dict"].items()}
torch.save(obj, sys.argv[2])
""",
}
OURS = {
    "safetensors": ("big.safetensors", ["safetensors"]),
    "cast": ("big.bf16.pt", ["cast", "--dtype", "bf16"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="use this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="torchls-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    figures: dict[str, dict[str, float]] = {}
    try:
        source = folder / "big.pt"
        if not source.exists():
            subprocess.run(
                [sys.executable, "-c", MAKE, str(args.size_mb), str(source)], check=True, env=env
            )
        size_mb = source.stat().st_size / 2**20
        for kind, script in PLAIN.items():
            name, words = OURS[kind]
            plain, ours = [], []
            for run in range(args.runs):
                for leftover in (folder / "plain.out", folder / name):
                    leftover.unlink(missing_ok=True)
                plain.append(
                    _measure([sys.executable, "-c", script, str(source), str(folder / "plain.out")])
                )
                command = [sys.executable, "-m", "torchls", "convert", words[0], str(source)]
                ours.append(_measure([*command, *words[1:], "--force"]))
                print(
                    f"{kind} run {run + 1}: script {plain[-1]['seconds']:.2f} s "
                    f"{plain[-1]['peak_mb']:.0f} MB | torchls {ours[-1]['seconds']:.2f} s "
                    f"{ours[-1]['peak_mb']:.0f} MB",
                    file=sys.stderr,
                )
            row = {
                "script_seconds": statistics.median(r["seconds"] for r in plain),
                "script_peak_mb": statistics.median(r["peak_mb"] for r in plain),
                "torchls_seconds": statistics.median(r["seconds"] for r in ours),
                "torchls_peak_mb": statistics.median(r["peak_mb"] for r in ours),
            }
            row["time_ratio"] = row["torchls_seconds"] / row["script_seconds"]
            row["memory_ratio"] = row["torchls_peak_mb"] / row["script_peak_mb"]
            figures[kind] = row
        print(f"\nconvert a {size_mb:.0f} MiB checkpoint (median of {args.runs})")
        print(f"{'':26}{'wall time':>10}{'peak RSS':>12}")
        for kind, row in figures.items():
            print(f"{kind + ': plain script':26}{row['script_seconds']:8.2f} s"
                  f"{row['script_peak_mb']:9.0f} MB")  # fmt: skip
            print(f"{kind + ': torchls':26}{row['torchls_seconds']:8.2f} s"
                  f"{row['torchls_peak_mb']:9.0f} MB")  # fmt: skip
            print(f"{kind + ': torchls / script':26}{row['time_ratio']:8.2f} x"
                  f"{row['memory_ratio']:9.2f} x")  # fmt: skip
        print(json.dumps({"checkpoint_mb": round(size_mb, 1), "runs": args.runs, **figures}))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
