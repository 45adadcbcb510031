"""State-dict diagnostics and their quick fixes, for the open documents.

A document is checked when it opens, shortly after each edit (debounced), when it is saved,
when a checkpoint it loads changes on disk (a file watcher the server registers), and when
another open file changes, since that may be the model's module. Nothing here imports torch:
checkpoints are read by the isolated reader process, models are built by the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.uris import from_fs_path

from torchls.checkpoint.isolated import read_isolated_async
from torchls.downgrade.targets import output_path
from torchls.kfold.lint import LintFinding
from torchls.kfold.lint import lint as kfold_lint
from torchls.loadcheck.analysis import ERROR, INFORMATION, WARNING, Environment, Finding
from torchls.loadcheck.checker import LoadChecker, SiteReport
from torchls.loadcheck.fixes import Edit, Fix, clean_name, cleanable
from torchls.lsp.convert import CMD_CONVERT
from torchls.lsp.downgrade import CMD_DOWNGRADE
from torchls.source.models import FileModels
from torchls.source.pins import torch_pin
from torchls.source.text import Lines, Span, utf16_length
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.4
BREATHE_SECONDS = 0.005
SOURCE = "torchls"
# Checkpoint files the server asks the editor to watch.
WATCHED_GLOB = "**/*.{pt,pth,bin,ckpt,safetensors,tar,pkl}"
_SEVERITY = {
    ERROR: types.DiagnosticSeverity.Error,
    WARNING: types.DiagnosticSeverity.Warning,
    INFORMATION: types.DiagnosticSeverity.Information,
}


class LoadChecks:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server
        self._checker: LoadChecker | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        # uri -> (version, text, its models (None once the text changed), reports)
        self._reports: dict[str, tuple[int | None, str, FileModels | None, list[SiteReport]]] = {}
        self._lint: dict[str, list[LintFinding]] = {}  # hand-written k-fold loops
        # Fixes of a checked report, made once: editors ask for code actions on every cursor
        # move, and each fix is verified by reading the edited file again.
        self._fixes: dict[str, dict[int, list[Fix]]] = {}  # uri -> report index -> fixes

    @property
    def checker(self) -> LoadChecker:
        if self._checker is None:
            self._checker = LoadChecker(
                self._read,
                self._run_job,
                self._environment,
                lambda: self.server.model_cost.blocker() is None,
            )
        return self._checker

    async def _read(self, path: str) -> dict[str, Any]:
        return await read_isolated_async(path)

    async def _run_job(self, params: dict[str, Any]) -> JobResult:
        worker = self.server.worker
        assert worker is not None
        return await worker.run("state_dict", dict(params))

    def _environment(self) -> Environment:
        current = self.server.current_status
        root = self.server.workspace_root
        return Environment(current.torch, current.cuda, torch_pin(root) if root else None)

    # -- scheduling ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def schedule(self, uri: str, delay: float = 0.0) -> None:
        kind = self.server.model_cost.kind(uri)
        if not kind.analysed:
            return
        named = kind.on_disk and uri.endswith((".py", ".pyi"))
        if not named and not _is_python(self.server, uri):
            return
        previous = self._pending.pop(uri, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._check_later(uri, delay))
        self._pending[uri] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._pending.get(uri) is done:
                del self._pending[uri]

        task.add_done_callback(finished)

    def schedule_others(self, uri: str, delay: float = DEBOUNCE_SECONDS) -> None:
        """Another open file may define the model a document loads into: check them again
        (cheap when nothing they depend on changed)."""
        for other in list(self._reports):
            if other != uri:
                self.schedule(other, delay)

    def checkpoint_changed(self, path: str) -> None:
        self.checker.forget_checkpoint(path)
        real = os.path.realpath(path)
        for uri, (_, _, _, reports) in list(self._reports.items()):
            if any(
                (r.checkpoint_path is not None and os.path.realpath(r.checkpoint_path) == real)
                or any(os.path.realpath(c) == real for c in r.site.candidates)
                for r in reports
            ):
                self.schedule(uri)

    def edited(self, uri: str) -> None:
        """The document changed: the models of the checked text are of no use to its fixes
        any more, and a large file's tree is the bulk of the server's memory."""
        entry = self._reports.get(uri)
        if entry is not None and entry[2] is not None:
            self._reports[uri] = (entry[0], entry[1], None, entry[3])

    def forget(self, uri: str) -> None:
        task = self._pending.pop(uri, None)
        if task is not None:
            task.cancel()
        self._lint.pop(uri, None)
        self._fixes.pop(uri, None)
        if self._reports.pop(uri, None) is not None:
            self._publish(uri, None, [])

    def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()

    async def _check_later(self, uri: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            await self.check(uri)
        except asyncio.CancelledError:
            raise
        except Exception:  # diagnostics must never take the server down
            log.exception("checking the loads of %s failed", uri)
            # Diagnostics of an older text would point at lines that have changed.
            self._reports.pop(uri, None)
            self._lint.pop(uri, None)
            self._fixes.pop(uri, None)
            with contextlib.suppress(Exception):
                self._publish(uri, None, [])

    async def check(self, uri: str) -> list[SiteReport]:
        document = self.server.workspace.get_text_document(uri)
        version, text = document.version, document.source
        too_large = self.server.model_cost.too_large(uri)
        if too_large is not None:
            self._reports.pop(uri, None)
            self._lint.pop(uri, None)
            self._fixes.pop(uri, None)
            note = types.Diagnostic(
                range=_range(Span(0, 0, 0, utf16_length(Lines(text[:4096]).get(0)))),
                message=f"{too_large}.",
                severity=types.DiagnosticSeverity.Information,
                code="file-too-large",
                source=SOURCE,
            )
            self._publish(uri, version, [], [note])
            return []
        models = self.server.model_cost.current(uri)
        if models is None:
            models = await self.server.model_cost.models_soon(uri)
            if models is None:
                return []
            # Parsing a large file takes a while: answer what came in meanwhile, and stop if
            # the text changed (its own check is scheduled).
            await _breathe()
            if _changed(self.server, uri, version, text):
                return []
        reports: list[SiteReport] = []
        # Checkpoint paths are relative to the file: only a file on disk has loads to check.
        if self.server.model_cost.kind(uri).on_disk:
            reports = await self.checker.check(models, self.server.workspace_root)
        if _changed(self.server, uri, version, text):
            return reports  # edited meanwhile: the next check publishes
        await _breathe()
        if _changed(self.server, uri, version, text):
            return reports
        self._fixes.pop(uri, None)
        self._reports[uri] = (version, text, models, reports)
        try:
            self._lint[uri] = kfold_lint(models)
        except (RecursionError, ValueError):
            self._lint[uri] = []
        self._publish(uri, version, reports)
        return reports

    # -- diagnostics -----------------------------------------------------------------------------

    def _publish(
        self,
        uri: str,
        version: int | None,
        reports: list[SiteReport],
        notes: list[types.Diagnostic] | None = None,
    ) -> None:
        diagnostics = list(notes or [])
        diagnostics += [
            _diagnostic(uri, report, finding) for report in reports for finding in report.findings
        ]
        diagnostics += [_lint_diagnostic(item.finding) for item in self._lint.get(uri, [])]
        # -- issue 19: shape-mismatch diagnostics (lsp/shape_checks.py) ride on this publish,
        # since a second publish for the same document would replace this one.
        shape_checks = getattr(self.server, "shape_checks", None)
        if shape_checks is not None:
            diagnostics += shape_checks.diagnostics(uri)
        # -- end issue 19
        self.server.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )

    def republish(self, uri: str) -> None:
        """Publish the document's diagnostics again, as checked (issue 19: the shape checks
        call this when theirs change). While a check of newer text is pending, it publishes."""
        entry = self._reports.get(uri)
        if entry is None:
            if uri not in self._pending:
                self._publish(uri, None, [])
            return
        version, text = entry[0], entry[1]
        with contextlib.suppress(Exception):
            if _changed(self.server, uri, version, text):
                return
        self._publish(uri, version, entry[3])

    # -- quick fixes -----------------------------------------------------------------------------

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        uri = params.text_document.uri
        entry = self._reports.get(uri)
        if entry is None:
            return []
        version, text, models, reports = entry
        document = self.server.workspace.get_text_document(uri)
        if document.source != text or models is None:
            return []  # the check of the current text has not finished; no stale edits
        if not kind_wanted(types.CodeActionKind.QuickFix, params.context.only):
            return []
        actions = []
        for index, report in enumerate(reports):
            findings = [f for f in report.findings if f.severity in (ERROR, WARNING)]
            if not findings or not _overlaps(report, findings, params.range):
                continue
            diagnostics = [_diagnostic(uri, report, finding) for finding in findings]
            actions += _downgrade_actions(uri, version, text, report, diagnostics)
            # Naming the file's classes first, then rewriting the file, weights_only=False last.
            clean = _clean_action(uri, report, diagnostics)
            for fix in self._fixes_of(uri, index, models, report):
                if clean is not None and not fix.trusted_globals:
                    actions.append(clean)
                    clean = None
                fixed = [d for d in diagnostics if d.code in fix.fixes]
                actions.append(
                    _quick_fix(uri, version, fix.title, [fix.edit], fixed, fix.preferred)
                )
            if clean is not None:
                actions.append(clean)
        for item in self._lint.get(uri, []):
            if not _overlaps_span(item.finding.span, params.range):
                continue
            for title, edits in item.fixes:
                lint = [_lint_diagnostic(item.finding)]
                actions.append(_quick_fix(uri, version, title, edits, lint))
        return actions

    def _fixes_of(self, uri: str, index: int, models: FileModels, report: SiteReport) -> list[Fix]:
        made = self._fixes.setdefault(uri, {})
        if index not in made:
            made[index] = self.checker.fixes(models, report)
        return made[index]

    # -- file watching ---------------------------------------------------------------------------

    async def register_watcher(self) -> None:
        capabilities = self.server.client_capabilities
        workspace = capabilities.workspace if capabilities else None
        watched = workspace.did_change_watched_files if workspace else None
        if watched is None or not watched.dynamic_registration:
            return  # checkpoints are still re-read whenever their stamp changes
        options = types.DidChangeWatchedFilesRegistrationOptions(
            watchers=[types.FileSystemWatcher(glob_pattern=WATCHED_GLOB)]
        )
        with contextlib.suppress(Exception):
            await self.server.client_register_capability_async(
                types.RegistrationParams(
                    registrations=[
                        types.Registration(
                            id="torchls-checkpoints",
                            method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                            register_options=options,
                        )
                    ]
                )
            )


async def _breathe() -> None:
    """Between the steps of a large file's check: a request that came in meanwhile needs a few
    turns of the event loop (its bytes delivered, parsed, dispatched), not just one."""
    await asyncio.sleep(BREATHE_SECONDS)


def _changed(server: TorchLanguageServer, uri: str, version: int | None, text: str) -> bool:
    current = server.workspace.get_text_document(uri)
    return current.version != version or current.source != text


def kind_wanted(kind: str, only: Sequence[str] | None) -> bool:
    """Whether an action of `kind` answers a request for `only` (kinds are prefixes:
    "refactor" asks for "refactor.rewrite" too)."""
    if not only:
        return True
    ours = str(getattr(kind, "value", kind))
    for wanted in only:
        asked = str(getattr(wanted, "value", wanted))
        if ours == asked or ours.startswith(asked + "."):
            return True
    return False


def _is_python(server: TorchLanguageServer, uri: str) -> bool:
    with contextlib.suppress(Exception):
        return server.workspace.get_text_document(uri).language_id == "python"
    return False


def _overlaps(report: SiteReport, findings: list[Finding], wanted: types.Range) -> bool:
    spans = [report.site.span, *(f.span for f in findings)]
    start = (wanted.start.line, wanted.start.character)
    end = (wanted.end.line, wanted.end.character)
    return any(
        (span.start_line, span.start_char) <= end and start <= (span.end_line, span.end_char)
        for span in spans
    )


def _overlaps_span(span: Span, wanted: types.Range) -> bool:
    start = (wanted.start.line, wanted.start.character)
    end = (wanted.end.line, wanted.end.character)
    return (span.start_line, span.start_char) <= end and start <= (span.end_line, span.end_char)


def _lint_diagnostic(
    finding: Finding, related: list[types.DiagnosticRelatedInformation] | None = None
) -> types.Diagnostic:
    return types.Diagnostic(
        range=_range(finding.span),
        message=finding.message,
        severity=_SEVERITY[finding.severity],
        code=finding.code,
        source=SOURCE,
        related_information=related or None,
    )


def _range(span: Span) -> types.Range:
    return types.Range(
        start=types.Position(line=span.start_line, character=span.start_char),
        end=types.Position(line=span.end_line, character=span.end_char),
    )


def _downgrade_actions(
    uri: str,
    version: int | None,
    text: str,
    report: SiteReport,
    diagnostics: list[types.Diagnostic],
) -> list[types.CodeAction]:
    """The zip-for-old-torch warning's fixes: run Downgrade on the checkpoint (a command: it
    writes a legacy copy beside it, the source is not changed), and once that copy exists, load
    it instead (an edit of the path's string literal)."""
    matching = [d for d in diagnostics if d.code == "zip-for-old-torch"]
    if not matching or not report.checkpoint_path:
        return []
    checkpoint = Path(report.checkpoint_path).absolute()
    title = f"torchls: Downgrade {checkpoint.name} for torch < 1.6 (writes a legacy copy)"
    command = types.Command(title=title, command=CMD_DOWNGRADE, arguments=[checkpoint.as_uri()])
    actions = [
        types.CodeAction(
            title=title, kind=types.CodeActionKind.QuickFix, diagnostics=matching, command=command
        )
    ]
    legacy = output_path(checkpoint)
    span = report.site.path_span
    literal = ""
    if span is not None and span.start_line == span.end_line:
        line = Lines(text).get(span.start_line)
        if line.isascii():  # then the span's UTF-16 columns are str indexes
            literal = line[span.start_char : span.end_char]
    if legacy.is_file() and _is_legacy_file(legacy) and span is not None:
        quote = literal[:1]
        if quote in {"'", '"'} and literal.endswith(quote) and checkpoint.name in literal:
            head, _, tail = literal.rpartition(checkpoint.name)
            edit = Edit(span, head + legacy.name + tail)
            title = f"Load {legacy.name} instead (the legacy copy)"
            actions.append(_quick_fix(uri, version, title, [edit], matching, preferred=True))
    return actions


def _clean_action(
    uri: str, report: SiteReport, diagnostics: list[types.Diagnostic]
) -> types.CodeAction | None:
    """A torch.load weights_only refuses only for plain data (a Namespace, numpy values, paths):
    write the weights_only-clean copy beside it (the conversion of `torchls convert
    weights-only`), then point the path's string literal at that copy."""
    matching = [d for d in diagnostics if d.code == "weights-only"]
    span = report.site.path_span
    if (
        not matching
        or not report.checkpoint_path
        or span is None
        or not cleanable(report.checkpoint)
    ):
        return None
    checkpoint = Path(report.checkpoint_path).absolute()
    title = f"torchls: Make this checkpoint weights_only-clean (writes {clean_name(checkpoint)})"
    point_at = {"uri": uri, "range": _json_range(span)}
    options = {"kind": "weights-only", "pointAt": point_at}
    command = types.Command(
        title=title, command=CMD_CONVERT, arguments=[checkpoint.as_uri(), options]
    )
    return types.CodeAction(
        title=title, kind=types.CodeActionKind.QuickFix, diagnostics=matching, command=command
    )


def _json_range(span: Span) -> dict[str, dict[str, int]]:
    return {
        "start": {"line": span.start_line, "character": span.start_char},
        "end": {"line": span.end_line, "character": span.end_char},
    }


def _quick_fix(
    uri: str,
    version: int | None,
    title: str,
    edits: Sequence[Edit],
    diagnostics: list[types.Diagnostic],
    preferred: bool | None = None,
) -> types.CodeAction:
    """A quick fix as one versioned edit of the document (an editor drops it once the text
    has changed)."""
    text_edits = [types.TextEdit(range=_range(e.span), new_text=e.text) for e in edits]
    change = types.TextDocumentEdit(
        text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version),
        edits=list(text_edits),
    )
    return types.CodeAction(
        title=f"torchls: {title}",
        kind=types.CodeActionKind.QuickFix,
        diagnostics=diagnostics,
        is_preferred=preferred,
        edit=types.WorkspaceEdit(document_changes=[change]),
    )


