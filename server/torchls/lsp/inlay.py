"""Inlay hints: the shapes a model's forward bound, where it bound them, and parameter counts on
the `self.x = ...` lines of `__init__`.

Every profile result that arrives is indexed by the workspace files its forward ran through (the
worker's `shapes`, each with the sha256 of the text it ran) and by the files it was built from.
A request then needs no worker and no source analysis for shapes: the hints of a document are
those of the indexed results whose recorded text is the document's current text, merged by
position, computed once per (document version, index generation) and filtered by range.
"""

from __future__ import annotations

import ast
import asyncio
import bisect
import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from torchls.cost import report
from torchls.cost.request import PreparedProfile
from torchls.source.spec import describe_json
from torchls.source.text import split_lines, utf16_column, utf16_length
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

# A profile result's hints are asked for again this long after its arrival, so that a burst of
# results (a file's models warming one after another) costs the client one refresh.
REFRESH_DELAY_SECONDS = 0.2
# After an edit, the document's models are profiled again once it has been left alone this long.
FILL_DELAY_SECONDS = 0.75
FILL_LIMIT = 12  # models profiled per pause, in source order from the requested range
# Results indexed, the least recently arrived dropped first (as many as the profile cache holds)
MAX_RECORDED = 256


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _real(path: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        return os.path.realpath(path)
    return path


@dataclass
class _Recorded:
    """One profile result, as the hints need it."""

    label: str  # "SmallConvNet (line 12 of model.py)"
    texts: dict[str, str]  # real path -> sha256 of the text the job ran, for every known file
    shapes: dict[str, list[dict[str, Any]]]  # real path -> the worker's hints in that file
    tree: list[dict[str, Any]]
    paths: set[str]  # real paths it is indexed under
    guessed: bool  # profiled at a guessed input
    inputs: str = ""  # the input it ran at, described
    # real path -> the functions its forward ran there, and their statements that did not run
    functions: dict[str, set[str]] = field(default_factory=dict)
    unrun: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)  # -> function


@dataclass
class _Merged:
    """The hints of several models at one position: one inlay hint."""

    line: int
    character: int  # UTF-16
    kind: str  # "bind" | "return" | "parameters" | "unrun"
    name: str
    values: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    calls: list[tuple[str, int]] = field(default_factory=list)  # (model, calls)
    details: list[str] = field(default_factory=list)  # parameters: per instance
    _wire: dict[str, Any] | None = None

    def wire(self, uri: str) -> dict[str, Any]:
        """The InlayHint as JSON; its tooltip comes with inlayHint/resolve."""
        if self._wire is None:
            self._wire = {
                "position": {"line": self.line, "character": self.character},
                "label": self.label(),
                "kind": types.InlayHintKind.Type.value,
                "paddingLeft": self.kind != "bind",
                "data": {
                    "uri": uri,
                    "line": self.line,
                    "character": self.character,
                    "kind": self.kind,
                },
            }
        return self._wire

    def add_values(self, values: list[str]) -> None:
        for value in values:
            if value not in self.values:
                self.values.append(value)

    def label(self) -> str:
        if self.kind == "unrun":
            return "not run"
        if self.kind == "parameters":
            shown = self.values[0] if len(self.values) == 1 else "{" + ", ".join(self.values) + "}"
            return f"{shown} params"
        shown = self.values[0] if len(self.values) == 1 else "{" + ", ".join(self.values) + "}"
        return f"→ {shown}" if self.kind == "return" else f": {shown}"

    def tooltip(self) -> str:
        if self.kind == "unrun":
            lines = [
                f"This line of `{', '.join(self.functions)}` did not run in the forward "
                "torchls traced, so it has no shape to show. Traced:"
            ]
            lines += [f"- {detail}" for detail in self.details]
            lines.append("")
            lines.append(
                "*A branch this input does not take (a `targets`, a `mask`, training mode) or a "
                "loop that ran zero times: an input that takes it shows its shapes.*"
            )
            return "\n".join(lines)
        if self.kind == "parameters":
            lines = [f"**self.{self.name}**: parameters of this submodule, from the profile of"]
            lines += [f"- {detail}" for detail in self.details]
            return "\n".join(lines)
        what = "the value returned" if self.kind == "return" else f"`{self.name}`"
        lines = [f"Shape of {what} in `{', '.join(self.functions)}`, from the profile of"]
        lines += [
            f"- {model}: this line ran {calls} time{'s' if calls != 1 else ''}"
            for model, calls in self.calls
        ]
        lines.append("")
        lines.append("Values seen (shape, then dtype where it is not float32):")
        lines += [f"- `{value}`" for value in self.values]
        lines.append("")
        lines.append("*Recorded during torchls's forward on the meta device.*")
        return "\n".join(lines)


