"""A long job of the language server (a downgrade, a conversion) under a cancellable
window/workDoneProgress: the progress' Cancel button and `$/cancelRequest` both stop the job, and
either way the job has ended (worker killed, temporary files removed) before anyone is told."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from lsprotocol import types

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

Report = Callable[[str, "float | None"], None]
T = TypeVar("T")


async def run_with_progress(
    server: TorchLanguageServer,
    what: str,
    title: str,
    job: Callable[[Report], Awaitable[T]],
    on_cancel_button: Callable[[], T],
) -> T:
    """Runs `job(report)` under a progress titled `title`. The Cancel button makes the answer
    `on_cancel_button()`; a cancelled request is re-raised, for pygls to answer RequestCancelled."""
    token = await _progress_token(server, what, title)

    def report(message: str, percentage: float | None) -> None:
        if token is not None:
            value = types.WorkDoneProgressReport(
                message=message, percentage=None if percentage is None else int(percentage)
            )
            server.work_done_progress.report(token, value)

    work = asyncio.ensure_future(job(report))
    pressed: list[bool] = []  # the progress' Cancel button, as opposed to $/cancelRequest
    if token is not None:
        cancel = server.work_done_progress.tokens.get(token)
        if cancel is not None:
            loop = asyncio.get_running_loop()

            def on_cancel(future: concurrent.futures.Future[Any]) -> None:
                if future.cancelled():
                    pressed.append(True)
                    loop.call_soon_threadsafe(work.cancel)

            cancel.add_done_callback(on_cancel)
    try:
        return await work
    except asyncio.CancelledError:
        # A cancelled request cancels `work` too, where this task waits on it; either way the
        # work must have ended before anyone is told.
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        if not pressed:
            raise
        return on_cancel_button()
    finally:
        if token is not None:
            server.work_done_progress.end(token, types.WorkDoneProgressEnd())
            server.work_done_progress.tokens.pop(token, None)


async def _progress_token(server: TorchLanguageServer, what: str, title: str) -> str | None:
    capabilities = server.client_capabilities
    window = capabilities.window if capabilities else None
    if not (window and window.work_done_progress):
        return None
    token = f"torchls-{what}-{uuid.uuid4().hex}"
    try:
        await server.work_done_progress.create_async(token)
    except Exception as exc:  # a client may refuse; the command still runs
        log.info("no progress for the %s: %s", what, exc)
        return None
    server.work_done_progress.begin(
        token, types.WorkDoneProgressBegin(title=title, cancellable=True, percentage=0)
    )
    return token
