"""Positions: `ast` counts UTF-8 bytes in a line, LSP counts UTF-16 code units."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 0-based line/character range in UTF-16 units, as LSP wants it."""

    start_line: int
    start_char: int
    end_line: int
    end_char: int

    def contains(self, line: int, char: int) -> bool:
        if (line, char) < (self.start_line, self.start_char):
            return False
        return (line, char) <= (self.end_line, self.end_char)


def utf16_column(line: str, utf8_offset: int) -> int:
    prefix = line.encode("utf-8")[:utf8_offset].decode("utf-8", errors="ignore")
    return len(prefix.encode("utf-16-le")) // 2


class Lines:
    def __init__(self, text: str) -> None:
        # Only the line ends Python knows: str.splitlines also splits at \f and \u2028, which
        # would shift every line after them against ast's numbering.
        self.lines = re.split(r"\r\n|\r|\n", text)

    def get(self, index: int) -> str:
        return self.lines[index] if 0 <= index < len(self.lines) else ""

    def span(self, lineno: int, col: int, end_lineno: int, end_col: int) -> Span:
        """From ast's 1-based lines and UTF-8 columns."""
        return Span(
            lineno - 1,
            utf16_column(self.get(lineno - 1), col),
            end_lineno - 1,
            utf16_column(self.get(end_lineno - 1), end_col),
        )
