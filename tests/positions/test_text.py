"""torchls's one place for lines and positions, against the reference: LSP lines (only \\r\\n,
\\r, \\n end one) and UTF-16 columns, whatever else the text holds."""

from __future__ import annotations

import ast
import random

from tests.positions.reference import NOT_LINE_BREAKS, apply, line_starts, offset

from torchls.loadcheck.fixes import apply_edits, diff
from torchls.source.text import Lines, offset_at, position_at, split_lines

ALPHABET = ["a", " ", "\t", "😀", "é", "\n", "\r", "\r\n", *NOT_LINE_BREAKS]


def _random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(size))


def test_lines_and_positions_match_the_reference() -> None:
    rng = random.Random(14)
    for _ in range(300):
        text = _random_text(rng, rng.randrange(0, 40))
        lines = split_lines(text)
        assert len(lines) == len(line_starts(text))
        for line in range(len(lines) + 1):
            for char in range(0, 12):
                at = offset_at(text, line, char)
                assert at == offset(text, line, char), (text, line, char)
                if text[at - 1 : at + 1] != "\r\n":
                    assert offset(text, *position_at(text, at)) == at


def test_a_diff_applied_as_an_editor_applies_it_gives_the_new_text() -> None:
    """Also where the change starts or ends between the \\r and the \\n of a line break, which
    is no LSP position."""
    rng = random.Random(2028)
    cases = [("x\r\ny", "x\ry"), ("x\ry", "x\r\ny"), ("a\r\n", "a\r"), ("a\u2028b\r\nc", "a\nc")]
    for _ in range(500):
        old = _random_text(rng, rng.randrange(0, 20))
        cut = rng.randrange(0, len(old) + 1)
        cases.append((old, old[:cut] + _random_text(rng, 3) + old[cut + rng.randrange(0, 3) :]))
    for old, new in cases:
        edit = diff(old, new)
        s = edit.span
        lsp = ((s.start_line, s.start_char, s.end_line, s.end_char), edit.text)
        assert apply(old, [lsp]) == new, (old, new, edit)
        assert apply_edits(old, [edit]) == new


def test_ast_positions_become_the_tokens_lsp_positions() -> None:
    """ast counts lines like LSP and columns in UTF-8 bytes: a span lands on its token after
    form feeds, U+2028, \\x85 and emoji on earlier lines and earlier in the line."""
    text = '# a\u2028b\x85c\x1c\nx = 1\x0c\r\ns = "😀"; value = "🐍é"\rlast = value\n'
    tree = ast.parse(text)
    lines = Lines(text)
    names = {n.id: n for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for name in ("value", "last"):
        node = names[name]
        span = lines.span(node.lineno, node.col_offset, node.lineno, node.end_col_offset or 0)
        start = offset(text, span.start_line, span.start_char)
        assert text[start : offset(text, span.end_line, span.end_char)] == name
