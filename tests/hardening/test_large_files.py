"""Very large documents (issue 14): over `maxFileSizeKB` a document is not analysed, and says so
on its first line; under it, a large document just edited answers code actions from what is
ready instead of parsing it on the request path. The speed and memory figures themselves are
bench/large_files.py's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.test_document_kinds import MODEL

from torchls.config import InitOptions, parse_init_options

# A model (hover), a training loop without zero_grad (a lint warning with a quick fix).
SOURCE = (
    MODEL
    + """

def train(loader):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        for inputs in loader:
            model(inputs).sum().backward()
            optimizer.step()
"""
)
LOOP_LINE = SOURCE.split("\n").index("        for inputs in loader:")  # the lint's span
PAD = "# padding: a comment line of a long generated file, nothing to analyse here\n"


def _published(session: Session) -> list[tuple[str, int | None, list[types.Diagnostic]]]:
    """Every diagnostics notification, with its version (pytest-lsp keeps only the last)."""
    found: list[tuple[str, int | None, list[types.Diagnostic]]] = []
    features = session.client.protocol.fm.features
    keep = features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]

    def on_diagnostics(params: types.PublishDiagnosticsParams) -> None:
        keep(params)
        found.append((params.uri, params.version, list(params.diagnostics)))

    features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = on_diagnostics
    return found


async def _diagnostics_of(
    published: list[tuple[str, int | None, list[types.Diagnostic]]], uri: str, version: int
) -> list[types.Diagnostic]:
    deadline = time.monotonic() + 60
    while True:
        for where, published_version, diagnostics in reversed(published):
            if where == uri and published_version == version:
                return [d for d in diagnostics if d.source == "torchls"]
        assert time.monotonic() < deadline, f"no diagnostics for version {version} of {uri}"
        await asyncio.sleep(0.05)


def _open(session: Session, path: Path, text: str) -> str:
    uri = path.as_uri()
    session.client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=text
            )
        )
    )
    return uri


def _edit(session: Session, uri: str, version: int, line: int, old: str, new: str) -> None:
    """Replace `old` (the start of line `line`) with `new`."""
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=line, character=0),
                        end=types.Position(line=line, character=len(old)),
                    ),
                    text=new,
                )
            ],
        )
    )


async def _actions(
    session: Session,
    uri: str,
    line: int,
    trigger: types.CodeActionTriggerKind = types.CodeActionTriggerKind.Automatic,
) -> list[str]:
    result: Any = await session.client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=line, character=12),
                end=types.Position(line=line, character=12),
            ),
            context=types.CodeActionContext(diagnostics=[], trigger_kind=trigger),
        )
    )
    return [action.title for action in result or []]


async def test_a_file_over_the_size_limit_says_so_and_gets_nothing_else(tmp_path: Path) -> None:
    padded = SOURCE + PAD * 80  # about 7.5 KB: over a 4 KB limit
    path = tmp_path / "generated.py"
    path.write_text(padded)
    async with lsp_session({"maxFileSizeKB": 4}, workspace=tmp_path) as session:
        published = _published(session)
        uri = _open(session, path, padded)
        found = await _diagnostics_of(published, uri, 1)
        assert [d.code for d in found] == ["file-too-large"], found
        note = found[0]
        assert note.severity == types.DiagnosticSeverity.Information
        assert note.range.start.line == 0
        assert "over the 4 KB limit" in note.message and "torchls.maxFileSizeKB" in note.message
        assert f"{len(padded.encode()) / 1024:,.0f} KB" in note.message
        # No lint, no quick fix, no hover on the model class.
        assert await _actions(session, uri, LOOP_LINE) == []
        hover = await session.client.text_document_hover_async(
            types.HoverParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=4, character=8),
            )
        )
        assert hover is None

        # Cut the padding: the same document is analysed again, and the note goes.
        lines = padded.split("\n")
        first_pad = SOURCE.count("\n")
        session.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(
                            start=types.Position(line=first_pad, character=0),
                            end=types.Position(line=len(lines) - 1, character=0),
                        ),
                        text="",
                    )
                ],
            )
        )
        found = await _diagnostics_of(published, uri, 2)
        assert [d.code for d in found] == ["no-zero-grad"], found
        assert "torchls: Clear the gradients first: optimizer.zero_grad()" in await _actions(
            session, uri, LOOP_LINE
        )


async def test_a_large_file_just_edited_answers_from_what_is_ready(tmp_path: Path) -> None:
    big = SOURCE + PAD * 600  # about 48 KB: parsed by the re-check, not by a request
    path = tmp_path / "big.py"
    path.write_text(big)
    insert = "torchls: Insert k-fold cross-validation (KFold)"
    async with lsp_session(workspace=tmp_path) as session:
        published = _published(session)
        uri = _open(session, path, big)
        await _diagnostics_of(published, uri, 1)
        before = await _actions(session, uri, LOOP_LINE)
        assert insert in before, before

        first_pad = SOURCE.count("\n")
        _edit(session, uri, 2, first_pad, "# padding", "# Padding")
        # Sent right after the edit, before the debounced re-check: the light bulb's request
        # gets nothing rather than stale or slow answers, the Source Action menu's gets all.
        assert await _actions(session, uri, LOOP_LINE) == []
        asked = await _actions(session, uri, LOOP_LINE, types.CodeActionTriggerKind.Invoked)
        assert insert in asked, asked
        _edit(session, uri, 3, first_pad, "# Padding", "# PADDING")
        await _diagnostics_of(published, uri, 3)
        after = await _actions(session, uri, LOOP_LINE)
        assert insert in after, after


def test_the_size_limit_option_is_read_and_checked() -> None:
    assert InitOptions().max_file_size_kb == 512
    options, warnings = parse_init_options({"maxFileSizeKB": 2048})
    assert options.max_file_size_kb == 2048 and warnings == []
    for bad in ("1024", 0, -5, True, None):
        options, warnings = parse_init_options({"maxFileSizeKB": bad})
        assert options.max_file_size_kb == 512
        assert len(warnings) == 1 and "maxFileSizeKB" in warnings[0], (bad, warnings)
