"""Reading LSP frames (`Content-Length: N` headers, a blank line, N bytes of JSON) so that one
broken frame costs one message, never the connection.

pygls 2.1.1's reader (`pygls.io_.run_async`) trusts the header: it calls `readexactly(N)` with
whatever N says, so a length 10 bytes short leaves the rest of the body to be read as headers,
one 40 bytes long swallows the start of the next message, and after either every later message is
misread and the server goes deaf while still running; a claimed 100 GB length is allocated and
ends in MemoryError. There is no resynchronisation and no upper bound (upstream:
openlawlibrary/pygls, io_.py `run_async`/`run`, reported here as issue 14, must-fix 4).

Here the body is read in chunks into a bounded buffer, and a frame that does not parse is
resynchronised at the next `Content-Length` header, salvaging the JSON message in front of it
when there is one. Only a message larger than `MAX_BODY_BYTES` that keeps coming cannot be
recovered; the reader then raises `FramingError` and the server exits with an error so that the
client restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

# No message an editor sends comes near this (VS Code stops syncing files over 50 MB).
MAX_BODY_BYTES = 64 * 1024 * 1024
# A header line longer than this is not a header.
MAX_HEADER_LINE = 8 * 1024
# A body that stops short of its Content-Length and is complete JSON after this much silence was
# framed with a wrong (too large) length: handle it instead of waiting for bytes that never come.
IDLE_SECONDS = 0.2
READ_CHUNK = 64 * 1024
# How many `Content-Length` headers inside a broken region are tried as the place it ends.
_MAX_SPLIT_TRIES = 8

_HEADER_START = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
_HEADER_LINE = re.compile(rb"([A-Za-z0-9][A-Za-z0-9_-]*)[ \t]*:[ \t]*(.*?)[ \t]*")
_DECODER = json.JSONDecoder()


class FramingError(Exception):
    """A frame that cannot be recovered from; the message is one line for the log."""


def _decode_body(body: bytes | bytearray) -> Any:
    """The JSON value of a well-framed body, or raise ValueError."""
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except RecursionError as exc:  # `[[[[...` deeper than the interpreter's stack
        raise ValueError("nested too deeply") from exc


def _salvage(region: bytes | bytearray) -> tuple[dict[str, Any], int] | None:
    """The JSON object a broken region starts with (after any stray bytes before its `{`) and
    the number of bytes up to its end, or None when the region holds no complete message."""
    # Stray bytes around the object need not be UTF-8; surrogateescape keeps byte offsets exact.
    text = bytes(region).decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip())
    if not text.startswith("{", start):
        start = text.find("{", start)
        if start < 0:
            return None
    try:
        value, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "jsonrpc" not in value:
        return None  # not a message: a fragment, such as the params of a cut-off one
    return value, len(text[:end].encode("utf-8", "surrogateescape"))


class FrameScanner:
    """Turns the byte stream into JSON values. No I/O: `feed` takes what was read, `idle` says
    that nothing came for `IDLE_SECONDS`; both return the values now complete, in order."""

    _HEADERS = "headers"
    _BODY = "body"
    # Bytes that are not a well-formed frame: skipped up to the next header, salvaging a JSON
    # message found in front of it.
    _BROKEN = "broken"

    def __init__(self, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_body = max_body
        self._buffer = bytearray()
        self._state = self._HEADERS
        self._length = -1
        self._seen_headers = False
        self._bad_length: str | None = None
        self._searched = 0  # how far the broken region was already searched for a header

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        return self._scan()

    def idle(self) -> list[Any]:
        """Nothing more is coming for now: a body or broken region that holds a complete JSON
        object (its frame claimed more bytes than were sent, or had no header) is handled, and
        so on for the frames after it, which may be just as broken."""
        out: list[Any] = []
        while self._buffer:
            handled = self._idle_once()
            if not handled:
                break
            out += handled
        return out

    def _idle_once(self) -> list[Any]:
        if not self._buffer:
            return []
        if self._state == self._HEADERS:
            if not self._buffer.lstrip().startswith(b"{"):
                return []  # a header line still coming
            log.warning("a message came without headers; handled it")
            self._enter_broken(None)
        # A body still coming in may hold "Content-Length:" in its text (a document about LSP):
        # only a complete JSON object in front of such a header shows the length was wrong.
        for start in self._header_starts(0):
            salvaged = _salvage(self._buffer[:start])
            if salvaged is not None:
                return self._handled_early(salvaged[0], start)
        salvaged = _salvage(self._buffer)
        if salvaged is None:
            return []
        return self._handled_early(*salvaged)

    def _handled_early(self, message: dict[str, Any], end: int) -> list[Any]:
        if self._state == self._BODY:
            log.warning(
                "a message had %d bytes of the %d its Content-Length said; handled it",
                end,
                self._length,
            )
        del self._buffer[:end]
        self._to_headers()
        return [message, *self._scan()]

    def leftover(self) -> int:
        """Bytes of an incomplete message still held (at the end of the stream)."""
        return len(self._buffer.strip())

    def _header_starts(self, search_from: int) -> list[int]:
        """Where `Content-Length` headers start in the buffer (the first few). A list, not a
        live iterator: a bytearray cannot be resized while a regex iterator still reads it."""
        found = _HEADER_START.finditer(self._buffer, search_from)
        return [match.start() for match in itertools.islice(found, _MAX_SPLIT_TRIES)]

    def _to_headers(self) -> None:
        self._state = self._HEADERS
        self._seen_headers = False
        self._bad_length = None
        self._length = -1
        self._searched = 0

    def _scan(self) -> list[Any]:
        out: list[Any] = []
        while True:
            if self._state == self._HEADERS:
                if not self._scan_header_line():
                    return out
            elif self._state == self._BODY:
                if not self._scan_body(out):
                    return out
            elif not self._scan_broken(out):
                return out

    def _scan_header_line(self) -> bool:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_LINE:
                # From byte 1: the long line may itself start with `Content-Length:`.
                self._enter_broken(f"a header line longer than {MAX_HEADER_LINE} bytes", 1)
                return True
            return False
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        if not line.strip():
            del self._buffer[: end + 1]
            if not self._seen_headers:
                return True  # blank lines between messages
            if self._length >= 0:
                return self._start_body()
            reason = self._bad_length or "no Content-Length header"
            log.warning("a message had %s; reading it up to the next header", reason)
            self._enter_broken(None)
            return True
        header = _HEADER_LINE.fullmatch(line)
        name = header.group(1).lower() if header is not None else b""
        if header is None or (name != b"content-length" and _HEADER_START.search(line)):
            self._enter_broken("bytes that are not an LSP header")
            return True
        del self._buffer[: end + 1]
        self._seen_headers = True
        if name == b"content-length":
            value = header.group(2)
            # int() of a long digit string is slow and, past 4300 digits, an error.
            if value.isdigit() and value.isascii() and len(value) <= 18:
                self._length = int(value)
            else:
                shown = value[:20].decode("ascii", "replace")
                self._bad_length = f"an invalid Content-Length {shown!r}"
        # Content-Type and any other header: nothing to do; the body is UTF-8 JSON either way.
        return True

    def _start_body(self) -> bool:
        if self._length > self.max_body:
            log.warning(
                "a message claims %d bytes, more than the %d torchls accepts; reading what comes",
                self._length,
                self.max_body,
            )
        self._state = self._BODY
        return True

    def _scan_body(self, out: list[Any]) -> bool:
        if self._length > self.max_body:
            if len(self._buffer) < self.max_body:
                return False
            if _HEADER_START.search(self._buffer) is None:
                raise FramingError(
                    f"a message of {self._length} bytes is over torchls' limit of "
                    f"{self.max_body} bytes"
                )
            self._enter_broken(None)
            return True
        if len(self._buffer) < self._length:
            return False
        try:
            value = _decode_body(self._buffer[: self._length])
        except ValueError:
            log.warning(
                "a message did not parse at its Content-Length of %d bytes; "
                "resynchronising at the next header",
                self._length,
            )
            self._enter_broken(None)
            return True
        del self._buffer[: self._length]
        out.append(value)
        self._to_headers()
        return True

    def _enter_broken(self, reason: str | None, search_from: int = 0) -> None:
        if reason is not None:
            log.warning("skipping %s up to the next header", reason)
        self._state = self._BROKEN
        self._searched = search_from

    def _scan_broken(self, out: list[Any]) -> bool:
        starts = self._header_starts(self._searched)
        if not starts:
            if len(self._buffer) > self.max_body:
                log.warning("skipped %d bytes that were not an LSP message", len(self._buffer))
                del self._buffer[:-64]
            # A header may be cut at the end of what was read: search its start again.
            self._searched = max(0, len(self._buffer) - 64)
            return False
        cut = starts[0]
        for start in starts:
            salvaged = _salvage(self._buffer[:start])
            if salvaged is not None:
                out.append(salvaged[0])
                cut = start
                break
        else:
            skipped = len(self._buffer[:cut].strip())
            if skipped:
                log.warning("skipped %d bytes that were not an LSP message", skipped)
        del self._buffer[:cut]
        self._to_headers()
        return True


class ChunkSource:
    """Chunks of bytes from a blocking stream (stdin), read by a daemon thread one request at a
    time: nothing is read ahead of the scanner, and a read still blocked at exit does not keep
    the process alive (a ThreadPoolExecutor's thread would be joined at exit)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._wanted = threading.Semaphore(0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[bytes] | None = None
        self._thread: threading.Thread | None = None

    def _reader(self) -> Callable[[int], bytes]:
        # The file descriptor itself, not the BufferedReader: a read blocked in the reader holds
        # its lock, and Python aborts at exit ("could not acquire lock for <stdin>") when a
        # daemon thread holds it.
        try:
            descriptor = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            return getattr(self._stream, "read1", self._stream.read)
        return lambda size: os.read(descriptor, size)

    def read(self) -> Awaitable[bytes]:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="torchls-stdin", daemon=True)
            self._thread.start()
        self._future = loop.create_future()
        self._wanted.release()
        return self._future

    def _run(self) -> None:
        read = self._reader()
        while True:
            self._wanted.acquire()
            try:
                chunk = bytes(read(READ_CHUNK))
            except (OSError, ValueError):  # closed under us: the same as the end of the stream
                chunk = b""
            future, loop = self._future, self._loop
            if future is None or loop is None:
                return
            try:
                loop.call_soon_threadsafe(_deliver, future, chunk)
            except RuntimeError:  # the loop has closed: the server is exiting
                return
            if not chunk:
                return


