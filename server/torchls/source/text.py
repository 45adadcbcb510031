"""Positions and lines as LSP counts them.

LSP ends a line only at `\\r\\n`, `\\r` or `\\n`, and counts a line's characters in UTF-16 code
units. Python's tokenizer ends lines at the same three (so `ast` line numbers agree), but counts
columns in UTF-8 bytes. `str.splitlines` also breaks at \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and
U+2029, which would shift every line after one of them against both: nothing in torchls splits
source text any other way than through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
# Python's indentation: spaces, tabs, and form feeds, which reset the column count to zero.
_INDENTATION = re.compile(r"[ \t\f]*")


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


def split_lines(text: str) -> list[str]:
    """The lines of `text` as LSP counts them, without their ends; a text ending with a line
    break has an empty last line, as an editor shows it."""
    return LINE_BREAK.split(text)


def split_lines_keepends(text: str) -> list[str]:
    """The same lines, each with its own line break (the last one may have none)."""
    return _LINE_WITH_END.findall(text)


def line_ending(text: str) -> str:
    """The line break the file uses (its first one): what inserted lines must end with."""
    found = LINE_BREAK.search(text)
    return found.group() if found is not None else "\n"


def with_line_ending(inserted: str, ending: str) -> str:
    """Text made with `\\n` (or copied from the file), with every line break made `ending`."""
    return LINE_BREAK.sub(ending, inserted)


def indentation(line: str) -> str:
    """The indentation Python sees on a line: its leading spaces and tabs, after the last form
    feed among them (a form feed resets the indentation count; copying it would be noise)."""
    leading = _INDENTATION.match(line)
    found = leading.group() if leading is not None else ""
    return found.rpartition("\f")[2]


def utf16_length(text: str) -> int:
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def utf16_column(line: str, utf8_offset: int) -> int:
    prefix = line.encode("utf-8", "surrogatepass")[:utf8_offset]
    return utf16_length(prefix.decode("utf-8", errors="ignore"))


def offset_at(text: str, line: int, utf16_char: int) -> int:
    """The str index of an LSP position (0-based line, UTF-16 character). A line past the end
    is the end of the text; a character past the line's end is the line's end, as LSP says."""
    start = 0
    for _ in range(line):
        found = LINE_BREAK.search(text, start)
        if found is None:
            return len(text)
        start = found.end()
    end = LINE_BREAK.search(text, start)
    line_end = end.start() if end is not None else len(text)
    units = 0
    for index in range(start, line_end):
        if units >= utf16_char:
            return index
        units += 2 if ord(text[index]) > 0xFFFF else 1
    return line_end


def position_at(text: str, offset: int) -> tuple[int, int]:
    """(line, UTF-16 character) of a str index."""
    line = 0
    line_start = 0
    for found in LINE_BREAK.finditer(text, 0, offset):
        line += 1
        line_start = found.end()
    return line, utf16_length(text[line_start:offset])


class Lines:
    def __init__(self, text: str) -> None:
        self.lines = split_lines(text)

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
