"""Hover on a model: find the target under the cursor, get its profile, render it.

Glue between the LSP documents, `source/` (what is under the cursor), `cost/` (job, cache,
report) and the worker. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from torchls import status
from torchls.cost import report
from torchls.cost.cache import ProfileCache
from torchls.cost.request import PreparedProfile, prepare
from torchls.lsp.document_kinds import ELSEWHERE, FILE, DocumentKind, document_kind
from torchls.source.models import FileModels, ModelTarget, PlacedTarget
from torchls.source.project import ModuleFile, Project, parse_text
from torchls.worker import protocol
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

# How long a hover waits for a fresh result before showing the previous one, marked stale.
STALE_AFTER_SECONDS = 1.5
# Targets warmed per opened or saved file; the rest are computed on first hover.
WARM_LIMIT = 12
WARM_DELAY_SECONDS = 0.05
# Documents larger than this are parsed and indexed in two steps by models_soon.
PARSE_ALONE_CHARS = 64 * 1024
BREATHE_SECONDS = 0.005


class ModelCost:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server
        self.cache = ProfileCache(self._run)
        self._parsed: dict[str, tuple[int | None, str, FileModels]] = {}
        self._parsed_alone: dict[str, tuple[str, ast.Module | None]] = {}  # see models_soon
        self._sizes: dict[str, tuple[str, int]] = {}  # uri -> (text, its UTF-8 size)
        self._warming: dict[str, asyncio.Task[None]] = {}

    async def _run(self, params: dict[str, Any], background: bool) -> JobResult:
        worker = self.server.worker
        assert worker is not None
        return await worker.run("profile", params, background=background)

    # -- documents -----------------------------------------------------------------------------

    def kind(self, uri: str) -> DocumentKind:
        return document_kind(uri, self.server.workspace_root)

    def project(self) -> Project:
        documents = self.server.workspace.text_documents

        def open_text(path: str) -> str | None:
            for uri, document in documents.items():
                kind = self.kind(uri)
                if kind.analysed and kind.path == path:
                    return str(document.source)
            return None

        return Project(self.server.workspace_root, open_text)

    def too_large(self, uri: str) -> str | None:
        """Why the document is not analysed, if it is over the size limit, in a sentence."""
        document = self.server.workspace.get_text_document(uri)
        source = document.source
        limit = self.server.options.max_file_size_kb
        if len(source) <= limit * 256:  # at most 4 UTF-8 bytes a character: surely under
            return None
        known = self._sizes.get(uri)
        if known is None or known[0] is not source:
            known = (source, len(source.encode("utf-8", "surrogatepass")))
            self._sizes[uri] = known
        size = known[1]
        if size <= limit * 1024:
            return None
        return (
            f"torchls does not analyse this file: its {size / 1024:,.0f} KB are over the "
            f"{limit:,} KB limit (setting torchls.maxFileSizeKB), so it gets no load checks, "
            "k-fold lint, quick fixes or model hovers"
        )

    def current(self, uri: str) -> FileModels | None:
        """The document's models if they are already made for its current text, else None."""
        cached = self._parsed.get(uri)
        if cached is None:
            return None
        document = self.server.workspace.get_text_document(uri)
        if cached[0] == document.version and cached[1] == document.source:
            return cached[2]
        return None

    def models(self, uri: str, elsewhere: bool = False) -> FileModels | None:
        """The document's models, if it gets features (document_kind); with `elsewhere`, also
        for documents that get none, to say so on a hover. None over the size limit."""
        kind = self.kind(uri)
        document = self.server.workspace.get_text_document(uri)
        if self.too_large(uri) is not None:
            return None
        path = kind.path
        if kind.kind == ELSEWHERE and elsewhere:
            # Placed where no workspace file is: nothing of today's workspace is read for it.
            name = re.sub(r"[^\w.-]", "_", Path(document.path or "").name) or "document"
            path = str(Path(os.sep, "torchls-elsewhere", name))
        if path is None or not (kind.analysed or elsewhere):
            return None
        if kind.kind == FILE and not path.endswith((".py", ".pyi")):
            return None
        if kind.kind != FILE and document.language_id not in ("python", None, ""):
            return None
        source = document.source
        cached = self._parsed.get(uri)
        if cached is not None and cached[0] == document.version and cached[1] == source:
            return cached[2]
        project = self.project()
        module_name, is_package, _ = project.module_name(path)
        module = ModuleFile(path, module_name, is_package, source)
        parsed = self._parsed_alone.pop(uri, None)
        if parsed is not None and parsed[0] == source:
            module.adopt_tree(parsed[1])
        project.adopt(module)
        models = FileModels(project, module)
        self._parsed[uri] = (document.version, source, models)
        return models

    async def models_soon(self, uri: str) -> FileModels | None:
        """models(), but a large file is parsed first and indexed after a pause: a request that
        comes in meanwhile waits for one of the two, not both."""
        document = self.server.workspace.get_text_document(uri)
        source = document.source
        if (
            self.current(uri) is None
            and len(source) > PARSE_ALONE_CHARS
            and self.too_large(uri) is None
        ):
            self._parsed_alone[uri] = (source, parse_text(source, document.path or uri))
            await asyncio.sleep(BREATHE_SECONDS)
            if self.server.workspace.get_text_document(uri).source != source:
                self._parsed_alone.pop(uri, None)
                return None  # edited meanwhile
        return self.models(uri)

    def edited(self, uri: str) -> None:
        """The document changed: its old models go now, not when the new ones are made (two
        trees of a large file at once would double the server's memory)."""
        self._parsed.pop(uri, None)
        self._parsed_alone.pop(uri, None)

    def forget(self, uri: str) -> None:
        self._parsed.pop(uri, None)
        self._parsed_alone.pop(uri, None)
        self._sizes.pop(uri, None)
        task = self._warming.pop(uri, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for task in self._warming.values():
            task.cancel()
        self._warming.clear()

    def _prepare(self, models: FileModels, target: ModelTarget) -> PreparedProfile:
        return prepare(
            target,
            models.project,
            models.module.path,
            self.server.options.default_input_shapes,
            self.server.current_status.torch,
            occurrence=models.occurrence(target),
        )

    def blocker(self) -> str | None:
        """Why no model can be profiled right now, in a sentence, or None."""
        options = self.server.options
        if not options.trusted:
            return (
                "This workspace is not trusted, so torchls runs none of its code. Trust the "
                "workspace (Workspaces: Manage Workspace Trust) to see what its models cost."
            )
        if not options.allow_user_code:
            return (
                "The setting `torchls.allowUserCode` is off, so torchls runs none of your code. "
                "Turn it on to see what your models cost."
            )
        current = self.server.current_status
        if current.state == status.MISSING_TORCH:
            return (
                f"torch is not installed in `{current.python}`. Install it there, or point "
                "`torchls.worker.interpreter` at the environment that has it."
            )
        if current.state == status.BROKEN_TORCH:
            return f"{current.message}."
        return None

    # -- hover ---------------------------------------------------------------------------------

    async def hover(self, params: types.HoverParams) -> types.Hover | None:
        uri = params.text_document.uri
        kind = self.kind(uri)
        models = self.models(uri, elsewhere=True)
        if models is None:
            return None
        target = models.target_at(params.position.line, params.position.character)
        if target is None:
            return None
        span = target.span
        hover_range = types.Range(
            start=types.Position(line=span.start_line, character=span.start_char),
            end=types.Position(line=span.end_line, character=span.end_char),
        )
        blocker = kind.refusal() if kind.kind == ELSEWHERE else self.blocker()
        if blocker is None and isinstance(target, PlacedTarget) and target.refusal:
            blocker = target.refusal  # a factory function that loads or writes: never run
        if blocker is not None:
            return _hover(report.blocked_markdown(target.name, blocker), hover_range)
        prepared = self._prepare(models, target)
        future = self.cache.get(prepared)
        previous = self.cache.previous(prepared)
        stale = False
        if not future.done() and previous is not None:
            try:
                result = await asyncio.wait_for(asyncio.shield(future), STALE_AFTER_SECONDS)
            except asyncio.TimeoutError:
                result, stale = previous, True
        else:
            result = await asyncio.shield(future)
        return _hover(render(prepared, result, stale), hover_range)

    # -- warming -------------------------------------------------------------------------------

    def warm(self, uri: str) -> None:
        """Profile the file's models in the background, so that the first hover is instant."""
        if self.blocker() is not None:
            return
        previous = self._warming.pop(uri, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._warm(uri))
        self._warming[uri] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._warming.get(uri) is done:
                del self._warming[uri]

        task.add_done_callback(finished)

    async def _warm(self, uri: str) -> None:
        # Let the diagnostics of the same didOpen queue their job first: a warm-up that finds
        # the worker idle would take it, and priority only orders jobs that are waiting.
        await asyncio.sleep(WARM_DELAY_SECONDS)
        models = self.models(uri)
        if models is None:
            return
        # The jobs take seconds, and the file's tree (which a target's defining file holds)
        # must not outlive its version meanwhile: the jobs keep copies without it.
        waiting = [
            dataclasses.replace(prepared, target=dataclasses.replace(target, defining_file=None))
            for target in models.first_targets(WARM_LIMIT)
            if (prepared := self._prepare(models, target))
        ]
        del models
        for prepared in waiting:
            if self.cache.peek(prepared) is not None:
                continue
            with contextlib.suppress(Exception):
                # One job at a time: a hover waits behind one warm-up job at most.
                await asyncio.shield(self.cache.get(prepared, background=True))


def render(prepared: PreparedProfile, result: JobResult, stale: bool = False) -> str:
    target = prepared.target
    context = report.ReportContext(
        call=target.call_text(),
        args_source=target.args_source,
        kind=target.kind,
        problems=list(prepared.problems),
        stale=stale,
    )
    if isinstance(target, PlacedTarget) and target.submodule:
        return _submodule_markdown(target, result, context)
    if result.ok:
        return report.markdown(result.value, context)
    return report.failure_markdown(target.name, _failure_sentence(result), context)


def _submodule_markdown(
    target: PlacedTarget, result: JobResult, context: report.ReportContext
) -> str:
    name = f"self.{target.submodule}"
    if not result.ok:
        sentence = _failure_sentence(result)
        why = f"Its share comes from profiling {target.parent}, which failed: {sentence}"
        return report.failure_markdown(name, why, context)
    if not result.value.get("submodule"):  # a worker that predates the submodule parameter
        return report.failure_markdown(
            name, f"the worker did not report its share of {target.parent}.", context
        )
    missing = result.value["submodule"].get("missing")
    if missing:
        return f"**{name}** is no submodule: {missing}, so it has no share of the count."
    return report.submodule_markdown(result.value, context, target.parent)


def _failure_sentence(result: JobResult) -> str:
    message = result.message.rstrip(".")
    sentence = f"{message[:1].upper()}{message[1:]}."
    if result.error_kind == protocol.ERROR_TIMEOUT:
        sentence += " If the model needs longer, raise `torchls.worker.timeoutSeconds`."
    elif result.error_kind == protocol.ERROR_MEMORY:
        sentence += " Raise `torchls.worker.memoryLimitMB` if the model needs more."
    return sentence


def _hover(markdown: str, hover_range: types.Range) -> types.Hover:
    return types.Hover(
        contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=markdown),
        range=hover_range,
    )
