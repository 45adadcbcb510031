"""A reference for LSP positions, written apart from torchls's own: lines end only at \\r\\n,
\\r or \\n, and characters are UTF-16 code units. Tests apply torchls's edits with it, the way
an editor would, and read the text under its ranges."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise

# Characters str.splitlines breaks at and LSP does not: on a line before an edit they shift
# every later line, inside an edited line they are just characters.
NOT_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
ENDINGS = {"LF": "\n", "CRLF": "\r\n", "CR": "\r"}
# Lines put at the top of a file (each one LSP line, however splitlines counts it).
PREFIXES = {
    "none": "",
    "line-separator": "# a\u2028b\n",
    "form-feed": "x = 1\x0c\n",
    "next-line": "# \x85 \x1c \x1d \x1e \x0b \u2029\n",
    "astral-and-tab": 's = "😀\t🐍"  # 😀\n',
    "all": '# a\u2028b\nx = 1\x0c\n# \x85 \x1c \x1d \x1e \x0b \u2029\nif True:\n\ts = "😀"\n',
}


def variant(text: str, prefix: str, ending: str) -> str:
    """`text` (written with \\n) with `prefix` lines on top and every line break `ending`."""
    return (prefix + text).replace("\n", ending)


def line_starts(text: str) -> list[int]:
    starts = [0]
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\r" and text[index + 1 : index + 2] == "\n":
            index += 2
            starts.append(index)
            continue
        index += 1
        if char in "\r\n":
            starts.append(index)
    return starts


def offset(text: str, line: int, character: int) -> int:
    starts = line_starts(text)
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    while end > start and text[end - 1] in "\r\n":
        end -= 1
    units = 0
    index = start
    while index < end and units < character:
        units += 2 if ord(text[index]) > 0xFFFF else 1
        index += 1
    return index


Edit = tuple[tuple[int, int, int, int], str]  # ((line, char, end line, end char), new text)


def apply(text: str, edits: Iterable[Edit]) -> str:
    """Edits of one LSP TextEdit[]: positions refer to the text before any of them."""
    ranged = [(offset(text, r[0], r[1]), offset(text, r[2], r[3]), new) for r, new in edits]
    ranged.sort(key=lambda item: (item[0], item[1]))
    for (_, end, _), (start, _, _) in pairwise(ranged):
        assert end <= start, "overlapping edits"
    for start, end, new in reversed(ranged):
        text = text[:start] + new + text[end:]
    return text


def under(text: str, line: int, character: int, end_line: int, end_character: int) -> str:
    """The text a range covers."""
    return text[offset(text, line, character) : offset(text, end_line, end_character)]
