"""A workspace that pins torch < 1.6 and loads a zip-format checkpoint: a warning on the load,
a quick fix that runs Downgrade on that file, and once the legacy copy exists, a quick fix that
loads it instead; after that edit the warning is gone."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import torch
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.loadcheck.test_lsp_diagnostics import (
    _actions,
    _apply,
    _change,
    _diagnostics,
    _open,
    _torchls,
)

SCRIPT = """import torch
from torch import nn

model = nn.Linear(4, 2)
model.load_state_dict(torch.load("weights.pt"))
"""


def _codes(found: list[types.Diagnostic]) -> set[str]:
    return {str(d.code) for d in _torchls(found)}


async def _all_actions(session: Session, uri: str, diagnostic: types.Diagnostic) -> list[Any]:
    """The quick fixes as JSON. pygls' client structures `(Command | CodeAction)[]` by trying
    Command first, and a CodeAction that carries a command passes for one (its `command` dict
    turned into a string), so the test reads the reply before that conversion."""
    reply = await session.client.protocol.send_request_async(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=diagnostic.range,
            context=types.CodeActionContext(
                diagnostics=[diagnostic], only=[types.CodeActionKind.QuickFix]
            ),
        ),
    )
    actions = []
    for item in reply or []:
        if isinstance(item, types.Command) and item.command.startswith("{"):
            actions.append({"title": item.title, "command": ast.literal_eval(item.command)})
        else:
            actions.append(item)
    return actions


async def test_an_old_torch_pin_warns_and_the_fixes_downgrade_then_switch(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "weights.pt")
    (tmp_path / "requirements.txt").write_text("numpy<2\ntorch==1.5.1\n")
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        found = await _diagnostics(session, uri, lambda d: "zip-for-old-torch" in _codes(d))
        [warning] = [d for d in _torchls(found) if d.code == "zip-for-old-torch"]
        assert warning.severity == types.DiagnosticSeverity.Warning
        assert "pins torch 1.5.1 (`torch==1.5.1` in requirements.txt)" in warning.message
        assert (
            warning.range.start.line == 4
            and SCRIPT.splitlines()[4][warning.range.start.character : warning.range.end.character]
            == '"weights.pt"'
        )
        [related] = warning.related_information or []
        assert related.location.uri.endswith("/requirements.txt")
        assert related.location.range.start.line == 1
        [downgrade] = await _all_actions(session, uri, warning)
        assert downgrade["title"].startswith("torchls: Downgrade weights.pt for torch < 1.6")
        command = downgrade["command"]
        assert command["command"] == "torchls.downgradeCheckpoint"
        assert command["arguments"] == [(tmp_path / "weights.pt").as_uri()]
        # What the editor does with the action: run its command.
        result = await session.command(command["command"], *command["arguments"])
        assert result["ok"] and (tmp_path / "weights.legacy.pt").is_file()
        session.client.workspace_did_change_watched_files(
            types.DidChangeWatchedFilesParams(
                changes=[
                    types.FileEvent(
                        uri=(tmp_path / "weights.legacy.pt").as_uri(),
                        type=types.FileChangeType.Created,
                    )
                ]
            )
        )
        await asyncio.sleep(0.5)
        actions = await _actions(session, uri, warning)
        switch = [a for a in actions if a.edit is not None]
        assert [a.title for a in switch] == [
            "torchls: Load weights.legacy.pt instead (the legacy copy)"
        ]
        text = _apply(SCRIPT, switch[0])
        assert 'torch.load("weights.legacy.pt")' in text
        _change(session, uri, text, 2)
        await _diagnostics(session, uri, lambda d: "zip-for-old-torch" not in _codes(d))


async def test_no_warning_without_an_old_pin(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "weights.pt")
    (tmp_path / "requirements.txt").write_text("torch>=1.4\n")
    path = tmp_path / "train.py"
    path.write_text(SCRIPT + "x = 1\n")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        found = await _diagnostics(session, uri, lambda d: d is not None, timeout=30)
        await asyncio.sleep(1.0)  # the load check has run: nothing for this load
        found = session.client.diagnostics.get(uri, found)
    assert "zip-for-old-torch" not in _codes(list(found))