class InlayHints:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server
        # profile identity -> its latest result, oldest first
        self._recorded: OrderedDict[str, _Recorded] = OrderedDict()
        self._by_path: dict[str, set[str]] = {}  # real path -> identities
        self.generation = 0
        # uri -> ((version, text identity, generation, settings), merged hints by position)
        self._computed: dict[str, tuple[tuple[Any, ...], list[_Merged]]] = {}
        self._digests: dict[str, tuple[str, str]] = {}  # uri -> (text, its sha256)
        self._filling: dict[str, asyncio.Task[None]] = {}
        self._fill_ranges: dict[str, tuple[int, int]] = {}
        # uri -> (version, generation, first line, last line) of the last range looked at
        self._fill_checked: dict[str, tuple[int | None, int, int, int]] = {}
        self._refresh: asyncio.TimerHandle | None = None

    # -- results ---------------------------------------------------------------------------

    def record(self, prepared: PreparedProfile, result: JobResult) -> None:
        """Index a profile result that arrived (a ProfileCache listener)."""
        identity = prepared.identity
        old = self._recorded.pop(identity, None)
        if old is not None:
            for path in old.paths:
                self._by_path.get(path, set()).discard(identity)
        if result.ok and isinstance(result.value, dict):
            # the module tree is kept only for parameter hints (settings change on a restart)
            recorded = _record(prepared, result.value, self.server.options.inlay_hints_parameters)
            if recorded.paths:
                self._recorded[identity] = recorded
                for path in recorded.paths:
                    self._by_path.setdefault(path, set()).add(identity)
            while len(self._recorded) > MAX_RECORDED:
                gone, dropped = self._recorded.popitem(last=False)
                for path in dropped.paths:
                    self._by_path.get(path, set()).discard(gone)
        if old is not None or identity in self._recorded:
            self.generation += 1
            self.schedule_refresh()

    def schedule_refresh(self) -> None:
        """Ask the client (when it can be asked) to fetch inlay hints and lenses again."""
        if self._refresh is not None:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            self._refresh = loop.call_later(REFRESH_DELAY_SECONDS, self._send_refresh)

    def _send_refresh(self) -> None:
        self._refresh = None
        capabilities = self.server.client_capabilities.workspace
        if capabilities is None:
            return
        inlay = capabilities.inlay_hint
        if inlay is not None and inlay.refresh_support:
            self.server.workspace_inlay_hint_refresh(None)
        lens = capabilities.code_lens
        if lens is not None and lens.refresh_support:
            self.server.workspace_code_lens_refresh(None)

    # -- requests --------------------------------------------------------------------------

    def hints(self, params: types.InlayHintParams) -> list[dict[str, Any]] | None:
        """The hints in the requested range, as LSP's JSON (made once per document version and
        index generation: a client asks again on every scroll)."""
        options = self.server.options
        if not (options.inlay_hints_shapes or options.inlay_hints_parameters):
            return None
        uri = params.text_document.uri
        merged = self._merged(uri)
        if merged is None:
            return None
        start, end = params.range.start, params.range.end
        self._schedule_fill(uri, start.line, end.line)
        first = bisect.bisect_left(merged, (start.line, start.character), key=_position)
        last = bisect.bisect_right(merged, (end.line, end.character), key=_position)
        return [hint.wire(uri) for hint in merged[first:last]]

    def resolve(self, hint: types.InlayHint) -> types.InlayHint:
        data = hint.data if isinstance(hint.data, dict) else {}
        uri = data.get("uri")
        if not isinstance(uri, str) or uri not in self.server.workspace.text_documents:
            return hint
        for merged in self._merged(uri) or []:
            if (merged.line, merged.character, merged.kind) == (
                data.get("line"),
                data.get("character"),
                data.get("kind"),
            ):
                hint.tooltip = types.MarkupContent(
                    kind=types.MarkupKind.Markdown, value=merged.tooltip()
                )
                break
        return hint

    def forget(self, uri: str) -> None:
        self._computed.pop(uri, None)
        self._digests.pop(uri, None)
        self._fill_ranges.pop(uri, None)
        self._fill_checked.pop(uri, None)
        task = self._filling.pop(uri, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for task in self._filling.values():
            task.cancel()
        self._filling.clear()
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None

    # -- computing -------------------------------------------------------------------------

    def digest(self, uri: str) -> str:
        source = self.server.workspace.get_text_document(uri).source
        known = self._digests.get(uri)
        if known is None or known[0] is not source:
            known = (source, text_digest(source))
            self._digests[uri] = known
        return known[1]

    def _open_digests(self) -> dict[str, str]:
        found = {}
        for uri in self.server.workspace.text_documents:
            path = self.server.model_cost.kind(uri).path
            if path is not None:
                found[_real(path)] = self.digest(uri)
        return found

    def _merged(self, uri: str) -> list[_Merged] | None:
        model_cost = self.server.model_cost
        kind = model_cost.kind(uri)
        if kind.path is None or not kind.analysed or model_cost.too_large(uri) is not None:
            return None
        document = self.server.workspace.get_text_document(uri)
        options = self.server.options
        stamp = (
            document.version,
            self.digest(uri),
            self.generation,
            tuple((u, d.version) for u, d in self.server.workspace.text_documents.items()),
            options.inlay_hints_shapes,
            options.inlay_hints_parameters,
        )
        cached = self._computed.get(uri)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        merged = self._compute(uri, _real(kind.path))
        self._computed[uri] = (stamp, merged)
        return merged

    def _current(self, path: str) -> list[_Recorded]:
        """The indexed results for `path` that ran the text every open document has now."""
        identities = self._by_path.get(path)
        if not identities:
            return []
        open_texts = self._open_digests()
        found = []
        for identity in sorted(identities):
            recorded = self._recorded[identity]
            if path not in recorded.texts:
                continue
            if all(open_texts.get(p, digest) == digest for p, digest in recorded.texts.items()):
                found.append(recorded)
        stated = [recorded for recorded in found if not recorded.guessed]
        # Shapes at a guessed input are shown only where no model with a stated input ran:
        # mixed in, a guess's (1, 4, 224, 224) would read as one of the shapes the code sees.
        return stated or found

    def _compute(self, uri: str, path: str) -> list[_Merged]:
        results = self._current(path)
        if not results:
            return []
        text = self.server.workspace.get_text_document(uri).source
        lines = split_lines(text)
        merged: dict[tuple[int, int, str], _Merged] = {}
        options = self.server.options
        if options.inlay_hints_shapes:
            for recorded in results:
                for hint in recorded.shapes.get(path, []):
                    _add_shape(merged, recorded.label, hint, lines)
            _add_unrun(merged, path, results, lines)
        if options.inlay_hints_parameters:
            models = self.server.model_cost.models(uri)
            if models is not None and models.tree is not None:
                for name, node in models.classes.items():
                    if models.is_model_class(name):
                        _add_parameters(merged, name, node, results, lines)
        return sorted(merged.values(), key=lambda hint: (hint.line, hint.character))

    # -- profiling what is missing -----------------------------------------------------------

    def _schedule_fill(self, uri: str, first: int, last: int) -> None:
        """Profile the document's models in the requested lines that have no current profile,
        once the document has been left alone for a moment, one job at a time, in the
        background (a hover's job goes first)."""
        if self.server.model_cost.blocker() is not None:
            return
        version = self.server.workspace.get_text_document(uri).version
        checked = self._fill_checked.get(uri)
        if (
            checked is not None
            and checked[:2] == (version, self.generation)
            and checked[2] <= first
            and last <= checked[3]
        ):
            return  # this version's models in these lines were looked at already
        self._fill_checked[uri] = (version, self.generation, first, last)
        self._fill_ranges[uri] = (first, last)
        if uri in self._filling:
            return
        task = asyncio.ensure_future(self._fill(uri))
        self._filling[uri] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._filling.get(uri) is done:
                del self._filling[uri]

        task.add_done_callback(finished)

    async def _fill(self, uri: str) -> None:
        tried: set[str] = set()
        model_cost = self.server.model_cost
        while True:
            version = self.server.workspace.get_text_document(uri).version
            await asyncio.sleep(FILL_DELAY_SECONDS)
            document = self.server.workspace.text_documents.get(uri)
            if document is None or model_cost.blocker() is not None:
                return
            if document.version != version:
                continue  # still being edited
            models = model_cost.models(uri)
            if models is None:
                return
            first, last = self._fill_ranges.get(uri, (0, 0))
            waiting = []
            for target in models.first_targets(FILL_LIMIT * 8):
                end_line = target.line - 1
                node = models.classes.get(target.name) if target.kind == "class" else None
                if node is not None:
                    end_line = (node.end_lineno or node.lineno) - 1
                if end_line < first or target.line - 1 > last:
                    continue
                prepared = model_cost._prepare(models, target)
                if prepared.key in tried or model_cost.cache.peek(prepared) is not None:
                    continue
                waiting.append(prepared)
                if len(waiting) >= FILL_LIMIT:
                    break
            del models
            if not waiting:
                return
            for prepared in waiting:
                tried.add(prepared.key)
                if self.server.workspace.get_text_document(uri).version != version:
                    break  # edited meanwhile: what is left is for the new text
                with contextlib.suppress(Exception):
                    await asyncio.shield(model_cost.cache.get(prepared, background=True))


def _position(hint: _Merged) -> tuple[int, int]:
    return (hint.line, hint.character)


def _record(prepared: PreparedProfile, value: dict[str, Any], with_tree: bool) -> _Recorded:
    target = prepared.target
    document_path = prepared.identity.split("::", 1)[0]
    label = f"{target.name} (line {target.line} of {Path(document_path).name})"
    texts: dict[str, str] = {}
    sources = prepared.params.get("sources")
    if isinstance(sources, dict):
        for source_path, text in sources.items():
            if isinstance(source_path, str) and isinstance(text, str):
                texts[_real(source_path)] = text_digest(text)
    shapes: dict[str, list[dict[str, Any]]] = {}
    functions: dict[str, set[str]] = {}
    unrun: dict[str, dict[tuple[int, int], str]] = {}
    for entry in value.get("shapes") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        file = _real(entry["file"])
        digest = entry.get("sha256")
        if isinstance(digest, str):
            # what the worker ran is what counts (a file not open is read from disk there)
            texts[file] = digest
        shapes[file] = [hint for hint in entry.get("hints") or [] if isinstance(hint, dict)]
        ran = entry.get("functions")
        if isinstance(ran, list):
            functions[file] = {name for name in ran if isinstance(name, str)}
            unrun[file] = {
                (row["line"], row["character"]): row["function"]
                for row in entry.get("unrun") or []
                if isinstance(row, dict)
                and isinstance(row.get("line"), int)
                and isinstance(row.get("character"), int)
                and isinstance(row.get("function"), str)
            }
    tree = [row for row in value.get("tree") or [] if isinstance(row, dict)] if with_tree else []
    paths = set(shapes)
    ref_file = target.ref.get("file") if isinstance(target.ref, dict) else None
    if tree:
        # parameter hints go in the files the model's classes are defined in
        for candidate in (ref_file, document_path):
            if isinstance(candidate, str) and _real(candidate) in texts:
                paths.add(_real(candidate))
    found = value.get("inputs")
    inputs: dict[str, Any] = found if isinstance(found, dict) else {}
    described = describe_json(inputs) if inputs else ""
    guessed = bool(inputs.get("guess"))
    if guessed:
        label += f" at a guessed input {described}"
    return _Recorded(label, texts, shapes, tree, paths, guessed, described, functions, unrun)


def _column(lines: list[str], line: int, code_points: int) -> int | None:
    if not 0 <= line < len(lines):
        return None
    text = lines[line]
    code_points = max(0, min(code_points, len(text)))
    return code_points if text.isascii() else utf16_length(text[:code_points])


def _add_shape(
    merged: dict[tuple[int, int, str], _Merged],
    model: str,
    hint: dict[str, Any],
    lines: list[str],
) -> None:
    line, character, kind = hint.get("line"), hint.get("character"), hint.get("kind")
    values = hint.get("values")
    if (
        not isinstance(line, int)
        or not isinstance(character, int)
        or kind not in ("bind", "return")
    ):
        return
    if not isinstance(values, list) or not values:
        return
    column = _column(lines, line, character)
    if column is None:
        return
    key = (line, column, str(kind))
    entry = merged.get(key)
    if entry is None:
        entry = merged[key] = _Merged(line, column, str(kind), str(hint.get("name") or ""))
    entry.add_values([str(value) for value in values])
    function = str(hint.get("function") or "")
    if function and function not in entry.functions:
        entry.functions.append(function)
    entry.calls.append((model, int(hint.get("calls") or 0)))


def _add_unrun(
    merged: dict[tuple[int, int, str], _Merged],
    path: str,
    results: list[_Recorded],
    lines: list[str],
) -> None:
    """ "not run" where a statement of a traced function would have a shape but ran in none of
    the forwards that ran that function, and no other hint is on its line."""
    shown = {hint.line for hint in merged.values()}
    candidates: dict[tuple[int, int], str] = {}
    for recorded in results:
        for position, function in recorded.unrun.get(path, {}).items():
            candidates.setdefault(position, function)
    for (line, character), function in sorted(candidates.items()):
        if line in shown:
            continue
        traced = [r for r in results if function in r.functions.get(path, set())]
        if not traced or any((line, character) not in r.unrun.get(path, {}) for r in traced):
            continue  # one of the forwards that ran this function ran this line too
        if not 0 <= line < len(lines):
            continue
        # at the line's end: after a target name it would read as the name's value
        column = _column(lines, line, len(lines[line].rstrip()))
        if column is None:
            continue
        entry = merged[(line, column, "unrun")] = _Merged(line, column, "unrun", "")
        entry.functions.append(function)
        for r in traced:
            at = f" at input {r.inputs}" if r.inputs and not r.guessed else ""
            entry.details.append(f"{r.label}{at}")
        shown.add(line)


def _init_assignments(node: ast.ClassDef) -> list[tuple[str, ast.stmt]]:
    """`self.x = ...` statements of the class's `__init__` (nested blocks included)."""
    init = next(
        (
            item
            for item in node.body
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "__init__"
        ),
        None,
    )
    if init is None or not init.args.args:
        return []
    self_name = init.args.args[0].arg
    found: list[tuple[str, ast.stmt]] = []
    for statement in ast.walk(init):
        targets: list[ast.expr] = []
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets = [statement.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == self_name
            ):
                found.append((target.attr, statement))  # type: ignore[arg-type]
    return found


def _add_parameters(
    merged: dict[tuple[int, int, str], _Merged],
    class_name: str,
    node: ast.ClassDef,
    results: list[_Recorded],
    lines: list[str],
) -> None:
    assignments = _init_assignments(node)
    if not assignments:
        return
    for recorded in results:
        rows = {str(row.get("path", "")): row for row in recorded.tree}
        instances = [path for path, row in rows.items() if row.get("type") == class_name]
        for attribute, statement in assignments:
            for instance in instances:
                row = rows.get(f"{instance}.{attribute}" if instance else attribute)
                if row is None:
                    continue
                end_line = (statement.end_lineno or statement.lineno) - 1
                if not 0 <= end_line < len(lines):
                    continue
                column = utf16_column(lines[end_line], statement.end_col_offset or 0)
                key = (end_line, column, "parameters")
                entry = merged.get(key)
                if entry is None:
                    entry = merged[key] = _Merged(end_line, column, "parameters", attribute)
                params = int(row.get("params") or 0)
                entry.add_values([report.count(params)])
                where = f"`{instance}`" if instance else "the model itself"
                entry.details.append(
                    f"{recorded.label}, {where}: {params:,} parameters "
                    f"({int(row.get('trainable') or 0):,} trainable), {row.get('type')}"
                )
