"""`torchls/modelReport`: the whole report of the model at a position, for the client's report
view (the CodeLens's command opens it). Failures and blockers are a one-sentence `error`."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from torchls.cost import model_report, report
from torchls.cost.request import PreparedProfile
from torchls.lsp.checkpoints import param
from torchls.lsp.document_kinds import ELSEWHERE
from torchls.lsp.model_cost import _failure_sentence
from torchls.source.models import FileModels, ModelTarget, PlacedTarget
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

MODEL_REPORT = "torchls/modelReport"


def blocked(server: TorchLanguageServer, uri: str, target: ModelTarget) -> str | None:
    """Why this target is not profiled, in a sentence, as the hover says it; or None."""
    model_cost = server.model_cost
    kind = model_cost.kind(uri)
    reason = kind.refusal() if kind.kind == ELSEWHERE else model_cost.blocker()
    if reason is None and isinstance(target, PlacedTarget) and target.refusal:
        reason = target.refusal
    return reason


async def profile(
    server: TorchLanguageServer, models: FileModels, target: ModelTarget
) -> tuple[PreparedProfile, JobResult]:
    """The target's profile: from the cache, else the running job, else a new one."""
    prepared = server.model_cost._prepare(models, target)
    result = await asyncio.shield(server.model_cost.cache.get(prepared))
    return prepared, result


def context_of(prepared: PreparedProfile) -> report.ReportContext:
    target = prepared.target
    return report.ReportContext(
        call=target.call_text(),
        args_source=target.args_source,
        kind=target.kind,
        problems=list(prepared.problems),
    )


class ModelReport:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server

    async def handle(self, params: Any) -> dict[str, Any]:
        try:
            return await self.build(params)
        except Exception as exc:  # the view shows the sentence; the traceback stays in the log
            log.exception("%s failed", MODEL_REPORT)
            return {"error": f"The model report failed: {type(exc).__name__}: {str(exc)[:200]}"}

    async def build(self, params: Any) -> dict[str, Any]:
        uri, line, character = (param(params, key) for key in ("uri", "line", "character"))
        if not isinstance(uri, str) or not isinstance(line, int) or not isinstance(character, int):
            return {
                "error": f"{MODEL_REPORT} needs a document uri and a 0-based line and character."
            }
        models = self.server.model_cost.models(uri)
        if models is None:
            why = self.server.model_cost.too_large(uri)
            return {"error": why or "torchls does not analyse this document."}
        target = models.target_at(line, character)
        if target is None:
            return {"error": f"There is no model at line {line + 1}, character {character + 1}."}
        reason = blocked(self.server, uri, target)
        if reason is not None:
            return {"error": reason}
        prepared, result = await profile(self.server, models, target)
        if not result.ok:
            return {
                "error": f"torchls could not profile {target.name}: {_failure_sentence(result)}"
            }
        value = result.value
        if isinstance(target, PlacedTarget) and target.submodule:
            # a `self.x = ...` line: the report of the model it is part of
            value = {**value, "name": target.parent}
        document = model_report.build(
            value, context_of(prepared), self.server.options.gpu_memory_gb
        )
        document["uri"] = uri
        document["line"] = target.span.start_line
        document["character"] = target.span.start_char
        return document
