"""`torchls check [PATHS]`: the editor's diagnostics in a terminal or in CI.

The same engine as the editor: every state-dict load (checkpoints read without torch, models
built by the worker, started with this interpreter or `--python`) and the training-loop and
k-fold lint. Prints `file:line:col: severity: message [code]` (1-based, like compilers do),
`--format json`, `sarif` (code-scanning tools) or `github` (workflow annotations). A load
torchls finds and cannot check is listed with its reason, never counted as fine; `--strict`
makes those fail too. `--diff` shows the safe fixes as a unified diff, `--fix` applies them
(the preferred fix of a load, never `weights_only=False`; with `--unsafe-fixes` also the lint's
fixes, which change what the training does). Exit status: 1 when any load would raise (or, with
`--strict`, is not checked), 2 for a usage error, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchls import __version__
from torchls.checkpoint.isolated import read_isolated_async
from torchls.kfold.lint import LintFinding
from torchls.kfold.lint import lint as kfold_lint
from torchls.loadcheck.analysis import ERROR, INFORMATION, WARNING, Environment, Finding
from torchls.loadcheck.checker import LoadChecker, SiteReport
from torchls.loadcheck.fixes import Edit, Fix, apply_edits
from torchls.source.models import FileModels
from torchls.source.pins import torch_pin
from torchls.source.project import MAX_FILE_BYTES, Project
from torchls.worker.client import WorkerClient, WorkerSettings

SCHEMA = "torchls.check/1"
EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
_SKIP_DIRS = {".git", ".hg", ".venv", "venv", "node_modules", "__pycache__", "site-packages"}
MAX_FILES = 5_000
FORMATS = ("text", "json", "sarif", "github")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="*", default=["."], help="Python files or folders (default: .)"
    )
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--python", help="the interpreter that has torch (default: this one)")
    parser.add_argument(
        "--workspace", help="the folder your code imports from (default: the current one)"
    )
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="check the checkpoints only: run none of your code (no model is built)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 1) when a load cannot be checked"
    )
    parser.add_argument(
        "--diff", action="store_true", help="print the fixes --fix would make, change nothing"
    )
    parser.add_argument("--fix", action="store_true", help="apply the safe fixes to the files")
    parser.add_argument(
        "--unsafe-fixes",
        action="store_true",
        help="with --fix/--diff, also the lint's fixes (they change what the training does)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (120)")
    parser.add_argument("--memory-mb", type=int, default=8192, help="worker memory limit (8192)")


@dataclass
class FileResult:
    """What `torchls check` found in one file."""

    path: Path
    text: str = ""
    reports: list[SiteReport] = field(default_factory=list)
    fixes: list[list[Fix]] = field(default_factory=list)  # per report
    lint: list[LintFinding] = field(default_factory=list)
    skipped: str | None = None  # why the file was not checked at all

    def diagnostics(self) -> list[tuple[Finding, list[str]]]:
        """Every finding, in line order, with the titles of its fixes."""
        found: list[tuple[Finding, list[str]]] = []
        for report, fixes in zip(self.reports, self.fixes, strict=True):
            titles = [fix.title for fix in fixes]
            found += [(finding, titles) for finding in report.findings]
        found += [(item.finding, [title for title, _ in item.fixes]) for item in self.lint]
        found.sort(key=lambda entry: (entry[0].span.start_line, entry[0].span.start_char))
        return found


def run(args: argparse.Namespace) -> int:
    workspace = Path(args.workspace or ".").resolve()
    try:
        files = _python_files([Path(p) for p in args.paths])
    except UsageError as exc:
        print(f"torchls check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.fix and args.diff:
        print("torchls check: --fix and --diff do not go together", file=sys.stderr)
        return EXIT_USAGE
    settings = WorkerSettings(
        command=(args.python or sys.executable,),
        workspace=str(workspace),
        allow_user_code=not args.no_build,  # the user asked for these files by name
        timeout_seconds=args.timeout,
        memory_limit_mb=args.memory_mb,
    )
    results = asyncio.run(_check_all(settings, workspace, files, not args.no_build))
    fixed = 0
    if args.diff or args.fix:
        changes = {r.path: _fixed_text(r, args.unsafe_fixes) for r in results}
        changes = {path: change for path, change in changes.items() if change[1]}
        if args.diff:
            for path, (text, _count) in changes.items():
                old = next(r.text for r in results if r.path == path)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"a/{_shown(path)}",
                        f"b/{_shown(path)}",
                    )
                )
            total = sum(count for _, count in changes.values())
            print(f"{total} fix{'es' if total != 1 else ''} would be applied", file=sys.stderr)
            return EXIT_OK
        for path, (text, count) in changes.items():
            _write(path, text)
            fixed += count
        if changes:  # what is left, as the files now are
            again = asyncio.run(_check_all(settings, workspace, list(changes), not args.no_build))
            kept = {r.path: r for r in again}
            results = [kept.get(r.path, r) for r in results]
    summary = _summary(results, len(files))
    if args.format == "json":
        print(json.dumps(_json(results, summary), indent=2))
    elif args.format == "sarif":
        print(json.dumps(_sarif(results), indent=2))
    elif args.format == "github":
        for line in _github(results):
            print(line)
    else:
        for result in results:
            if result.skipped:
                print(f"{_shown(result.path)}: not checked: {result.skipped}")
            for finding, titles in result.diagnostics():
                span = finding.span
                print(
                    f"{_shown(result.path)}:{span.start_line + 1}:{span.start_char + 1}: "
                    f"{finding.severity}: {finding.message} [{finding.code}]"
                )
                for title in titles:
                    print(f"    fix: {title}")
    if fixed:
        print(f"fixed {fixed} problem{'s' if fixed != 1 else ''}", file=sys.stderr)
    print(_summary_line(summary), file=sys.stderr)
    failing = summary["errors"] or (args.strict and (summary["not_checked"] or summary["skipped"]))
    return EXIT_ERRORS if failing else EXIT_OK


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
) -> list[FileResult]:
    worker = WorkerClient(settings)
    environment = Environment()
    try:
        # The worker's environment probe imports torch (seconds): it runs while the files
        # are read, and is waited for only before the first load is checked.
        probe = asyncio.ensure_future(worker.run("environment")) if build else None
        project = Project(str(workspace))
        results: list[FileResult] = []
        loading: list[tuple[FileResult, FileModels]] = []
        for path in files:
            await asyncio.sleep(0)  # let the worker start meanwhile
            result = FileResult(path)
            results.append(result)
            module = project.module_file(str(path.resolve()))
            if module is None:
                result.skipped = _unreadable(path)
                continue
            result.text = module.text
            models = FileModels(project, module)
            if models.tree is None:
                result.skipped = _syntax_error(module.text, str(path))
                continue
            try:
                result.lint = kfold_lint(models)
            except (RecursionError, ValueError):
                result.lint = []
            # Every loader torchls checks is a name with "load" in it (load_state_dict,
            # torch.load, from_pretrained's import, load_from_checkpoint, load_model):
            # a file without the word has no load site.
            if "load" in module.text or "from_pretrained" in module.text:
                loading.append((result, models))
        if probe is not None and loading:
            done = await probe
            torch = done.value.get("libraries", {}).get("torch", {}) if done.ok else {}
            environment = Environment(torch.get("version"), torch.get("cuda"))
        environment = replace(environment, old_torch_pin=torch_pin(settings.workspace or "."))
        checker = LoadChecker(
            read_isolated_async,
            lambda params: worker.run("state_dict", params),
            lambda: environment,
            lambda: build,
        )
        for result, models in loading:
            result.reports = await checker.check(models, str(workspace))
            result.fixes = [checker.fixes(models, report) for report in result.reports]
        return results
    finally:
        await worker.stop()


def _unreadable(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if size > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // 1024 // 1024
        return f"{size / 1024 / 1024:.1f} MB, over the {limit} MB torchls reads"
    return "cannot read it"


def _syntax_error(text: str, path: str) -> str:
    try:
        compile(text, path, "exec", dont_inherit=True, flags=0x400)  # PyCF_ONLY_AST
    except SyntaxError as exc:
        return f"a syntax error on line {exc.lineno}: {exc.msg}"
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"it cannot be parsed ({type(exc).__name__})"
    return "it cannot be parsed"


def _fixed_text(result: FileResult, unsafe: bool) -> tuple[str, int]:
    """The file with its fixes applied, and how many: per load its preferred fix if safe; the
    lint's with `unsafe`. Fixes that overlap one already taken wait for the next run."""
    chosen: list[list[Edit]] = []
    for fixes in result.fixes:
        preferred = [fix for fix in fixes if fix.preferred and fix.safe]
        if preferred:
            chosen.append([preferred[0].edit])
    if unsafe:
        chosen += [edits for item in result.lint for _, edits in item.fixes[:1]]
    taken: list[Edit] = []
    count = 0
    for edits in chosen:
        if any(_overlap(edit, other) for edit in edits for other in taken):
            continue
        taken += edits
        count += 1
    if not taken:
        return result.text, 0
    return apply_edits(result.text, taken), count


