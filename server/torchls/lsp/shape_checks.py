"""Shape-mismatch diagnostics and their verified quick fix.

When a model's profile fails with a shape error inside a layer (the worker's `shape_error`, see
the issue 19 contract), the failing forward line gets an error that names the layer, what it
expects and what it receives at the stated input, with related information on where the layer is
built in `__init__`. The quick fix rewrites that construction's argument (`in_features`,
`in_channels`, ...) to the received value, and is offered only once the profile, re-run on the
edited text, went through: a fix that makes the model fail further on is not offered; the chain
of edits that does make it run is (up to MAX_CHAIN edits), since fixing one layer of a
convolutional stack often only moves the mismatch to the next one. Verification runs as a
background worker job, keyed by the texts it was made from, so a stale fix is never offered.

Nothing here imports torch. The diagnostics are published by lsp/load_checks.py (one publish
per document carries every torchls diagnostic), which asks `diagnostics(uri)`. lsp/server.py
makes the ShapeChecks, schedules a check when a file is opened or saved, and asks it for code
actions.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.uris import from_fs_path

from torchls.loadcheck.fixes import Edit, apply_edits, diff
from torchls.lsp.load_checks import kind_wanted
from torchls.source.construction import (
    Construction,
    find_construction,
    literal_int,
    rewritten,
)
from torchls.source.project import ModuleFile, Project
from torchls.source.text import Lines, Span, split_lines, utf16_length
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.cost.request import PreparedProfile
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

SOURCE = "torchls"
CODE_MISMATCH = "shape-mismatch"
CODE_VIEW = "view-size-mismatch"
# Edits chained when fixing one layer moves the mismatch to the next one.
MAX_CHAIN = 3
DEBOUNCE_SECONDS = 1.0
WARM_LIMIT = 12
MAX_VERIFIED = 64  # the targets per document, as the hover's warm-up
_WHAT = {
    "in_features": "{} input features",
    "in_channels": "{} input channels",
    "num_features": "{} features (num_features)",
    "normalized_shape": "a last dimension of {} (normalized_shape)",
    "embed_dim": "an embedding size of {} (embed_dim)",
    "input_size": "an input size of {} (input_size)",
    "d_model": "a model size of {} (d_model)",
    "num_channels": "{} channels (num_channels)",
}
_VIEW_METHODS = {"view", "reshape"}

ModelClass = tuple[ModuleFile, str]  # the profiled model's file and class qualname
Runner = Callable[[dict[str, Any]], Awaitable[JobResult]]


# -- the explanation (pure: no server) ------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """What a shape_error means in the source: the message, where the layer is built, and the
    edit that would give it the received value (not yet verified)."""

    code: str
    message: str
    file: str | None  # the failing forward line's file
    line: int | None  # 0-based
    construction: Construction | None = None
    built_here: str = ""  # the related information's message
    edit_path: str | None = None  # the file the edit changes
    edit: Edit | None = None
    before: str = ""  # the edited call's text, before and after (for the CLI's one-liner)
    after: str = ""
    title: str = ""
    notes: tuple[str, ...] = ()  # why there is no edit, in sentences


def shape_error_of(result: JobResult) -> dict[str, Any] | None:
    """The worker's `shape_error`, from a failed job's data (absent in older results)."""
    if result.ok:
        return None
    data = getattr(result, "data", None)
    if isinstance(data, dict) and isinstance(data.get("shape_error"), dict):
        found: dict[str, Any] = data["shape_error"]
        return found
    return None


def explain(
    data: Mapping[str, Any], project: Project, model: ModelClass | None = None
) -> Explanation:
    file = data.get("file") if isinstance(data.get("file"), str) else None
    number = data.get("line")
    line = number - 1 if isinstance(number, int) and number > 0 else None
    if isinstance(data.get("view"), dict):
        return _explain_view(data, project, file, line)
    module_path = str(data.get("module") or "")
    layer_type = str(data.get("type") or "")
    expects = data.get("expects") if isinstance(data.get("expects"), dict) else None
    received = data.get("received")
    inputs = str(data.get("inputs") or "")
    shown = (
        f"{module_path} ({layer_type})" if module_path and layer_type else module_path or "a layer"
    )
    at_input = f"at input {inputs}" if inputs else "at the input used"
    if expects is None or not isinstance(received, int) or isinstance(received, bool):
        shapes = _shapes(data.get("input_shapes"))
        message = f"{shown} fails {at_input}"
        message += f" on an input of shape {shapes}" if shapes else ""
        message += f": {data.get('message') or 'a shape mismatch'}."
        return Explanation(CODE_MISMATCH, message, file, line)
    argument = str(expects.get("argument") or "")
    position = expects.get("position") if isinstance(expects.get("position"), int) else 0
    value = expects.get("value")
    lookup = _lookup(project, model, file, line, module_path, argument, position)
    construction = lookup.construction if lookup else None
    arg = construction.argument if construction else None
    new_text = rewritten(arg.text, received, _int(value)) if arg is not None else str(received)
    factored = _factored(new_text, received)
    measured = _measured_factors(data, received)
    if measured is not None:
        # the worker saw the tensor before it was flattened: its dims, not a guess
        factored = " = " + " x ".join(str(f) for f in measured)
        if (
            arg is not None
            and arg.rewritable
            and _literal_product_length(arg.text) == len(measured)
        ):
            new_text = " * ".join(str(f) for f in measured)
    what = _WHAT.get(argument, argument + "={}").format(value)
    message = f"{shown} expects {what}; {at_input} it receives {received}{factored}."
    torch_message = str(data.get("message") or "")
    if torch_message:
        message += f" (torch: {torch_message})"
    notes: list[str] = []
    if construction is None:
        why = lookup.why if lookup else "the failing line's file is not in the workspace"
        notes.append(f"torchls cannot show where {module_path or 'the layer'} is built: {why}.")
        return Explanation(CODE_MISMATCH, _with(message, notes), file, line, notes=tuple(notes))
    short = module_path.rsplit(".", 1)[-1] if construction.shared else module_path
    if arg is None:
        built_here = f"{short} is built here, with {argument} not passed where torchls can see it"
        notes.append(
            f"torchls has no fix: {argument} is not in the call `{construction.call_text}`."
        )
        return Explanation(
            CODE_MISMATCH,
            _with(message, notes),
            file,
            line,
            construction,
            built_here,
            notes=tuple(notes),
        )
    shown_value = f"{arg.text}" if arg.text == str(arg.value) else f"{arg.text} = {value}"
    built_here = f"{module_path} is built here with {argument}={shown_value}"
    if construction.shared:
        built_here += " (one expression builds every layer of this container)"
    if not arg.rewritable:
        names = ", ".join(arg.names) or "names"
        notes.append(
            f"`{arg.text}` is {value} here and must be {received}; torchls does not rewrite an "
            f"expression with names ({names}): change what they hold, or write {new_text}."
        )
        return Explanation(
            CODE_MISMATCH,
            _with(message, notes),
            file,
            line,
            construction,
            built_here,
            notes=tuple(notes),
        )
    edit = Edit(arg.span, new_text)
    after = _replaced(construction.call_text, construction.call_span, arg.span, new_text)
    name = arg.keyword or argument
    equals = f" (= {received})" if new_text != str(received) else ""
    title = f"Change {name} of {module_path} to {new_text}{equals}"
    return Explanation(
        CODE_MISMATCH,
        message,
        file,
        line,
        construction,
        built_here,
        construction.path,
        edit,
        construction.call_text,
        after,
        title,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _factored(text: str, received: int) -> str:
    """` = 64 x 7 x 7` when the suggested text is a product ending in `* t * t`."""
    found = re.fullmatch(r".+ \* (\d+) \* (\d+)", text)
    if found is None or found.group(1) != found.group(2):
        return ""
    side = int(found.group(1))
    return f" = {received // (side * side)} x {side} x {side}"


def _measured_factors(data: Mapping[str, Any], received: int) -> list[int] | None:
    """The dims whose product the layer received (`[64, 7, 7]`), when the worker measured
    them: its `factors`, or its summary's "it receives 64 x 7 x 7 = 3136"."""
    factors = data.get("factors")
    if not isinstance(factors, list):
        found = re.search(r"it receives (\d+(?: x \d+)+) = (\d+)", str(data.get("summary") or ""))
        factors = [int(f) for f in found.group(1).split(" x ")] if found else None
    if not factors or not all(isinstance(f, int) and f > 0 for f in factors):
        return None
    return factors if len(factors) > 1 and math.prod(factors) == received else None


