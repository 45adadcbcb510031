"""The `torchls.convertCheckpoint` command: protocol glue around convert/run.py.

`workspace/executeCommand` with arguments `[uri, options]`, `options.kind` one of
safetensors | extract | cast | consolidate | weights-only, and optionally `key` (the state dict
to convert, as a `several-state-dicts` refusal's `candidates` name it), `dtype` (cast),
`stripPrefix` (extract), `maxShardSize` (bytes or "5GB"), `output`, `overwrite`, `interactive`,
`notify`, and `pointAt` (`{"uri": document, "range": the path's string literal}`: once the
file is written, that literal is edited to name it, through `workspace/applyEdit`; the
weights_only quick fix uses it). Like the downgrade: a cancellable server-initiated progress,
the one question a refusal allows ("Replace it" for an existing output) unless `interactive`
is false, a message at the end unless `notify` is false, and the result is
`Outcome.as_json()`. Choosing among several state dicts is left to the client (the candidates
are in the answer): an editor shows them as a list, which a message's buttons are not fit for.

Cancelling (the progress' Cancel button, answered with reason "cancelled", or `$/cancelRequest`)
kills the worker and removes the temporary files before the answer is sent.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from torchls.convert.command import size_argument
from torchls.convert.run import CAST_NAMES, KINDS, Options, Outcome, convert
from torchls.downgrade.run import Environment
from torchls.lsp.downgrade import _path
from torchls.lsp.progress_work import run_with_progress

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

CMD_CONVERT = "torchls.convertCheckpoint"
REPLACE, CANCEL = "Replace it", "Cancel"
_VERBS = {
    "safetensors": "Converting {} to safetensors",
    "extract": "Extracting the weights of {}",
    "cast": "Casting {} to {}",
    "consolidate": "Consolidating {}",
    "weights-only": "Making {} weights_only-clean",
}


class ConvertCommand:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server

    async def run(self, arguments: tuple[Any, ...]) -> dict[str, Any]:
        raw = arguments[0] if arguments else None
        given = arguments[1] if len(arguments) > 1 and isinstance(arguments[1], dict) else {}
        source = _path(raw)
        if source is None:
            message = f"{CMD_CONVERT} needs a checkpoint's file URI as its first argument"
            return self._finish(Outcome(False, "error", message, Path(str(raw or ""))), given)
        try:
            options = _options(given)
        except ValueError as exc:
            return self._finish(Outcome(False, "error", str(exc), source), given)
        interactive = given.get("interactive", True) is not False
        while True:
            outcome = await self._attempt(source, options)
            if not interactive or outcome.ok or outcome.reason != "exists":
                break
            if await self._question(outcome.message) != REPLACE:
                break
            options = replace(options, overwrite=True)
        if outcome.ok and outcome.output is not None and isinstance(given.get("pointAt"), dict):
            await self._point_at(given["pointAt"], source, outcome.output)
        return self._finish(outcome, given)

    async def _point_at(self, where: dict[str, Any], source: Path, output: Path) -> None:
        """The document's path literal, which names `source`, edited to name `output` (written
        beside it, so as relative as the literal was); nothing when the text moved meanwhile."""
        uri, where_range = where.get("uri"), where.get("range")
        if not isinstance(uri, str) or not isinstance(where_range, dict):
            return
        try:
            document = self.server.workspace.get_text_document(uri)
            start, end = where_range["start"], where_range["end"]
            line = document.lines[int(start["line"])]
            if int(start["line"]) != int(end["line"]) or not line.isascii():
                return  # then the UTF-16 columns are str indexes
            literal = line[int(start["character"]) : int(end["character"])]
        except (KeyError, IndexError, TypeError, ValueError):
            return
        quote = literal[:1]
        if quote not in {"'", '"'} or not literal.endswith(quote) or source.name not in literal:
            return
        if output.parent.resolve() != source.parent.resolve():
            return
        head, _, tail = literal.rpartition(source.name)
        edit = types.TextEdit(
            range=types.Range(
                start=types.Position(line=int(start["line"]), character=int(start["character"])),
                end=types.Position(line=int(end["line"]), character=int(end["character"])),
            ),
            new_text=head + output.name + tail,
        )
        change = types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(
                uri=uri, version=document.version
            ),
            edits=[edit],
        )
        label = f"Load {output.name}"
        try:
            await self.server.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(
                    edit=types.WorkspaceEdit(document_changes=[change]), label=label
                )
            )
        except Exception as exc:  # a client without applyEdit: the file is written all the same
            log.info("the load was not pointed at %s: %s", output.name, exc)

    async def _attempt(self, source: Path, options: Options) -> Outcome:
        server = self.server
        settings = server.options
        environment = Environment(
            command=settings.worker_command(),
            workspace=server.workspace_root,
            trusted=settings.user_code_allowed,
            memory_limit_mb=settings.worker.memory_limit_mb,
            timeout_seconds=settings.worker.timeout_seconds,
        )
        title = _VERBS[options.kind].format(source.name, options.dtype)
        outcome = await run_with_progress(
            server,
            "convert",
            title,
            lambda report: convert(source, options, environment, report),
            lambda: Outcome(
                False, "cancelled", f"Cancelled: {source.name} was not converted", source
            ),
        )
        if outcome.reason == "timeout":
            outcome.message += " (the torchls.worker.timeoutSeconds setting changes the limit)"
        return outcome

    async def _question(self, message: str) -> str | None:
        try:
            chosen = await self.server.window_show_message_request_async(
                types.ShowMessageRequestParams(
                    type=types.MessageType.Warning,
                    message=message,
                    actions=[types.MessageActionItem(REPLACE), types.MessageActionItem(CANCEL)],
                )
            )
        except Exception as exc:  # a client without showMessageRequest: no answer is no
            log.info("the conversion's question was not answered: %s", exc)
            return None
        return chosen.title if chosen else None

    def _finish(self, outcome: Outcome, given: dict[str, Any]) -> dict[str, Any]:
        if given.get("notify", True) is not False and outcome.reason != "cancelled":
            kind = types.MessageType.Info if outcome.ok else types.MessageType.Error
            self.server.window_show_message(
                types.ShowMessageParams(type=kind, message=outcome.message)
            )
        log.info("convert %s: %s", outcome.input, outcome.message)
        return outcome.as_json()


def _options(given: dict[str, Any]) -> Options:
    """The options the client sent; ValueError (one line) for values that cannot be meant."""
    kind = given.get("kind")
    if kind not in KINDS:
        raise ValueError(f"options.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    output = _path(given.get("output")) if given.get("output") else None
    if given.get("output") and output is None:
        raise ValueError("options.output must be a file URI or an absolute path")
    dtype = given.get("dtype", "bf16")
    if dtype not in CAST_NAMES:
        raise ValueError(f"options.dtype must be one of {', '.join(CAST_NAMES)}, not {dtype!r}")
    key, prefix, shard = given.get("key"), given.get("stripPrefix"), given.get("maxShardSize")
    if key is not None and not isinstance(key, str):
        raise ValueError("options.key must be a string, as a refusal's candidates name it")
    if prefix is not None and not isinstance(prefix, str):
        raise ValueError("options.stripPrefix must be a string such as 'module.'")
    try:
        shard_bytes = size_argument(str(shard)) if shard not in (None, "", 0) else 0
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"options.maxShardSize: {exc}") from None
    return Options(
        kind=kind,
        output=output,
        overwrite=given.get("overwrite") is True,
        key=key or None,
        max_shard_bytes=shard_bytes,
        strip_prefix=prefix or "",
        dtype=dtype,
        keep_norm_fp32=given.get("keepNormFp32") is True,
    )