def _overlap(a: Edit, b: Edit) -> bool:
    a_start, a_end = (a.span.start_line, a.span.start_char), (a.span.end_line, a.span.end_char)
    b_start, b_end = (b.span.start_line, b.span.start_char), (b.span.end_line, b.span.end_char)
    return a_start <= b_end and b_start <= a_end


def _write(path: Path, text: str) -> None:
    """Replace the file's text in one step, keeping its mode (newline=\"\": the fixes keep the
    file's own line endings)."""
    mode = path.stat().st_mode
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        temporary.chmod(mode & 0o7777)
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _summary(results: list[FileResult], files: int) -> dict[str, Any]:
    reports = [report for result in results for report in result.reports]
    in_memory = [r for r in reports if r.site.in_memory]
    not_checked = [r for r in reports if r.unchecked is not None and not r.site.in_memory]
    severities = [finding.severity for result in results for finding, _ in result.diagnostics()]
    return {
        "files": files,
        "loads": len(reports),
        "checked": len(reports) - len(not_checked) - len(in_memory),
        "not_checked": len(not_checked),
        "in_memory": len(in_memory),
        "skipped": sum(1 for result in results if result.skipped),
        "errors": severities.count(ERROR),
        "warnings": severities.count(WARNING),
        "information": severities.count(INFORMATION),
    }


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _summary_line(summary: dict[str, Any]) -> str:
    loads = f"{_plural(summary['loads'], 'load')}: {summary['checked']} checked"
    if summary["not_checked"]:
        loads += f", {summary['not_checked']} not checked (see the information lines)"
    if summary["in_memory"]:
        loads += f", {summary['in_memory']} from memory (no file)"
    files = _plural(summary["files"], "file")
    if summary["skipped"]:
        files += f" ({summary['skipped']} not read)"
    return (
        f"{files}, {loads}; {_plural(summary['errors'], 'error')}, "
        f"{_plural(summary['warnings'], 'warning')}, {summary['information']} information"
    )