def _literal_product_length(text: str) -> int:
    """3 for `64 * 5 * 5`, 1 for `3200`, 0 for anything else."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return 0
    count = 0
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        if literal_int(node.right) is None or not isinstance(node.right, ast.Constant):
            return 0
        count += 1
        node = node.left
    return count + 1 if isinstance(node, ast.Constant) and literal_int(node) is not None else 0


def _with(message: str, notes: Sequence[str]) -> str:
    return " ".join([message, *notes])


def _shapes(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return ""
    parts = [
        "(" + ", ".join(str(d) for d in shape) + (",)" if len(shape) == 1 else ")")
        for shape in value
        if isinstance(shape, list)
    ]
    return ", ".join(parts)


def _replaced(call_text: str, call_span: Span, arg_span: Span, new_text: str) -> str:
    """The call's text with the argument replaced (for display; single-line calls exactly)."""
    lines = call_text.split("\n")
    if call_span.start_line != arg_span.start_line or arg_span.start_line != arg_span.end_line:
        return call_text
    first = lines[0]
    start = arg_span.start_char - call_span.start_char
    end = arg_span.end_char - call_span.start_char
    if not (0 <= start <= end <= len(first)) or not first.isascii():
        return call_text
    lines[0] = first[:start] + new_text + first[end:]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Found:
    construction: Construction | None
    why: str


