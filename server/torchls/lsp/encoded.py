"""Results sent as they are: large answers of the checkpoint viewer skip pygls' converter, and
their largest part (a 50,000-tensor table) is JSON text from the reader process, spliced into the
response instead of decoded into dicts here and encoded again (time, and the server's memory)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any


class RawJSON:
    """JSON text (ASCII, as json.dumps writes it) standing for a value inside a Verbatim result."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def decode(self) -> Any:
        return json.loads(self.text)


class Verbatim:
    """A result pygls sends as it is: plain JSON data (with RawJSON parts) its converter need not
    walk (for a 50,000-tensor report, cattrs' walk takes longer than the reader's parse)."""

    __slots__ = ("value",)

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value


def plain(value: Any) -> Any:
    """`value` with every RawJSON part decoded: for callers that need the data itself."""
    if isinstance(value, RawJSON):
        return value.decode()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


# A string no JSON text from a file can hold: json escapes control characters, and the token is
# drawn afresh for each process.
_TOKEN = "\x00torchls-raw-" + secrets.token_hex(8)


def encoded_message(message: Any, default: Callable[[Any], Any]) -> bytes | None:
    """The JSON body of a response whose result is a Verbatim, its RawJSON parts spliced in; None
    for any other message (pygls encodes it as usual). `default` is pygls' own hook, for the
    response object around the result."""
    result = getattr(message, "result", None)
    if not isinstance(result, Verbatim):
        return None
    parts: list[bytes] = []

    def hook(value: Any) -> Any:
        if isinstance(value, Verbatim):
            return value.value
        if isinstance(value, RawJSON):
            parts.append(value.text)
            return _TOKEN
        return default(value)

    body = json.dumps(message, default=hook)
    if not parts:
        return body.encode()
    marker = json.dumps(_TOKEN)
    pieces = body.split(marker)
    if len(pieces) != len(parts) + 1:  # cannot happen: no other text holds the token
        raise ValueError("a raw JSON part could not be placed")
    out = [pieces[0].encode()]
    for raw, piece in zip(parts, pieces[1:], strict=True):
        out.append(raw)
        out.append(piece.encode())
    return b"".join(out)
