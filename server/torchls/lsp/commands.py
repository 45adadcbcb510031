"""`workspace/executeCommand` that `$/cancelRequest` can cancel.

pygls 2.1.1 (upstream openlawlibrary/pygls, protocol/language_server.py
`lsp_workspace__execute_command`) runs executeCommand as a generator: the request's id is bound
to a bare Future, and the command's own coroutine runs as a second task under a random id. A
`$/cancelRequest` cancels the bare Future, so the client is told "canceled" at once while the
command goes on to its end: a Downgrade kept its worker running and wrote its output after the
editor had been told it would not (issue 14). Here the handler is a coroutine, so pygls binds
the request's id to the task that runs the command, and cancelling the request cancels the
command where it waits; the answer (RequestCancelled) goes out when the command has cleaned up.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from lsprotocol import types
from pygls.constants import ATTR_EXECUTE_IN_THREAD
from pygls.exceptions import JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import _prepare_command_arguments, lsp_method


class CancellableCommands(LanguageServerProtocol):
    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(  # type: ignore[override]
        self, params: types.ExecuteCommandParams
    ) -> Any:
        handler = self.fm.commands.get(params.command)
        if handler is None:
            raise JsonRpcInvalidParams.of(
                ValueError(f"Command name {params.command!r} is not defined")
            )
        try:
            args, kwargs = _prepare_command_arguments(handler, params, self._converter)
        except Exception as exc:
            raise JsonRpcInvalidParams.of(exc) from None
        if getattr(handler, ATTR_EXECUTE_IN_THREAD, False):  # @server.thread()
            pool = self._server.thread_pool
            return await asyncio.wrap_future(pool.submit(handler, *args, **kwargs))
        result = handler(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
