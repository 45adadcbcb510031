"""The `torchls.downgradeCheckpoint` command: protocol glue around downgrade/run.py.

`workspace/executeCommand` with arguments `[uri, options?]`. It shows a cancellable progress
(server-initiated `window/workDoneProgress`), asks its questions with `window/showMessageRequest`
(replace an existing output? allow the globals the file needs? cast?) unless `interactive` is
false, and ends with a message unless `notify` is false (the VS Code client shows its own, with a
"Reveal in Explorer" button). The result is `Outcome.as_json()`.

Two ways to stop it, with the same effect (the worker and its process group killed, no output
and no temporary file left, the input untouched): the progress' Cancel button
(`window/workDoneProgress/cancel`) answers with reason "cancelled"; `$/cancelRequest` answers
with the RequestCancelled error, once that is done (torchls.lsp.commands lets it reach the
command). The job time limit (worker.timeoutSeconds) bounds a worker that hangs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.uris import to_fs_path

from torchls.downgrade.run import Environment, Options, Outcome, downgrade
from torchls.downgrade.targets import DEFAULT_SUFFIX
from torchls.lsp.progress_work import run_with_progress

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

CMD_DOWNGRADE = "torchls.downgradeCheckpoint"
REPLACE, ALLOW, CAST, CANCEL = "Replace it", "Allow and run its code", "Cast and go on", "Cancel"


class DowngradeCommand:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server

    async def run(self, arguments: tuple[Any, ...]) -> dict[str, Any]:
        raw = arguments[0] if arguments else None
        given = arguments[1] if len(arguments) > 1 and isinstance(arguments[1], dict) else {}
        source = _path(raw)
        if source is None:
            outcome = Outcome(
                False,
                "error",
                f"{CMD_DOWNGRADE} needs a checkpoint's file URI as its first argument",
                Path(str(raw or "")),
            )
            return self._finish(outcome, given)
        try:
            options = _options(given)
        except ValueError as exc:
            return self._finish(Outcome(False, "error", str(exc), source), given)
        interactive = given.get("interactive", True) is not False
        while True:
            outcome = await self._attempt(source, options)
            if not interactive or outcome.ok:
                break
            retry = await self._ask(outcome, options)
            if retry is None:
                break
            options = retry
        return self._finish(outcome, given)

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
        outcome = await run_with_progress(
            server,
            "downgrade",
            f"Downgrading {source.name}",
            lambda report: downgrade(source, options, environment, report),
            lambda: Outcome(
                False, "cancelled", f"Cancelled: {source.name} was not downgraded", source
            ),
        )
        if outcome.reason == "timeout":
            outcome.message += " (the torchls.worker.timeoutSeconds setting changes the limit)"
        return outcome

    async def _ask(self, outcome: Outcome, options: Options) -> Options | None:
        """The question a refusal allows, and the options to try again with; None: stop."""
        if outcome.reason == "exists":
            answer = await self._question(types.MessageType.Warning, outcome.message, REPLACE)
            return replace(options, overwrite=True) if answer == REPLACE else None
        if outcome.reason == "unsupported-dtypes" and "Ask for a cast" in outcome.message:
            answer = await self._question(types.MessageType.Warning, outcome.message, CAST)
            return replace(options, cast=True) if answer == CAST else None
        if (
            outcome.reason == "refused-globals"
            and outcome.globals
            and self.server.options.user_code_allowed
            and not options.allow_globals
        ):
            answer = await self._question(types.MessageType.Warning, outcome.message, ALLOW)
            if answer == ALLOW:
                return replace(options, allow_globals=tuple(outcome.globals))
        return None

    async def _question(self, kind: types.MessageType, message: str, action: str) -> str | None:
        try:
            chosen = await self.server.window_show_message_request_async(
                types.ShowMessageRequestParams(
                    type=kind,
                    message=message,
                    actions=[
                        types.MessageActionItem(title=action),
                        types.MessageActionItem(CANCEL),
                    ],
                )
            )
        except Exception as exc:  # a client without showMessageRequest: no answer is no
            log.info("the downgrade's question was not answered: %s", exc)
            return None
        return chosen.title if chosen else None

    def _finish(self, outcome: Outcome, given: dict[str, Any]) -> dict[str, Any]:
        if given.get("notify", True) is not False and outcome.reason != "cancelled":
            kind = types.MessageType.Info if outcome.ok else types.MessageType.Error
            self.server.window_show_message(
                types.ShowMessageParams(type=kind, message=outcome.message)
            )
        log.info("downgrade %s: %s", outcome.input, outcome.message)
        return outcome.as_json()


def _path(raw: Any) -> Path | None:
    if not isinstance(raw, str) or not raw:
        return None
    if raw.startswith("file:"):
        fs = to_fs_path(raw)
        return Path(fs) if fs else None
    return Path(raw) if Path(raw).is_absolute() else None


def _options(given: dict[str, Any]) -> Options:
    """The options the client sent; ValueError (one line) for values that cannot be meant."""
    output = _path(given.get("output")) if given.get("output") else None
    if given.get("output") and output is None:
        raise ValueError("options.output must be a file URI or an absolute path")
    suffix = given.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise ValueError(
            f"options.suffix must be a string (the word in the output's name, default "
            f"{DEFAULT_SUFFIX!r}), not {type(suffix).__name__}"
        )
    allowed = given.get("allowGlobals")
    return Options(
        output=output,
        suffix=suffix or DEFAULT_SUFFIX,
        overwrite=given.get("overwrite") is True,
        cast=given.get("cast") is True,
        allow_globals=tuple(str(g) for g in allowed) if isinstance(allowed, list) else (),
    )
