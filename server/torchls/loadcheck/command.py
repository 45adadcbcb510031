"""`torchls check [PATHS]`: the editor's state-dict diagnostics in a terminal or in CI.

Prints `file:line:col: severity: message` (1-based, like compilers do) or `--format json`, and
exits 1 when any load would raise. Models are built by the same worker job as in the editor,
started with this interpreter or `--python`; the checkpoints are read without torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchls.checkpoint.isolated import read_isolated_async
from torchls.loadcheck.analysis import ERROR, WARNING, Environment
from torchls.loadcheck.checker import LoadChecker, SiteReport
from torchls.source.models import FileModels
from torchls.source.pins import torch_pin
from torchls.source.project import Project
from torchls.worker.client import WorkerClient, WorkerSettings

SCHEMA = "torchls.check/1"
EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
_SKIP_DIRS = {".git", ".hg", ".venv", "venv", "node_modules", "__pycache__", "site-packages"}
MAX_FILES = 5_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", default=["."], help="Python files or folders (default: .)"
    )
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--python", help="the interpreter that has torch (default: this one)")
    parser.add_argument(
        "--workspace", help="the folder your code imports from (default: the current one)"
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="check the checkpoints only: run none of your code (no model is built)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (120)")
    parser.add_argument("--memory-mb", type=int, default=8192, help="worker memory limit (8192)")


def run(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace or ".").resolve()
    try:
        files = _python_files([Path(p) for p in args.paths])
    except UsageError as exc:
        print(f"torchls check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = WorkerSettings(
        command=(args.python or sys.executable,),
        workspace=str(workspace),
        allow_user_code=not args.no_build,  # the user asked for these files by name
        timeout_seconds=args.timeout,
        memory_limit_mb=args.memory_mb,
    )
    results = asyncio.run(_check_all(settings, workspace, files, not args.no_build))
    errors = sum(1 for _, report in results for f in report.findings if f.severity == ERROR)
    if args.format == "json":
        print(json.dumps(_json(results, errors), indent=2))
    else:
        for path, report in results:
            for finding in report.findings:
                span = finding.span
                print(
                    f"{_shown(path)}:{span.start_line + 1}:{span.start_char + 1}: "
                    f"{finding.severity}: {finding.message}"
                )
            for title in _fixes(report):
                print(f"    fix: {title}")
        warnings = sum(1 for _, r in results for f in r.findings if f.severity == WARNING)
        sites = len(results)
        print(
            f"{len(files)} file{'s' if len(files) != 1 else ''}, {sites} "
            f"load{'s' if sites != 1 else ''} checked: {errors} error{'s' if errors != 1 else ''}"
            f", {warnings} warning{'s' if warnings != 1 else ''}",
            file=sys.stderr,
        )
    return EXIT_ERRORS if errors else EXIT_OK


class UsageError(Exception):
    pass


def _python_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
                files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
                if len(files) > MAX_FILES:
                    raise UsageError(f"more than {MAX_FILES} Python files under {path}")
        else:
            raise UsageError(f"{path}: no such file or folder")
    return files


async def _check_all(
    settings: WorkerSettings, workspace: Path, files: list[Path], build: bool
) -> list[tuple[Path, SiteReport]]:
    worker = WorkerClient(settings)
    environment = Environment()
    try:
        if build:
            probe = await worker.run("environment")
            torch = probe.value.get("libraries", {}).get("torch", {}) if probe.ok else {}
            environment = Environment(torch.get("version"), torch.get("cuda"))
        environment = replace(environment, old_torch_pin=torch_pin(settings.workspace or "."))
        checker = LoadChecker(
            read_isolated_async,
            lambda params: worker.run("state_dict", params),
            lambda: environment,
            lambda: build,
        )
        project = Project(str(workspace))
        results: list[tuple[Path, SiteReport]] = []
        for path in files:
            module = project.module_file(str(path.resolve()))
            if module is None:
                continue
            models = FileModels(project, module)
            for report in await checker.check(models, str(workspace)):
                report.notes[:0] = [fix.title for fix in checker.fixes(models, report)]
                results.append((path, report))
        return results
    finally:
        await worker.stop()


def _fixes(report: SiteReport) -> list[str]:
    return [note for note in report.notes if not note.startswith("building ")]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _json(results: list[tuple[Path, SiteReport]], errors: int) -> dict[str, Any]:
    diagnostics = []
    for path, report in results:
        for finding in report.findings:
            span = finding.span
            diagnostics.append(
                {
                    "file": _shown(path),
                    "line": span.start_line + 1,
                    "column": span.start_char + 1,
                    "end_line": span.end_line + 1,
                    "end_column": span.end_char + 1,
                    "severity": finding.severity,
                    "code": finding.code,
                    "message": finding.message,
                    "related": [r.message for r in finding.related],
                    "checkpoint": report.checkpoint_path,
                    "fixes": _fixes(report),
                }
            )
    return {
        "schema": SCHEMA,
        "loads": len(results),
        "errors": errors,
        "diagnostics": diagnostics,
    }
