"""The issue's case end to end, through a real LSP session (the document opened with its full
text): below a line with a form feed and one with U+2028, in a CRLF file, the load's diagnostic
covers the call, the "Strip the `module.` prefix" fix applied as an editor applies it gives code
that parses and is what the user expects, and a hover on the model's class covers its name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lsprotocol import types
from tests.conftest import lsp_session
from tests.loadcheck.test_lsp_diagnostics import _actions, _diagnostics, _open, _torchls
from tests.positions.reference import apply, under

MODEL = """import torch
from torch import nn


class Tiny(nn.Module):  # 😀 \u2028 \x0c
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""
HOSTILE = "# a\u2028b\r\nx = 1\x0c\r\n# \x85\x1c 😀\r\n"
LOAD = 'y = 0; model.load_state_dict(torch.load("dp.pt"))  # 😀\u2028'
FIXED = (
    'y = 0; model.load_state_dict({k.removeprefix("module."): v for k, v in '
    'torch.load("dp.pt").items()})  # 😀\u2028'
)


@pytest.mark.parametrize("ending", ["\r\n", "\r", "\n"])
async def test_the_prefix_fix_below_form_feeds_and_line_separators(
    tmp_path: Path, ending: str
) -> None:
    scope: dict[str, object] = {}
    exec(compile(MODEL, "tiny.py", "exec"), scope)
    weights = scope["Tiny"]().state_dict()  # type: ignore[operator]
    torch.save({f"module.{k}": v for k, v in weights.items()}, tmp_path / "dp.pt")
    text = (HOSTILE + MODEL + "\n\nmodel = Tiny()\n" + LOAD + "\n").replace("\r\n", "\n")
    text = text.replace("\n", ending)
    path = tmp_path / "train.py"
    path.write_bytes(text.encode())
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path, text)
        found = await _diagnostics(session, uri, lambda d: any(x.code == "keys" for x in d))
        keys = next(d for d in _torchls(found) if d.code == "keys")
        r = keys.range
        covered = under(text, r.start.line, r.start.character, r.end.line, r.end.character)
        assert covered == 'model.load_state_dict(torch.load("dp.pt"))'
        strip = next(a for a in await _actions(session, uri, keys) if "module." in a.title)
        assert strip.edit is not None and strip.edit.document_changes
        change = strip.edit.document_changes[0]
        assert isinstance(change, types.TextDocumentEdit)
        edits = []
        for e in change.edits:
            start, end = e.range.start, e.range.end
            edits.append(((start.line, start.character, end.line, end.character), e.new_text))
        fixed = apply(text, edits)
        compile(fixed, "train.py", "exec")
        assert fixed == text.replace(LOAD, FIXED)

        line = 3 + 4  # the three hostile lines, then `class Tiny` on the model's fifth line
        hover = await session.client.text_document_hover_async(
            types.HoverParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=8),
            )
        )
        assert hover is not None and hover.range is not None
        h = hover.range
        named = under(text, h.start.line, h.start.character, h.end.line, h.end.character)
        assert named == "class Tiny"
        assert isinstance(hover.contents, types.MarkupContent)
        assert "**Tiny**" in hover.contents.value