def _json(results: list[FileResult], summary: dict[str, Any]) -> dict[str, Any]:
    diagnostics = []
    for result in results:
        checkpoints = {id(f): r.checkpoint_path for r in result.reports for f in r.findings}
        for finding, titles in result.diagnostics():
            span = finding.span
            diagnostics.append(
                {
                    "file": _shown(result.path),
                    "line": span.start_line + 1,
                    "column": span.start_char + 1,
                    "end_line": span.end_line + 1,
                    "end_column": span.end_char + 1,
                    "severity": finding.severity,
                    "code": finding.code,
                    "message": finding.message,
                    "related": [r.message for r in finding.related],
                    "checkpoint": checkpoints.get(id(finding)),
                    "fixes": titles,
                }
            )
    return {
        "schema": SCHEMA,
        **summary,
        "not_read": [{"file": _shown(r.path), "reason": r.skipped} for r in results if r.skipped],
        "diagnostics": diagnostics,
    }


_SARIF_LEVEL = {ERROR: "error", WARNING: "warning", INFORMATION: "note"}


def _sarif(results: list[FileResult]) -> dict[str, Any]:
    """SARIF 2.1.0, as GitHub code scanning reads it (columns are UTF-16, 1-based)."""
    found = []
    rules: dict[str, dict[str, Any]] = {}
    for result in results:
        for finding, titles in result.diagnostics():
            span = finding.span
            rules.setdefault(
                finding.code,
                {"id": finding.code, "shortDescription": {"text": finding.code}},
            )
            message = finding.message + "".join(f" Fix: {title}." for title in titles)
            found.append(
                {
                    "ruleId": finding.code,
                    "level": _SARIF_LEVEL.get(finding.severity, "note"),
                    "message": {"text": message},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": {
                                    "uri": _shown(result.path).replace(os.sep, "/")
                                },
                                "region": {
                                    "startLine": span.start_line + 1,
                                    "startColumn": span.start_char + 1,
                                    "endLine": span.end_line + 1,
                                    "endColumn": span.end_char + 1,
                                },
                            }
                        }
                    ],
                }
            )
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "torchls",
                        "version": __version__,
                        "informationUri": "https://github.com/torchls/torchls",
                        "rules": list(rules.values()),
                    }
                },
                "columnKind": "utf16CodeUnits",
                "results": found,
            }
        ],
    }


def _uri(path: Path) -> str:
    return _shown(path).replace(os.sep, "/")


_GITHUB_LEVEL = {ERROR: "error", WARNING: "warning", INFORMATION: "notice"}


def _escape(text: str, property_value: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _github(results: list[FileResult]) -> list[str]:
    """GitHub Actions workflow commands: each diagnostic an annotation on its line."""
    lines = []
    for result in results:
        name = _escape(_shown(result.path), True)
        if result.skipped:
            lines.append(
                f"::warning file={name},title=torchls::{_escape('not checked: ' + result.skipped)}"
            )
        for finding, _ in result.diagnostics():
            span = finding.span
            where = (
                f"file={name},line={span.start_line + 1},col={span.start_char + 1},"
                f"endLine={span.end_line + 1},endColumn={span.end_char + 1},"
                f"title={_escape('torchls ' + finding.code, True)}"
            )
            level = _GITHUB_LEVEL.get(finding.severity, "notice")
            lines.append(f"::{level} {where}::{_escape(finding.message)}")
    return lines


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
