"""CodeLens above each model class and each construction with a stated input:
`25.6 M params · 4.09 G MACs · (1, 3, 224, 224)`. Listing the lenses needs only the file's
analysis; each title waits for its model's profile (`codeLens/resolve`). A click opens the
model report (`torchls.showModelReport`, a client command)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from torchls import status
from torchls.cost import report
from torchls.lsp.model_report import blocked, profile
from torchls.lsp.shape_checks import shape_error_of
from torchls.source.models import FileModels, ModelTarget
from torchls.source.spec import describe_json
from torchls.worker.client import JobResult

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

CMD_SHOW_MODEL_REPORT = "torchls.showModelReport"


def shows_lens(target: ModelTarget) -> bool:
    """A model class, or a construction whose input the source states (not a guess)."""
    if target.kind == "class":
        return True
    return target.kind == "construction" and target.inputs is not None and not target.inputs.guess


def title(result: JobResult, name: str) -> str:
    if not result.ok:
        mismatch = shape_error_of(result)
        if mismatch is not None:
            return _mismatch_title(mismatch, name)
        return f"⚠ torchls could not profile {name}: hover {name} for why"
    value = result.value
    parts = [f"{report.count(value['parameters']['total'])} params"]
    varies = value.get("variation")
    if varies:
        low, high = varies["macs"]["min"], varies["macs"]["max"]
        parts.append(f"{report.count_range(low, high)} MACs (varies)")
    else:
        parts.append(f"{report.count(value['macs'])} MACs")
    spec = value.get("inputs") or {}
    shape = describe_json(spec)
    if shape:
        parts.append(f"{shape} (a guess)" if spec.get("guess") else shape)
    return " · ".join(parts)


def blocked_title(server: TorchLanguageServer, reason: str) -> str:
    options = server.options
    if not options.trusted:
        return "torchls runs no code in an untrusted workspace: no cost shown"
    if not options.allow_user_code:
        return "torchls.allowUserCode is off: no cost shown"
    if server.current_status.state == status.MISSING_TORCH:
        return "torch is not installed for torchls: no cost shown"
    return f"torchls cannot profile this: {reason[:80].rstrip('.')}"


class CodeLenses:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server

    def lenses(self, params: types.CodeLensParams) -> list[types.CodeLens] | None:
        if not self.server.options.code_lens:
            return None
        uri = params.text_document.uri
        models = self.server.model_cost.models(uri)
        if models is None:
            return None
        version = self.server.workspace.get_text_document(uri).version
        lenses = []
        seen: dict[tuple[str, str], int] = {}
        for target in models.targets():
            # occurrence among targets of the same kind and name, as models.occurrence counts
            occurrence = seen.get((target.kind, target.name), 0)
            seen[(target.kind, target.name)] = occurrence + 1
            if not shows_lens(target):
                continue
            span = target.span
            lenses.append(
                types.CodeLens(
                    range=types.Range(
                        start=types.Position(line=span.start_line, character=span.start_char),
                        end=types.Position(line=span.end_line, character=span.end_char),
                    ),
                    data={
                        "uri": uri,
                        "version": version,
                        "kind": target.kind,
                        "name": target.name,
                        "occurrence": occurrence,
                    },
                )
            )
        return lenses

    async def resolve(self, lens: types.CodeLens) -> types.CodeLens:
        data = lens.data if isinstance(lens.data, dict) else {}
        uri = data.get("uri")
        start = lens.range.start
        arguments = [{"uri": uri, "line": start.line, "character": start.character}]
        if not isinstance(uri, str):
            return lens
        models = self.server.model_cost.models(uri)
        target = _find(models, data) if models is not None else None
        if models is None or target is None:
            # the file changed since the lenses were listed: the client asks again
            lens.command = types.Command(title="torchls: …", command="")
            return lens
        reason = blocked(self.server, uri, target)
        if reason is not None:
            text = blocked_title(self.server, reason)
        else:
            _, result = await profile(self.server, models, target)
            text = title(result, target.name)
        lens.command = types.Command(title=text, command=CMD_SHOW_MODEL_REPORT, arguments=arguments)
        return lens


def _find(models: FileModels, data: dict[str, Any]) -> ModelTarget | None:
    occurrence = data.get("occurrence", 0)
    for target in models.targets():
        if target.kind == data.get("kind") and target.name == data.get("name"):
            if occurrence == 0:
                return target
            occurrence -= 1
    return None


def _mismatch_title(data: dict[str, Any], name: str) -> str:
    """A forward that fails on a shape: which layer, what it expects and receives (the error
    and its fix are on the failing line)."""
    inputs = str(data.get("inputs") or "")
    at = f" at {inputs}" if inputs else ""
    module = str(data.get("module") or "")
    expects = data.get("expects") if isinstance(data.get("expects"), dict) else None
    received = data.get("received")
    if module and expects is not None and isinstance(received, int):
        argument = str(expects.get("argument") or "")
        what = f"{argument}={expects.get('value')}" if argument else str(expects.get("value"))
        return f"⚠ {name} fails{at}: {module} has {what}, receives {received}"
    where = f" in {module}" if module else ""
    return f"⚠ {name} fails{at}: a shape mismatch{where} (the error is on its forward line)"