def _deliver(future: asyncio.Future[bytes], chunk: bytes) -> None:
    if not future.done():
        future.set_result(chunk)


async def read_messages(
    read_chunk: Callable[[], Awaitable[bytes]],
    handle: Callable[[Any], None],
    stop: threading.Event,
    idle_seconds: float = IDLE_SECONDS,
) -> None:
    """Feed chunks to a FrameScanner and each JSON value it completes to `handle`, until the
    stream ends or `stop` is set. Raises FramingError for a frame that cannot be recovered."""
    scanner = FrameScanner()
    pending: asyncio.Future[bytes] | None = None
    # The idle check runs once per silence, not every IDLE_SECONDS while a slow client sends.
    idle_checked = True
    try:
        while not stop.is_set():
            if pending is None:
                pending = asyncio.ensure_future(read_chunk())
            timeout = None if idle_checked else idle_seconds
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                idle_checked = True
                values = scanner.idle()
            else:
                chunk = pending.result()
                pending = None
                if not chunk:
                    for value in scanner.idle():
                        handle(value)
                    if scanner.leftover():
                        log.warning(
                            "the client closed the connection in the middle of a message "
                            "(%d bytes unread)",
                            scanner.leftover(),
                        )
                    return
                values = scanner.feed(chunk)
                idle_checked = not scanner.buffered
            for value in values:
                handle(value)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
