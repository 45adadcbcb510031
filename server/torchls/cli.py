"""The `torchls` command: serve | check | profile | inspect | diff | downgrade | convert |
doctor."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from torchls import __version__


def _parse_tcp(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:2087, not {value!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchls",
        description="PyTorch that tells the truth about itself: a language server and its CLI.",
    )
    parser.add_argument("--version", action="version", version=f"torchls {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the language server")
    transport = serve.add_mutually_exclusive_group()
    transport.add_argument(
        "--stdio", action="store_true", help="talk LSP over stdin/stdout (default)"
    )
    transport.add_argument(
        "--tcp", type=_parse_tcp, metavar="HOST:PORT", help="listen on a TCP port, for debugging"
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    doctor = commands.add_parser(
        "doctor", help="start the worker and report the Python, torch and libraries it finds"
    )
    doctor.add_argument("--python", help="the interpreter to check (default: this one)")
    doctor.add_argument("--json", action="store_true", help="print JSON")

    inspect = commands.add_parser(
        "inspect",
        help="keys, shapes and dtypes of a checkpoint, read without torch and without running it",
        description="Read a checkpoint (torch zip or legacy .pt/.pth/.bin/.ckpt, safetensors, "
        "a sharded *.index.json, or a Hugging Face model folder) without torch and without "
        "running any of its code. Exit codes: 0 read, 1 not a readable checkpoint, 2 usage.",
    )
    inspect.add_argument("path", help="a checkpoint file or a model folder")
    inspect.add_argument("--json", action="store_true", help="print the torchls.inspect/1 JSON")
    inspect.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (60)"
    )
    inspect.add_argument(
        "--memory-mb", type=int, default=1024, help="memory limit of the reader process (1024)"
    )

    diff = commands.add_parser(
        "diff",
        help="what differs between two checkpoints: tensors added, removed, renamed, reshaped",
        description="Compare two checkpoints (files or model folders), read without torch and "
        "without running them: tensors added, removed, renamed by a wrapper prefix (module., "
        "_orig_mod., model.), shape and dtype changes, changed metadata; with --values, each "
        "tensor's max abs difference and relative norm. Exit codes: 0 the same tensors, "
        "1 they differ, 2 an error.",
    )
    from torchls.checkpoint.diff import add_arguments as add_diff_arguments

    add_diff_arguments(diff)

    profile = commands.add_parser(
        "profile",
        help="parameters, MACs and FLOPs, memory and the heaviest layers of a model",
        description="Build a model on the meta device in a worker process and count its "
        "parameters and the MACs/FLOPs of one forward pass (1 MAC = 2 FLOPs), with thop's "
        "figure beside it where thop is installed, and what training costs (activations "
        "saved for backward, the largest batch that fits, backward FLOPs). With a named "
        "dimension in --input and --sweep, the cost at each size and its exact formula. Runs "
        "the definitions of FILE (not its script statements). Exit codes: 0 counted, 1 the "
        "model could not be profiled, 2 usage.",
    )
    from torchls.cost.command import add_arguments

    add_arguments(profile)

    check = commands.add_parser(
        "check",
        help="find load_state_dict calls that would fail, and say why, before running them",
        description="Find the load_state_dict / torch.load / safetensors loads in Python files, "
        "compare each checkpoint (read without torch) with the model (built on the meta device "
        "in a worker process), and print file:line:col: severity: message. Exit codes: 0 no "
        "load would raise, 1 some would, 2 usage.",
    )
    from torchls.loadcheck.command import add_arguments as add_check_arguments

    add_check_arguments(check)

    downgrade = commands.add_parser(
        "downgrade",
        help="re-save a checkpoint in torch's legacy format (for torch < 1.6), verified",
        description="Load a checkpoint with torch.load(weights_only=True) (or a safetensors file, "
        "or a Hugging Face model folder), save it with _use_new_zipfile_serialization=False next "
        "to the original, read it back and compare every tensor, then move it into place. The "
        "original is never changed. Exit codes: 0 written and verified, 1 refused or failed "
        "(nothing written), 2 usage.",
    )
    from torchls.downgrade.command import add_arguments as add_downgrade_arguments

    add_downgrade_arguments(downgrade)

    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint (safetensors, extract, cast, consolidate, weights-only), "
        "verified, beside the original",
        description="Convert a checkpoint without running its code: to safetensors, the weights "
        "of a training checkpoint, another dtype, shards merged or cut, or a file "
        "torch.load(weights_only=True) refuses made plain. Written beside the original, read "
        "back and compared tensor by tensor. Exit codes: 0 written and verified, 1 refused or "
        "failed (nothing written), 2 usage or read error.",
    )
    from torchls.convert.command import add_arguments as add_convert_arguments

    add_convert_arguments(convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "diff":
        from torchls.checkpoint.diff import run as run_diff

        return run_diff(args)
    if args.command == "profile":
        from torchls.cost.command import run as run_profile

        return run_profile(args)
    if args.command == "check":
        from torchls.loadcheck.command import run as run_check

        return run_check(args)
    if args.command == "downgrade":
        from torchls.downgrade.command import run as run_downgrade

        return run_downgrade(args)
    if args.command == "convert":
        from torchls.convert.command import run as run_convert

        return run_convert(args)
    if args.command == "doctor":
        from torchls.doctor import run_doctor

        return run_doctor(python=args.python, as_json=args.json)
    raise AssertionError(f"unhandled command {args.command}")  # argparse allows no other


def _inspect(args: argparse.Namespace) -> int:
    from torchls.checkpoint.isolated import print_isolated

    mode = "json" if args.json else "text"
    return print_isolated(args.path, mode, timeout=args.timeout, memory_mb=args.memory_mb)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # pygls logs every message it sends at INFO: the editor's Output channel would show
        # little else. `--log-level DEBUG` keeps them (with torchls.trace.server for both ways).
        logging.getLogger("pygls").setLevel(logging.WARNING)
    from torchls.lsp.server import create_server

    server = create_server()
    if args.tcp is not None:
        host, port = args.tcp
        server.start_tcp(host, port)
    else:
        server.start_io()
    return 0