def _lookup(
    project: Project,
    model: ModelClass | None,
    file: str | None,
    line: int | None,
    module_path: str,
    argument: str,
    position: int,
) -> _Found | None:
    """The construction of `module_path`: from the profiled model's class with the whole path,
    else from the class whose forward holds the failing line, with the path's longest suffix
    that class builds (`encoder.layers.0.linear1` failing in EncoderLayer.forward: `linear1`)."""
    why = ""
    if model is not None:
        found = find_construction(project, model[0], model[1], module_path, argument, position)
        if found.construction is not None:
            return _Found(found.construction, "")
        why = found.why
    module = project.module_file(file) if file else None
    owner = _enclosing_class(module, line) if module is not None and line is not None else None
    if module is not None and owner is not None:
        parts = module_path.split(".")
        for cut in range(len(parts)):
            found = find_construction(
                project, module, owner, ".".join(parts[cut:]), argument, position
            )
            if found.construction is not None:
                return _Found(found.construction, "")
            why = why or found.why
    if not why:
        return None
    return _Found(None, why)


def _enclosing_class(module: ModuleFile, line: int) -> str | None:
    tree = module.tree()
    best: str | None = None

    def visit(body: list[ast.stmt], prefix: str) -> None:
        nonlocal best
        for node in body:
            if isinstance(node, ast.ClassDef):
                end = node.end_lineno or node.lineno
                if node.lineno - 1 <= line <= end - 1:
                    best = prefix + node.name
                    visit(node.body, best + ".")

    visit([] if tree is None else tree.body, "")
    return best


