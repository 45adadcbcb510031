"""`torchls downgrade PATH [-o OUT] [--force]`: the Downgrade command in a terminal.

Prints one line (or `--format json`, the same object the LSP command returns) and exits 0 when
the verified copy is in place, 1 when it was refused or failed (nothing written), 2 on usage
errors. Ctrl+C stops the worker and removes the temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from torchls.config import WorkerOptions
from torchls.downgrade.run import Environment, Options, Outcome, downgrade
from torchls.downgrade.targets import DEFAULT_SUFFIX

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a checkpoint file or a Hugging Face model folder")
    parser.add_argument(
        "-o", "--output", help="where to write (default: <name>.legacy<ext> or <folder>-legacy)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--suffix", default=DEFAULT_SUFFIX, help="the word in the default output name (legacy)"
    )
    parser.add_argument(
        "--cast",
        action="store_true",
        help="cast float8 / uint16-64 / complex32 tensors to dtypes old torch reads (exact)",
    )
    parser.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="let torch.load import this global (runs code from the file: trusted files only)",
    )
    parser.add_argument("--python", help="the interpreter that has torch (default: this one)")
    parser.add_argument("--memory-mb", type=int, default=0, help="worker memory limit (none)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=WorkerOptions().timeout_seconds,
        metavar="SECONDS",
        help="stop a worker that has not finished by then, plus a minute per GiB of input "
        "(default: %(default)g, the editor's; 0: no limit)",
    )
    parser.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    options = Options(
        output=Path(args.output) if args.output else None,
        suffix=args.suffix,
        overwrite=args.force,
        cast=args.cast,
        allow_globals=tuple(args.allow_global),
    )
    environment = Environment(
        command=(args.python or sys.executable,),
        workspace=None,
        trusted=True,  # the user named the file and the globals on their own command line
        memory_limit_mb=args.memory_mb,
        timeout_seconds=max(0.0, args.timeout),
    )
    progress = None
    if args.format == "text" and sys.stderr.isatty():

        def progress(message: str, percentage: float | None) -> None:
            done = "" if percentage is None else f"{percentage:3.0f}% "
            print(f"\r\033[K{done}{message}", end="", file=sys.stderr, flush=True)

    async def main() -> Outcome:
        # SIGTERM and SIGHUP (a closed terminal, `kill`) stop it like Ctrl+C: the worker is
        # killed and the temporary file removed, instead of the process dying half-way.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGHUP):
            if task is not None:
                loop.add_signal_handler(number, task.cancel)
        return await downgrade(Path(args.path), options, environment, progress)

    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ntorchls downgrade: stopped; nothing was written", file=sys.stderr)
        return 130
    if progress is not None:
        print("\r\033[K", end="", file=sys.stderr)
    _print(outcome, args.format)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _print(outcome: Outcome, form: str) -> None:
    if form == "json":
        print(json.dumps(outcome.as_json(), indent=2))
        return
    if outcome.ok:
        print(outcome.message)
        for line in outcome.cast:
            print(f"  cast {line}")
        for name in outcome.skipped:
            print(f"  not copied: {name}")
    else:
        castable = "Ask for a cast" in outcome.message
        hint = {
            "exists": " (--force replaces it)",
            "unsupported-dtypes": " (--cast does it)" if castable else "",
            "refused-globals": " (--allow-global MODULE.NAME each)" if outcome.globals else "",
            "timeout": " (--timeout SECONDS changes the limit; 0: none)",
        }.get(outcome.reason, "")
        print(f"torchls downgrade: {outcome.message}{hint}", file=sys.stderr)
