"""`torchls convert safetensors|extract|cast|consolidate|weights-only PATH [-o OUT] [--force]`: the
conversions in a terminal. One line (or `--format json`, the object the LSP command
returns); exit 0 when the verified output is in place, 1 when refused or failed (nothing
written), 2 on usage or read errors. Ctrl+C stops the worker and removes the temporary files."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from pathlib import Path

from torchls.config import WorkerOptions
from torchls.convert.run import CAST_NAMES, Options, Outcome, convert
from torchls.downgrade.run import Environment

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Reasons that mean the input could not be read or named, not that the conversion was refused.
_READ_ERRORS = {"not-found", "not-a-checkpoint"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def size_argument(text: str) -> int:
    """`5GB` (transformers' meaning: 10**9), `500MiB`, `1000000`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (5GB, 500MB, 2GiB)")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise argparse.ArgumentTypeError("the shard size must be above 0")
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", help="a checkpoint file (or, for safetensors, a model folder)")
    common.add_argument("-o", "--output", help="where to write (default: beside the input)")
    common.add_argument("--force", action="store_true", help="replace an existing output")
    common.add_argument(
        "--key",
        metavar="PATH",
        help="the state dict to convert when the file holds several (as named in the refusal, "
        "e.g. \"['ema']\", or a top-level key: ema)",
    )
    common.add_argument("--python", help="the interpreter that has torch (default: this one)")
    common.add_argument("--memory-mb", type=int, default=0, help="worker memory limit (none)")
    common.add_argument(
        "--timeout",
        type=float,
        default=WorkerOptions().timeout_seconds,
        metavar="SECONDS",
        help="stop a worker that has not finished by then, plus a minute per GiB of input "
        "(default: %(default)g; 0: no limit)",
    )
    common.add_argument("--format", choices=["text", "json"], default="text")
    st = kinds.add_parser(
        "safetensors",
        parents=[common],
        help="to safetensors (shared tensors kept once; a model folder as a whole)",
    )
    st.add_argument(
        "--max-shard-size",
        type=size_argument,
        default=0,
        metavar="SIZE",
        help="write shards of at most SIZE (5GB) and model.safetensors.index.json (one file)",
    )
    ex = kinds.add_parser(
        "extract",
        parents=[common],
        help="the weights of a training checkpoint as a plain state dict (no optimizer)",
    )
    ex.add_argument("--strip-prefix", default="", metavar="P", help="remove P (module.) from keys")
    co = kinds.add_parser(
        "consolidate",
        parents=[common],
        help="shards (an *.index.json or its folder) into one file, or one file into shards",
    )
    co.add_argument(
        "--max-shard-size",
        type=size_argument,
        default=0,
        metavar="SIZE",
        help="cut one file into shards of at most SIZE (5GB) with an index",
    )
    kinds.add_parser(
        "weights-only",
        parents=[common],
        help="re-save so torch.load(weights_only=True) loads it: Namespace, numpy, paths and "
        "enums become plain data (listed); code is refused",
    )
    ca = kinds.add_parser(
        "cast", parents=[common], help="floating tensors of the state dict to another dtype"
    )
    ca.add_argument("--dtype", choices=sorted(CAST_NAMES), required=True)
    ca.add_argument(
        "--keep-norm-fp32", action="store_true", help="leave BatchNorm running stats as they are"
    )


def run(args: argparse.Namespace) -> int:
    options = Options(
        kind=args.kind,
        output=Path(args.output) if args.output else None,
        overwrite=args.force,
        key=args.key,
        max_shard_bytes=getattr(args, "max_shard_size", 0),
        strip_prefix=getattr(args, "strip_prefix", ""),
        dtype=getattr(args, "dtype", "bf16"),
        keep_norm_fp32=getattr(args, "keep_norm_fp32", False),
    )
    environment = Environment(
        command=(args.python or sys.executable,),
        workspace=None,
        trusted=False,  # a conversion never imports what the file names
        memory_limit_mb=args.memory_mb,
        timeout_seconds=max(0.0, args.timeout),
    )
    progress = None
    if args.format == "text" and sys.stderr.isatty():

        def progress(message: str, percentage: float | None) -> None:
            done = "" if percentage is None else f"{percentage:3.0f}% "
            print(f"\r\033[K{done}{message}", end="", file=sys.stderr, flush=True)

    async def main() -> Outcome:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGHUP):
            if task is not None:
                loop.add_signal_handler(number, task.cancel)
        return await convert(Path(args.path), options, environment, progress)

    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ntorchls convert: stopped; nothing was written", file=sys.stderr)
        return 130
    if progress is not None:
        print("\r\033[K", end="", file=sys.stderr)
    _print(outcome, args.format)
    if outcome.ok:
        return EXIT_OK
    return EXIT_USAGE if outcome.reason in _READ_ERRORS else EXIT_FAILED


def _print(outcome: Outcome, form: str) -> None:
    if form == "json":
        print(json.dumps(outcome.as_json(), indent=2))
        return
    if outcome.ok:
        print(outcome.message)
        for dropped, kept in outcome.dropped.items():
            print(f"  shared: {dropped} -> {kept} (stored once; listed in __metadata__)")
        for entry in outcome.removed:
            print(f"  left out: {entry}")
        for entry in outcome.replaced:
            print(f"  replaced {entry}")
        return
    hint = {
        "exists": " (--force replaces it)",
        "several-state-dicts": " with --key",
        "timeout": " (--timeout SECONDS changes the limit; 0: none)",
    }.get(outcome.reason, "")
    print(f"torchls convert: {outcome.message}{hint}", file=sys.stderr)