def _is_legacy_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"\x80\x02"
    except OSError:
        return False


def _diagnostic(uri: str, report: SiteReport, finding: Finding) -> types.Diagnostic:
    related = []
    for item in finding.related:
        if item.where == "file" and item.path:
            location = types.Location(
                uri=from_fs_path(item.path) or uri,
                range=_range(Span(item.line, 0, item.line, 0)),
            )
        elif item.where == "checkpoint" and report.checkpoint_path:
            location = types.Location(
                uri=from_fs_path(str(Path(report.checkpoint_path).absolute())) or uri,
                range=_range(Span(0, 0, 0, 0)),
            )
        elif item.where == "model" and report.site.model is not None:
            location = _model_location(uri, report)
        else:
            location = types.Location(uri=uri, range=_range(report.site.span))
        related.append(types.DiagnosticRelatedInformation(location=location, message=item.message))
    return _lint_diagnostic(finding, related)


def _model_location(uri: str, report: SiteReport) -> types.Location:
    target = report.site.model
    assert target is not None
    defining = target.defining_file
    if defining is not None and target.ref.get("qualname"):
        line = _class_line(defining.text, str(target.ref["qualname"]))
        if line is not None:
            return types.Location(
                uri=from_fs_path(defining.path) or uri, range=_range(Span(line, 0, line, 0))
            )
    return types.Location(uri=uri, range=_range(target.span))


def _class_line(text: str, qualname: str) -> int | None:
    name = qualname.split(".")[-1]
    for number, line in enumerate(Lines(text).lines):
        if line.lstrip().startswith((f"class {name}(", f"class {name}:", f"def {name}(")):
            return number
    return None
