"""The server's copy of a document under incremental didChange (issue 14, must-fix 3): lines end
only at \\r\\n, \\r and \\n, columns count UTF-16 code units, and a range outside the document is
clamped as VS Code clamps it. Checked against tests/positions/reference.py, which is written
apart from torchls."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.positions import reference
from tests.protocol.raw import RawServer

URI = "file:///tmp/torchls-protocol-test/edited.txt"


class Editor:
    """One open document: edits go to the server and to the reference text alike."""

    def __init__(self, server: RawServer, text: str) -> None:
        self.server = server
        self.text = text
        self.version = 1
        self._ids = 1000
        server.send_message(
            {
                "jsonrpc": "2.0",
                "method": "textDocument/didOpen",
                "params": {
                    "textDocument": {
                        "uri": URI,
                        "languageId": "plaintext",
                        "version": 1,
                        "text": text,
                    }
                },
            }
        )

    def change(self, *edits: tuple[tuple[int, int, int, int], str]) -> None:
        """One didChange with these edits, applied in order (as LSP says)."""
        self.version += 1
        changes: list[dict[str, Any]] = []
        for (line, char, end_line, end_char), new in edits:
            changes.append(
                {
                    "range": {
                        "start": {"line": line, "character": char},
                        "end": {"line": end_line, "character": end_char},
                    },
                    "text": new,
                }
            )
            self.text = reference.apply(self.text, [((line, char, end_line, end_char), new)])
        self.server.send_message(
            {
                "jsonrpc": "2.0",
                "method": "textDocument/didChange",
                "params": {
                    "textDocument": {"uri": URI, "version": self.version},
                    "contentChanges": changes,
                },
            }
        )

    def server_text(self) -> str:
        self._ids += 1
        params = {"command": "torchls.test.documentText", "arguments": [URI]}
        response = self.server.request(self._ids, "workspace/executeCommand", params)
        result = response["result"]
        assert result["version"] == self.version
        text: str = result["text"]
        return text


@pytest.mark.parametrize(
    "above",
    ["\x0c", "\u2028", "\u2029", "\x85", "\x1c", "\x1d", "\x1e", "\x0b"],
    ids=["form-feed", "U+2028", "U+2029", "NEL", "FS", "GS", "RS", "VT"],
)
def test_a_typed_edit_below_a_character_splitlines_breaks_at(server: RawServer, above: str) -> None:
    # The issue's case: one keystroke below such a line, and pygls' copy differed from the
    # editor's (the edit landed on the wrong line).
    editor = Editor(server, f"y = 0{above}\nmodel.load_state_dict(sd)\n")
    editor.change(((1, 0, 1, 0), "# "))
    assert editor.text == f"y = 0{above}\n# model.load_state_dict(sd)\n"
    assert editor.server_text() == editor.text


def test_astral_characters_count_two_utf16_units(server: RawServer) -> None:
    editor = Editor(server, 's = "😀🐍"\nt = 1\n')
    editor.change(((0, 7, 0, 9), "x"))  # the snake, which is columns 7-9 in UTF-16
    assert editor.server_text() == 's = "😀x"\nt = 1\n'


def test_lone_cr_and_crlf_are_one_line_break_each(server: RawServer) -> None:
    editor = Editor(server, "a\rb\r\nc\nd")
    editor.change(((3, 0, 3, 1), "D"), ((1, 1, 2, 0), "-"))
    assert editor.server_text() == "a\rb-c\nD"


@pytest.mark.parametrize(
    ("edit", "expected", "outside"),
    [
        (((10, 0, 12, 4), "!"), "one\ntwo\n!", True),
        (((0, 99, 0, 120), "!"), "one!\ntwo\n", True),
        (((1, 2, 0, 1), ""), "oo\n", False),
        (((5, 0, 0, 0), "top"), "top", True),
    ],
    ids=["lines-past-the-end", "characters-past-the-line", "end-before-start", "reversed-past-end"],
)
def test_a_range_outside_the_document_is_clamped(
    server: RawServer, edit: tuple[tuple[int, int, int, int], str], expected: str, outside: bool
) -> None:
    editor = Editor(server, "one\ntwo\n")
    editor.change(edit)
    assert editor.server_text() == expected
    said = [line for line in server.log.splitlines() if "outside the document" in line]
    assert len(said) == (1 if outside else 0), server.log
    assert "Traceback" not in server.log


def test_a_change_to_a_document_that_is_not_open_is_one_line(server: RawServer) -> None:
    server.send_message(
        {
            "jsonrpc": "2.0",
            "method": "textDocument/didChange",
            "params": {
                "textDocument": {"uri": "file:///never/opened.py", "version": 2},
                "contentChanges": [{"text": "x"}],
            },
        }
    )
    editor = Editor(server, "text\n")
    assert editor.server_text() == "text\n"
    assert "Traceback" not in server.log and "Error in server" not in server.log
    assert "file:///never/opened.py, which is not open" in server.log


PIECES = [
    "a",
    "bc",
    " ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    "\x0c",
    "\x0b",
    "\x85",
    "\x1c",
    "\u2028",
    "\u2029",
    "😀",
    "🐍x",
    "é",
    "x = 1\n",
]


def _random_position(rng: random.Random, text: str) -> tuple[int, int]:
    starts = reference.line_starts(text)
    line = rng.randint(0, len(starts) - 1 + (1 if rng.random() < 0.05 else 0))
    if line >= len(starts):
        return line, rng.randint(0, 3)
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    units = sum(2 if ord(c) > 0xFFFF else 1 for c in text[starts[line] : end])
    # Now and then past the end of the line: the server must clamp it like the reference.
    return line, rng.randint(0, units + (2 if rng.random() < 0.1 else 0))


@pytest.mark.parametrize("seed", [11, 12])
def test_fuzzed_incremental_edits_keep_the_servers_text_equal_to_the_editors(
    server: RawServer, seed: int
) -> None:
    rng = random.Random(seed)
    editor = Editor(server, "".join(rng.choice(PIECES) for _ in range(40)))
    for _ in range(150):
        text = editor.text
        edits = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            # Each edit of one didChange refers to the text after the ones before it.
            start = _random_position(rng, text)
            end = _random_position(rng, text) if rng.random() < 0.6 else start
            start, end = min(start, end), max(start, end)
            new = "".join(rng.choice(PIECES) for _ in range(rng.choice([0, 0, 1, 1, 2, 4])))
            edits.append(((start[0], start[1], end[0], end[1]), new))
            text = reference.apply(text, [edits[-1]])
        editor.change(*edits)
        assert editor.server_text() == editor.text, edits
    assert "Traceback" not in server.log
