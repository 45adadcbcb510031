"""The server's copy of open documents, kept with LSP's line semantics.

pygls 2.1.1's `TextDocument` splits its source with `str.splitlines`, which also ends a line at
\\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029. LSP ends lines only at \\r\\n, \\r and \\n, so an
incremental `didChange` below one of those characters is applied to the wrong line and the
server's text silently differs from the editor's from then on (upstream:
openlawlibrary/pygls, workspace/text_document.py `lines` and `_apply_incremental_change`; issue
14, must-fix 3). Its position conversion also clamps a character past the end of a line to one
before the end, writing the clamped value back into the client's Position, and a didChange for a
document that is not open raises KeyError, which reaches the user as "Error in server".

Here lines come from `torchls.source.text` (the module every feature uses for positions), an
edit is applied as one splice between two offsets, and a range outside the document is clamped
the way VS Code clamps it (a line past the end is the end of the text, a character past the end
of a line is the end of that line), with one line in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import unquote

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace
from pygls.workspace.position_codec import ServerTextPosition

from torchls.source.text import split_lines_keepends

log = logging.getLogger(__name__)

_LINE_ENDS = ("\r\n", "\r", "\n")


def _line_span(text: str, line: int) -> tuple[int, int] | None:
    """Where LSP line `line` starts and ends (before its line break) in `text`, or None past
    the last line. Done with str methods, at C speed, so that a keystroke near the end of a
    50,000-line file costs what it cost in pygls (a regex or a Python loop over the lines is
    several times slower)."""
    flat = text
    if "\r" in text:
        # The same length, each LSP line break ending in exactly one \n.
        flat = text.replace("\r\n", "\x00\n").replace("\r", "\n")
    start = 0
    if line > 0:
        parts = flat.split("\n", line)
        if len(parts) <= line:
            return None
        start = len(flat) - len(parts[-1])
    end = flat.find("\n", start)
    if end < 0:
        return start, len(text)
    if text[end] == "\n" and end > start and text[end - 1] == "\r":
        end -= 1
    return start, end


def _content(line: str) -> str:
    """A line without its line break."""
    for end in _LINE_ENDS:
        if line.endswith(end):
            return line[: -len(end)]
    return line


class LspTextDocument(TextDocument):
    _cached_source: str | None = None
    _cached_lines: tuple[str, ...] = ()

    @property
    def lines(self) -> Sequence[str]:
        """The lines with their line breaks, as LSP counts them; a text ending with a line
        break has no empty last entry (as in pygls), though LSP has a line there."""
        source = self.source
        if source is not self._cached_source:
            self._cached_lines = tuple(split_lines_keepends(source))
            self._cached_source = source
        return self._cached_lines

    def _server_position(self, position: types.Position) -> tuple[ServerTextPosition, bool]:
        """A client position as (line, code point index), clamped into the document, and
        whether it had to be clamped."""
        lines = self.lines
        if position.line >= len(lines):
            if position.line == len(lines) and position.character == 0:
                return ServerTextPosition(len(lines), 0), False  # the line after a final break
            if not lines:
                return ServerTextPosition(0, 0), True
            last = len(lines) - 1
            if _content(lines[last]) != lines[last]:  # the text ends with a line break
                return ServerTextPosition(len(lines), 0), True
            return ServerTextPosition(last, len(lines[last])), True
        line = _content(lines[position.line])
        units = 0
        counter = self.position_codec.impl
        for index, char in enumerate(line):
            if units >= position.character:
                return ServerTextPosition(position.line, index), False
            units += counter.code_units_for_char(char)
        return ServerTextPosition(position.line, len(line)), units < position.character

    def position_from_client_units(self, position: types.Position) -> ServerTextPosition:
        return self._server_position(position)[0]

    def offset_at_position(self, client_position: types.Position) -> int:
        return self._offset(self.source, client_position)[0]

    def _offset(self, text: str, position: types.Position) -> tuple[int, bool]:
        """The index in `text` of a client position, clamped into it, and whether it had to
        be clamped."""
        span = _line_span(text, position.line)
        if span is None:
            return len(text), True
        index, end = span
        units = 0
        counter = self.position_codec.impl
        while index < end and units < position.character:
            units += counter.code_units_for_char(text[index])
            index += 1
        return index, units < position.character

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        source = self.source
        begin, start_clamped = self._offset(source, change.range.start)
        finish, end_clamped = self._offset(source, change.range.end)
        if start_clamped or end_clamped:
            log.warning(
                "didChange for %s: range %s is outside the document; clamped to it",
                self.uri,
                _shown(change.range),
            )
        if finish < begin:  # VS Code's Range orders its ends; so does this
            begin, finish = finish, begin
        self._source = source[:begin] + change.text + source[finish:]


def _shown(span: types.Range) -> str:
    return f"{span.start.line}:{span.start.character}-{span.end.line}:{span.end.character}"


class LspWorkspace(Workspace):
    """pygls' Workspace, holding LspTextDocuments."""

    def _create_text_document(
        self,
        doc_uri: str,
        source: str | None = None,
        version: int | None = None,
        language_id: str | None = None,
    ) -> TextDocument:
        return LspTextDocument(
            doc_uri,
            source=source,
            version=version,
            language_id=language_id,
            sync_kind=self._sync_kind,
            position_codec=self.position_codec,
        )

    @classmethod
    def like(cls, workspace: Workspace, sync_kind: types.TextDocumentSyncKind) -> LspWorkspace:
        """A new, empty LspWorkspace with the same root, folders and encoding."""
        return cls(
            workspace.root_uri,
            sync_kind,
            list(workspace.folders.values()),
            workspace.position_encoding,
        )

    def update_text_document(
        self,
        text_doc: types.VersionedTextDocumentIdentifier,
        change: types.TextDocumentContentChangeEvent,
    ) -> None:
        document = self._text_documents.get(unquote(text_doc.uri))
        if document is None:
            log.warning("didChange for %s, which is not open; ignored", text_doc.uri)
            return
        document.apply_change(change)
        document.version = text_doc.version
