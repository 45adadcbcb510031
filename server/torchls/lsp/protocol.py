"""JSON-RPC and LSP lifecycle rules pygls 2.1.1 leaves out, and the transport that reads frames.

What pygls does, and what this module does instead (issue 14; upstream openlawlibrary/pygls,
protocol/json_rpc.py and protocol/language_server.py):

- A request whose params do not match the LSP types: pygls raises from inside `json.loads`'
  object hook, logs two tracebacks and never replies, so the client waits forever. Here it gets
  InvalidParams (-32602) with one line saying which field is wrong.
- A request after `shutdown`: pygls drops it without a reply. LSP says InvalidRequest (-32600).
- A request before `initialize`: pygls runs it, the handler fails on the missing workspace and
  the client receives the traceback. LSP says ServerNotInitialized (-32002).
- A handler that raises: pygls sends its traceback to the client in the error's `data`. Here the
  client gets one line; the traceback stays in the server's log.
- `jsonrpc` other than "2.0", a method that is not a string: pygls drops the request silently.
  Here: InvalidRequest.
- `$/cancelRequest` with an id that is an object or null: pygls raises TypeError (unhashable)
  with a traceback; an unknown id is a warning, though editors cancel finished requests all the
  time. Here one line, and the unknown id is a debug message.
- `exit` without `shutdown`: pygls calls sys.exit(1) but its `start_io` swallows SystemExit and
  the process exits 0. Here the code reaches the process (1, as LSP says).
- A client that offers UTF-8 positions first (Neovim does): pygls agrees to UTF-8, while every
  position torchls computes counts UTF-16 units (torchls.source.text). Here UTF-16 is always the
  encoding, which every client supports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any

from cattrs.errors import ClassValidationError
from cattrs.v import transform_error
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcServerNotInitialized,
)
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol.json_rpc import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
    MsgId,
)
from pygls.protocol.language_server import lsp_method

from torchls.lsp.commands import CancellableCommands
from torchls.lsp.documents import LspWorkspace
from torchls.lsp.encoded import encoded_message
from torchls.lsp.transport import READ_CHUNK, ChunkSource, FramingError, read_messages

log = logging.getLogger(__name__)


class InvalidMessage(Exception):
    """A message that cannot be turned into its LSP type; the text is one line."""


def _valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _shorten(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class TorchProtocol(CancellableCommands):  # `$/cancelRequest` reaches commands: commands.py
    def __init__(self, server: LanguageServer, converter: Any) -> None:
        super().__init__(server, converter)
        self.initialize_received = False

    # -- from the transport ---------------------------------------------------------------------

    def handle_raw(self, value: Any) -> None:
        """One JSON value the transport read: checked against JSON-RPC and the LSP lifecycle,
        then handed to pygls."""
        if not isinstance(value, dict):
            log.warning("ignored a message that is not a JSON object: %s", _shorten(value))
            return
        method = value.get("method")
        is_request = "method" in value and "id" in value
        msg_id = value.get("id")
        if is_request and not _valid_id(msg_id):
            log.warning("ignored a request whose id is not an integer or a string: %s", method)
            return
        if value.get("jsonrpc") != "2.0":
            self._refuse(value, JsonRpcInvalidRequest('"jsonrpc" must be "2.0"'))
            return
        if "method" in value and not isinstance(method, str):
            self._refuse(value, JsonRpcInvalidRequest('"method" must be a string'))
            return
        if method is not None and method != types.EXIT:
            if not self.initialize_received and method != types.INITIALIZE:
                self._refuse(
                    value,
                    JsonRpcServerNotInitialized(
                        f"{method} before initialize: the server is not initialized yet"
                    ),
                )
                return
            if self._shutdown:
                self._refuse(
                    value,
                    JsonRpcInvalidRequest(f"{method} after shutdown: the server is shutting down"),
                )
                return
        try:
            message = self.structure_message(value)
        except InvalidMessage as exc:
            self._refuse(value, JsonRpcInvalidParams(str(exc)))
            return
        if method == types.INITIALIZE:
            self.initialize_received = True
        try:
            self.handle_message(message)
        except JsonRpcException as exc:
            log.warning("could not handle %s: %s", method or "a response", exc.message)
        except Exception as exc:  # a bug: one line here, the traceback for --log-level DEBUG
            log.error(
                "could not handle %s: %s: %s", method or "a response", type(exc).__name__, exc
            )
            log.debug("traceback", exc_info=True)

    def _refuse(self, value: dict[str, Any], error: JsonRpcException) -> None:
        """Answer a request with `error`; for a notification, say it in the log."""
        method = value.get("method")
        if "method" in value and _valid_id(value.get("id")):
            log.warning("refused request %s: %s", _shorten(method, 40), error.message)
            self._send_response(value["id"], error=error.to_response_error())
        elif "method" in value:
            if self.initialize_received:
                log.warning("ignored notification %s: %s", _shorten(method, 40), error.message)
            # Before initialize, LSP says notifications are dropped: nothing to report.
        else:
            log.warning("ignored a response: %s", error.message)

    def structure_message(self, data: dict[str, Any]) -> Any:
        """The message as its lsprotocol type (pygls' own version logs a traceback for every
        message that does not match its type): raises InvalidMessage, one line."""
        if "jsonrpc" not in data:
            return data
        method = data.get("method")
        if "id" in data and "error" in data:
            kind: Any = types.ResponseErrorMessage
        elif "id" in data and method is not None:
            kind = self.get_message_type(method) or JsonRPCRequestMessage
        elif "id" in data:
            kind = self._result_types.pop(data["id"], None) or JsonRPCResponseMessage
        else:
            kind = self.get_message_type(method or "") or JsonRPCNotification
        try:
            return self._converter.structure(data, kind)
        except ClassValidationError as exc:
            problems = transform_error(exc)
            detail = problems[0] if problems else "does not match the LSP type"
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
        raise InvalidMessage(f"invalid params for {method or 'a response'}: {detail}")

    # -- replies --------------------------------------------------------------------------------

    def _send_handler_result(self, future: Future[Any], *, msg_id: MsgId) -> None:
        # pygls logs a traceback for an expected JSON-RPC error (an unknown command, say).
        if not future.cancelled():
            error = future.exception()
            if isinstance(error, JsonRpcException):
                self._request_futures.pop(msg_id, None)
                log.warning("request %s failed: %s", msg_id, error.message)
                self._send_response(msg_id, error=error.to_response_error())
                return
        super()._send_handler_result(future, msg_id=msg_id)

    def _send_response(
        self,
        msg_id: MsgId,
        result: Any | None = None,
        error: types.ResponseError | None = None,
    ) -> None:
        if error is not None and isinstance(error.data, dict) and "traceback" in error.data:
            lines = (error.message or "").strip().splitlines()
            error = types.ResponseError(
                code=error.code, message=lines[-1] if lines else "internal error"
            )
        super()._send_response(msg_id, result, error)

    def _send_data(self, data: Any) -> None:
        # The checkpoint viewer's large answers carry JSON text from the reader process, spliced
        # in here rather than decoded and encoded again (lsp/encoded.py).
        try:
            body = encoded_message(data, self._serialize_message)
        except Exception as error:
            log.exception("encoding a response failed")
            self._server._report_server_error(error, JsonRpcInternalError)
            return
        if body is None or self.writer is None:
            super()._send_data(data)
            return
        header = (
            f"Content-Length: {len(body)}\r\n"
            f"Content-Type: {self.CONTENT_TYPE}; charset={self.CHARSET}\r\n\r\n"
        )
        # Both writers this server sets (stdout, a TCP stream) write synchronously.
        self.writer.write(header.encode() + body)

    # -- notifications --------------------------------------------------------------------------

    def _handle_notification(self, method_name: str, params: Any) -> None:
        if method_name == types.CANCEL_REQUEST:
            msg_id = getattr(params, "id", None)
            if not _valid_id(msg_id):
                log.warning(
                    "ignored $/cancelRequest: its id %s is not an integer or a string",
                    _shorten(msg_id),
                )
                return
            if msg_id not in self._request_futures:
                # Editors cancel requests that have already been answered all the time.
                log.debug("$/cancelRequest for %r, which is not running", msg_id)
                return
        super()._handle_notification(method_name, params)

    # -- initialize -----------------------------------------------------------------------------

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(
        self, params: types.InitializeParams
    ) -> Generator[Any, Any, types.InitializeResult]:
        general = params.capabilities.general
        if general is not None and general.position_encodings:
            general.position_encodings = [types.PositionEncodingKind.Utf16]
        steps = super().lsp_initialize(params)
        # pygls creates its Workspace before the first step (the user's initialize handler):
        # replace it there with one that keeps documents with LSP's line semantics.
        try:
            request = next(steps)
        except StopIteration as done:
            self._use_lsp_documents()
            result: types.InitializeResult = done.value
            return result
        self._use_lsp_documents()
        while True:
            answer = yield request
            try:
                request = steps.send(answer)
            except StopIteration as done:
                result = done.value
                return result

    def _use_lsp_documents(self) -> None:
        if self._workspace is not None and not isinstance(self._workspace, LspWorkspace):
            self._workspace = LspWorkspace.like(
                self._workspace, self._server._text_document_sync_kind
            )


class RobustLanguageServer(LanguageServer):
    """A LanguageServer that reads frames with torchls.lsp.transport and speaks through
    TorchProtocol. Its `start_io`/`start_tcp` let SystemExit through, so `exit` without
    `shutdown` ends the process with 1, and a frame that cannot be recovered ends it with 1
    and one line in the log, for the client to restart it."""

    protocol: TorchProtocol

    def __init__(
        self, name: str, version: str, protocol_cls: type[TorchProtocol] = TorchProtocol
    ) -> None:
        # A subclass of TorchProtocol may add its own overrides (say, executeCommand).
        super().__init__(name, version, protocol_cls=protocol_cls)

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        self._stop_event = stop = threading.Event()
        source = ChunkSource(stdin or sys.stdin.buffer)
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(read_messages(source.read, self.protocol.handle_raw, stop))
        except FramingError as exc:
            log.error("%s; exiting so that the client restarts the server", exc)
            raise SystemExit(1) from None
        except BrokenPipeError:
            log.error("the connection to the client is lost; exiting")
        finally:
            self.shutdown()  # type: ignore[no-untyped-call]

    def start_tcp(self, host: str, port: int) -> None:
        self._stop_event = stop = threading.Event()
        failures: list[FramingError] = []

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)
            try:
                await read_messages(lambda: reader.read(READ_CHUNK), self.protocol.handle_raw, stop)
            except FramingError as exc:
                failures.append(exc)
            self.shutdown()  # type: ignore[no-untyped-call]

        async def serve() -> None:
            server = await asyncio.start_server(connection, host, port)
            self._server = server
            log.info("serving on %s:%s", host, port)
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):  # what closing the server raises
            asyncio.run(serve())
        if failures:
            log.error("%s; exiting so that the client restarts the server", failures[0])
            raise SystemExit(1)