def _explain_view(
    data: Mapping[str, Any], project: Project, file: str | None, line: int | None
) -> Explanation:
    view = data["view"]
    requested = view.get("requested") if isinstance(view.get("requested"), list) else []
    size = view.get("size")
    inputs = str(data.get("inputs") or "")
    asked = ", ".join(str(d) for d in requested)
    at_input = f" at input {inputs}" if inputs else ""
    message = f"view/reshape to [{asked}] fails{at_input}: the tensor has {size} elements"
    fixed = [d for d in requested if isinstance(d, int) and d != -1]
    product = 1
    for dimension in fixed:
        product *= dimension
    if isinstance(size, int) and product and size % product:
        message += f", which is not a multiple of {product}"
    message += "."
    if file is None or line is None or not isinstance(size, int):
        return Explanation(CODE_VIEW, message, file, line)
    module = project.module_file(file)
    if module is None:
        return Explanation(CODE_VIEW, message, file, line)
    batch = _batch(inputs)
    found = _view_edit(module, line, requested, size, batch)
    if isinstance(found, str):
        notes = (found,)
        return Explanation(CODE_VIEW, _with(message, notes), file, line, notes=notes)
    span, old_text, new_text, call_text, after = found
    title = f"Change {old_text} in the {call_text.split('(')[0].rsplit('.', 1)[-1]} to {new_text}"
    if new_text != str(size // batch):
        title += f" (= {size // batch})"
    return Explanation(
        CODE_VIEW,
        message,
        file,
        line,
        edit_path=module.path,
        edit=Edit(span, new_text),
        before=call_text,
        after=after,
        title=title,
    )


def _batch(inputs: str) -> int:
    found = re.match(r"\s*\(\s*(\d+)", inputs)
    return int(found.group(1)) if found else 1


def _view_edit(
    module: ModuleFile, line: int, requested: list[Any], size: int, batch: int
) -> tuple[Span, str, str, str, str] | str:
    """`x.view(-1, 3200)` with 3136 elements at batch 1: the literal 3200 becomes 3136. Only
    the flatten form (-1 first, one literal after it) is rewritten."""
    tree = module.tree()
    lines = Lines(module.text)
    calls = [
        node
        for node in ([] if tree is None else ast.walk(tree))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _VIEW_METHODS
        and node.lineno - 1 <= line <= (node.end_lineno or node.lineno) - 1
    ]
    for call in calls:
        values = [literal_int(arg) for arg in call.args]
        if len(call.args) != 2 or values[0] != -1 or values[1] is None:
            continue
        if list(values) != list(requested):
            continue
        if size % batch:
            return f"{size} elements do not split into a batch of {batch}."
        argument = call.args[1]
        text = ast.get_source_segment(module.text, argument) or ""
        new_text = rewritten(text, size // batch, literal_int(argument))
        span = lines.span(
            argument.lineno,
            argument.col_offset,
            argument.end_lineno or argument.lineno,
            argument.end_col_offset or 0,
        )
        call_span = lines.span(
            call.lineno, call.col_offset, call.end_lineno or call.lineno, call.end_col_offset or 0
        )
        call_text = ast.get_source_segment(module.text, call) or ""
        return span, text, new_text, call_text, _replaced(call_text, call_span, span, new_text)
    return "torchls rewrites only a literal `view(-1, n)`; this line's reshape is not one."


# -- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    texts: dict[str, str]  # path -> the whole edited text that profiled
    titles: tuple[str, ...]  # one per edit, in the order they were made
    why: str = ""  # when not ok: what happened after the edits


async def verify(
    first: Explanation,
    params: Mapping[str, Any],
    text_of: Callable[[str], str | None],
    run: Runner,
    project_of: Callable[[Mapping[str, str]], Project],
    model: ModelClass | None = None,
) -> Verification:
    """Apply `first`'s edit to the job's sources and profile again; while the model then fails
    with another shape error that has an edit too, chain it (at most MAX_CHAIN edits)."""
    edited: dict[str, str] = {}
    titles: list[str] = []
    current = first
    for _ in range(MAX_CHAIN):
        if current.edit is None or current.edit_path is None:
            return Verification(False, edited, tuple(titles), _no_edit(current))
        path = current.edit_path
        base = edited.get(path)
        if base is None:
            base = text_of(path)
        if base is None:
            return Verification(False, edited, tuple(titles), f"{path} cannot be read")
        edited[path] = apply_edits(base, [current.edit])
        titles.append(current.title)
        sources = {**dict(params.get("sources") or {}), **edited}
        result = await run({**params, "sources": sources})
        if result.ok:
            return Verification(True, edited, tuple(titles))
        data = shape_error_of(result)
        if data is None:
            return Verification(
                False, edited, tuple(titles), f"the model then fails: {result.message}"
            )
        data = _on_job_paths(data, sources)
        current = explain(data, project_of(edited), _model_in(model, edited, project_of))
        if not current.edit:
            return Verification(
                False, edited, tuple(titles), f"the model then fails: {current.message}"
            )
    return Verification(
        False,
        edited,
        tuple(titles),
        f"the model still fails after {MAX_CHAIN} edits: {current.message}",
    )


def _model_in(
    model: ModelClass | None,
    edited: Mapping[str, str],
    project_of: Callable[[Mapping[str, str]], Project],
) -> ModelClass | None:
    if model is None:
        return None
    module = project_of(edited).module_file(model[0].path)
    return (module, model[1]) if module is not None else None


def _no_edit(explanation: Explanation) -> str:
    return explanation.notes[0] if explanation.notes else "torchls has no edit for it"


# -- the CLI ---------------------------------------------------------------------------------------


def describe_shape_error(
    data: Mapping[str, Any],
    project: Project,
    model: ModelClass | None = None,
    verification: Verification | None = None,
) -> list[str]:
    """Lines for `torchls profile`'s failure output: the explanation at the failing line, where
    the layer is built, and the fix as a one-line edit. `verification`, when given, says
    whether the fix made the profile go through."""
    explanation = explain(data, project, model)
    lines = [f"{_where(project, explanation.file, explanation.line)}{explanation.message}"]
    construction = explanation.construction
    if construction is not None:
        where = _where(project, construction.path, construction.line)
        lines.append(f"{where}{explanation.built_here}: {_one_line(construction.call_text)}")
    if explanation.edit is not None and explanation.edit_path is not None:
        line = explanation.edit.span.start_line
        where = _where(project, explanation.edit_path, line)
        fix = f"fix: {where}{_one_line(explanation.before)} -> {_one_line(explanation.after)}"
        if verification is not None and verification.ok and len(verification.titles) > 1:
            # the chain: every changed line, as it reads before and after
            lines += _changed_lines(project, verification)
            lines[-1] += " (verified: with these edits the model profiles)"
            return lines
        if verification is not None:
            verdict = "verified: the model then profiles" if verification.ok else "not enough"
            fix += f" ({verdict}{'' if verification.ok else ': ' + verification.why})"
        lines.append(fix)
    return lines


def _changed_lines(project: Project, verification: Verification) -> list[str]:
    found = []
    for path, new in verification.texts.items():
        old = project.read(path)
        if old is None:
            continue
        before, after = Lines(old).lines, Lines(new).lines
        if len(before) != len(after):
            found.append(f"fix: {_where(project, path, None)}the edited file (lines moved)")
            continue
        for number, (was, now) in enumerate(zip(before, after, strict=True)):
            if was != now:
                where = _where(project, path, number)
                found.append(f"fix: {where}{was.strip()} -> {now.strip()}")
    return found


async def describe_and_verify(
    data: Mapping[str, Any],
    project: Project,
    params: Mapping[str, Any],
    run: Runner,
    model: ModelClass | None = None,
) -> list[str]:
    """describe_shape_error, with the fix verified first: the profile job `params` is run again
    (by `run`) on the edited text, chaining further edits as the editor does. Nothing is
    written to disk."""
    explanation = explain(data, project, model)
    verification = None
    if explanation.edit is not None:

        def project_of(edited: Mapping[str, str]) -> Project:
            return Project(str(project.root) if project.root else None, edited.get)

        verification = await verify(explanation, params, project.read, run, project_of, model)
    return describe_shape_error(data, project, model, verification)


def model_class(project: Project, ref: Mapping[str, Any]) -> ModelClass | None:
    """The profiled model's file and class from a target's `ref`, when it is a workspace class."""
    return _model_class(project, ref)


def _where(project: Project, path: str | None, line: int | None) -> str:
    if path is None:
        return ""
    shown = path
    if project.root is not None:
        with contextlib.suppress(ValueError):
            shown = str(Path(path).resolve().relative_to(project.root))
    return f"{shown}:{line + 1}: " if line is not None else f"{shown}: "


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the language server ---------------------------------------------------------------------------


@dataclass
class _Finding:
    explanation: Explanation
    uri: str  # the document the diagnostic is on
    texts: dict[str, str]  # path -> the text the profile ran (the finding holds while equal)
    prepared: PreparedProfile
    model: ModelClass | None
    key: tuple[Any, ...] = field(default_factory=tuple)

    @property
    def verification_key(self) -> str:
        """Same job, same texts, same edit: same verification (kept across refreshes)."""
        digest = hashlib.sha256(self.prepared.key.encode())
        digest.update(repr(self.key).encode())
        for path in sorted(self.texts):
            digest.update(path.encode() + b"\0" + self.texts[path].encode("utf-8", "surrogatepass"))
        return digest.hexdigest()


class ShapeChecks:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server
        self._findings: dict[str, list[_Finding]] = {}  # by the document whose models failed
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._verifying: set[asyncio.Task[None]] = set()
        self._verified: OrderedDict[str, Verification] = OrderedDict()  # by verification_key
        self._running: set[str] = set()
        self._listening: object = None  # the profile cache told of us (ModelCost may be remade)
        self.listen()

    def listen(self) -> None:
        """Be told of each profile result: a hover or a warm-up that meets a shape error (or a
        model that profiles again) refreshes the document it was made for."""
        cache = getattr(getattr(self.server, "model_cost", None), "cache", None)
        add = getattr(cache, "add_listener", None)
        if cache is None or cache is self._listening or add is None:
            return
        add(self._profiled)
        self._listening = cache

    def _profiled(self, prepared: PreparedProfile, result: JobResult) -> None:
        path = prepared.identity.split("::", 1)[0]
        failing = shape_error_of(result) is not None
        for uri in list(self.server.workspace.text_documents):
            if uri in self._pending or self.server.model_cost.kind(uri).path != path:
                continue
            if failing or uri in self._findings:
                self.schedule(uri)

    # -- scheduling ------------------------------------------------------------------------------

    def schedule(self, uri: str, delay: float = 0.0) -> None:
        """Refresh the document's shape diagnostics (after `delay`, replacing a waiting one)."""
        self.listen()
        previous = self._pending.pop(uri, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._refresh_later(uri, delay))
        self._pending[uri] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._pending.get(uri) is done:
                del self._pending[uri]

        task.add_done_callback(finished)

    def edited(self, uri: str) -> None:
        self.schedule(uri, DEBOUNCE_SECONDS)

    def forget(self, uri: str) -> None:
        task = self._pending.pop(uri, None)
        if task is not None:
            task.cancel()
        for finding in self._findings.pop(uri, []):
            if finding.uri != uri:
                self._republish(finding.uri)

    def close(self) -> None:
        for task in [*self._pending.values(), *self._verifying]:
            task.cancel()
        self._pending.clear()

    async def _refresh_later(self, uri: str, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            await self.refresh(uri)
        except asyncio.CancelledError:
            raise
        except Exception:  # diagnostics must never take the server down
            log.exception("checking the shapes of %s failed", uri)

    async def refresh(self, uri: str) -> None:
        """Profile the document's models (shared with the hover's cache) and turn the failures
        with a `shape_error` into diagnostics; verify their fixes in the background."""
        cost = self.server.model_cost
        models = cost.models(uri) if cost.blocker() is None else None
        if models is None:
            self._replace(uri, [])
            return
        project = models.project
        waiting = [(t, cost._prepare(models, t)) for t in models.first_targets(WARM_LIMIT)]
        found: list[_Finding] = []
        seen: set[tuple[Any, ...]] = set()
        for target, prepared in waiting:
            result = await asyncio.shield(cost.cache.get(prepared, background=True))
            data = shape_error_of(result)
            if data is None:
                continue
            data = _on_job_paths(data, prepared.params.get("sources") or {})
            model = _model_class(project, target.ref)
            explanation = explain(data, project, model)
            if explanation.file is None or explanation.line is None:
                continue
            # One failure seen from two targets (the class, and a construction of a class it
            # holds) is one diagnostic: the first target's, the outermost model's path.
            built = explanation.construction
            key = (
                explanation.file,
                explanation.line,
                explanation.code,
                str(data.get("received")),
                (built.path, built.line) if built else str(data.get("module")).rsplit(".")[-1],
            )
            if key in seen:
                continue
            seen.add(key)
            texts = self._texts_of(prepared, project, explanation)
            if texts is None or explanation.file is None:
                continue
            finding = _Finding(
                explanation, self._uri_of(explanation.file), texts, prepared, model, key=key
            )
            found.append(finding)
        if not self._unchanged(uri, models.module.text):
            return  # edited meanwhile: its own refresh is scheduled
        self._replace(uri, found)
        for finding in found:
            wanted = finding.verification_key
            if wanted not in self._verified and wanted not in self._running:
                self._verify_later(finding)

    def _unchanged(self, uri: str, text: str) -> bool:
        return bool(self.server.workspace.get_text_document(uri).source == text)

    def _texts_of(
        self, prepared: PreparedProfile, project: Project, explanation: Explanation
    ) -> dict[str, str] | None:
        paths = {p for p in (explanation.file, explanation.edit_path) if p}
        if explanation.construction is not None:
            paths.add(explanation.construction.path)
        sources = prepared.params.get("sources") or {}
        texts: dict[str, str] = {}
        for path in paths:
            text = sources.get(path)
            if text is None:
                text = project.read(path)
            if text is None:
                return None
            texts[path] = text
        return texts

    def _replace(self, uri: str, found: list[_Finding]) -> None:
        before = {f.uri for f in self._findings.get(uri, [])}
        if found:
            self._findings[uri] = found
        else:
            self._findings.pop(uri, None)
        for target in sorted(before | {f.uri for f in found}):
            self._republish(target)

    def _republish(self, uri: str) -> None:
        checks = getattr(self.server, "load_checks", None)
        republish = getattr(checks, "republish", None)
        if republish is not None:
            republish(uri)

    # -- verification ----------------------------------------------------------------------------

    def _verify_later(self, finding: _Finding) -> None:
        if finding.explanation.edit is None:
            return
        self._running.add(finding.verification_key)
        task = asyncio.ensure_future(self._verify(finding))
        self._verifying.add(task)
        task.add_done_callback(self._verifying.discard)

    async def _verify(self, finding: _Finding) -> None:
        key = finding.verification_key
        try:
            verification = await verify(
                finding.explanation,
                finding.prepared.params,
                lambda path: finding.texts.get(path) or self._project({}).read(path),
                self._run,
                self._project,
                finding.model,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("verifying the shape fix for %s failed", finding.uri)
            return
        finally:
            self._running.discard(key)
        self._verified[key] = verification
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
        if any(f.verification_key == key for f in self._current(finding.uri)):
            self._republish(finding.uri)

    def verification(self, finding: _Finding) -> Verification | None:
        return self._verified.get(finding.verification_key)

    async def _run(self, params: dict[str, Any]) -> JobResult:
        worker = self.server.worker
        assert worker is not None
        return await worker.run("profile", params, background=True)

    def _project(self, edited: Mapping[str, str]) -> Project:
        documents = self.server.workspace.text_documents
        kind = self.server.model_cost.kind

        def open_text(path: str) -> str | None:
            if path in edited:
                return edited[path]
            for uri, document in documents.items():
                found = kind(uri)
                if found.analysed and found.path == path:
                    return str(document.source)
            return None

        return Project(self.server.workspace_root, open_text)

    # -- what the editor sees --------------------------------------------------------------------

    def _uri_of(self, path: str) -> str:
        for uri in self.server.workspace.text_documents:
            if self.server.model_cost.kind(uri).path == path:
                return str(uri)
        return from_fs_path(path) or Path(path).as_uri()

    def _is_current(self, finding: _Finding) -> bool:
        project = self._project({})
        return all(project.read(path) == text for path, text in finding.texts.items())

    def _current(self, uri: str) -> list[_Finding]:
        found = [
            finding
            for findings in self._findings.values()
            for finding in findings
            if finding.uri == uri
        ]
        unique: dict[tuple[Any, ...], _Finding] = {}
        for finding in found:
            if finding.key not in unique and self._is_current(finding):
                unique[finding.key] = finding
        return list(unique.values())

    def diagnostics(self, uri: str) -> list[types.Diagnostic]:
        """The shape diagnostics on `uri` that hold for its current text (load_checks merges
        them into its publish)."""
        return [self._diagnostic(finding) for finding in self._current(uri)]

    def _diagnostic(self, finding: _Finding) -> types.Diagnostic:
        explanation = finding.explanation
        assert explanation.file is not None and explanation.line is not None
        text = finding.texts.get(explanation.file, "")
        line_text = Lines(text).get(explanation.line)
        stripped = line_text.strip()
        start = utf16_length(line_text[: len(line_text) - len(line_text.lstrip())])
        span = Span(explanation.line, start, explanation.line, start + utf16_length(stripped))
        message = explanation.message
        verification = self.verification(finding)
        if verification is not None and not verification.ok and verification.titles:
            tried = _changing(verification.titles[-1] if len(verification.titles) > 1 else "")
            first = _changing(verification.titles[0])
            after = f" (and then {tried})" if tried else ""
            message += f" {first}{after} is not enough: {verification.why}"
        elif verification is not None and len(verification.titles) > 1:
            message += (
                " Fixing it moves the failure further on; the quick fix also does: "
                + "; ".join(_lower(title) for title in verification.titles[1:])
                + ", after which the model profiles."
            )
        related = []
        construction = explanation.construction
        if construction is not None:
            related.append(
                types.DiagnosticRelatedInformation(
                    location=types.Location(
                        uri=self._uri_of(construction.path), range=_range(construction.call_span)
                    ),
                    message=explanation.built_here,
                )
            )
        return types.Diagnostic(
            range=_range(span),
            message=message,
            severity=types.DiagnosticSeverity.Error,
            code=explanation.code,
            source=SOURCE,
            related_information=related or None,
        )

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        """The verified fix of each shape diagnostic the range touches."""
        if not kind_wanted(types.CodeActionKind.QuickFix, params.context.only):
            return []
        uri = params.text_document.uri
        wanted = params.range
        actions = []
        for finding in self._current(uri):
            verification = self.verification(finding)
            explanation = finding.explanation
            if verification is None or not verification.ok or explanation.line is None:
                continue
            if not wanted.start.line <= explanation.line <= wanted.end.line:
                continue
            changes = []
            for path, new in verification.texts.items():
                old = finding.texts.get(path) or self._project({}).read(path)
                if old is None:
                    break
                edits = _line_edits(old, new)
                target = self._uri_of(path)
                version = self.server.workspace.get_text_document(target).version
                changes.append(
                    types.TextDocumentEdit(
                        text_document=types.OptionalVersionedTextDocumentIdentifier(
                            uri=target, version=version
                        ),
                        edits=[
                            types.TextEdit(range=_range(e.span), new_text=e.text) for e in edits
                        ],
                    )
                )
            else:
                title = " and ".join(
                    [verification.titles[0], *(_lower(t) for t in verification.titles[1:])]
                )
                actions.append(
                    types.CodeAction(
                        title=f"torchls: {title}",
                        kind=types.CodeActionKind.QuickFix,
                        diagnostics=[self._diagnostic(finding)],
                        is_preferred=True,
                        edit=types.WorkspaceEdit(document_changes=changes),
                    )
                )
        return actions


def _on_job_paths(data: Mapping[str, Any], sources: Mapping[str, str]) -> dict[str, Any]:
    """The traceback names the file as the worker opened it; the job's sources name it as the
    editor does (a symlinked folder differs): the editor's name is the one to read and publish
    on."""
    found = dict(data)
    file = found.get("file")
    if not isinstance(file, str) or file in sources:
        return found
    real = os.path.realpath(file)
    for path in sources:
        if os.path.realpath(path) == real:
            found["file"] = path
            break
    return found


def _line_edits(old: str, new: str) -> list[Edit]:
    """The edits that turn `old` into `new`, one per changed line when no line was added or
    removed (a chain's edits far apart stay apart), else one for the changed stretch."""
    before, after = split_lines(old), split_lines(new)
    if len(before) != len(after):
        return [diff(old, new)]
    edits = []
    for number, (was, now) in enumerate(zip(before, after, strict=True)):
        if was != now:
            edit = diff(was, now)
            span = Span(number, edit.span.start_char, number, edit.span.end_char)
            edits.append(Edit(span, edit.text))
    return edits


def _lower(title: str) -> str:
    return title[:1].lower() + title[1:]


def _changing(title: str) -> str:
    """ "Change x of y to z" -> "Changing x of y to z"."""
    return "Changing " + title[len("Change ") :] if title.startswith("Change ") else title


def _model_class(project: Project, ref: Mapping[str, Any]) -> ModelClass | None:
    path, qualname = ref.get("file"), ref.get("qualname")
    if not isinstance(path, str) or not isinstance(qualname, str):
        return None
    module = project.module_file(path)
    return (module, qualname) if module is not None else None


def _range(span: Span) -> types.Range:
    return types.Range(
        start=types.Position(line=span.start_line, character=span.start_char),
        end=types.Position(line=span.end_line, character=span.end_char),
    )


def install(server: TorchLanguageServer) -> ShapeChecks:
    """The server's ShapeChecks (lsp/server.py makes it with the server; made here for a
    server object that has none)."""
    checks = getattr(server, "shape_checks", None)
    if not isinstance(checks, ShapeChecks):
        checks = ShapeChecks(server)
        server.shape_checks = checks
    return checks
