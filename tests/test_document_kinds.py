"""Which documents get which features (lsp/document_kinds.py), through a real LSP session: `git:`,
`http:` and `file://host` documents are not files of the workspace, so nothing of theirs is
checked or profiled (a hover on a model says why); untitled documents and notebook cells get what
needs no file on disk: hover on the models they define, profiled from their text, the lint and
the k-fold actions, but no load checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.loadcheck.test_lsp_diagnostics import _diagnostics, _torchls

from torchls.lsp.document_kinds import ELSEWHERE, FILE, TEXT, document_kind

MODEL = """import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)
"""
# A model (hover), a training step with no zero_grad (lint) and a load whose checkpoint holds
# `module.` keys (a load check would flag it).
TEXT_WITH_EVERYTHING = (
    MODEL
    + """

model = Tiny()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for inputs in [torch.randn(2, 4)]:
    model(inputs).sum().backward()
    optimizer.step()
model.load_state_dict(torch.load("dp.pt"))
"""
)
CLASS_LINE = 4  # `class Tiny(nn.Module):`


def test_the_kind_of_each_uri(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert document_kind((tmp_path / "a.py").as_uri(), root).kind == FILE
    assert document_kind("file://localhost" + str(tmp_path / "a.py"), root).kind == FILE
    untitled = document_kind("untitled:Untitled-1", root)
    assert untitled.kind == TEXT and Path(str(untitled.path)).parent == tmp_path
    (tmp_path / "nbs").mkdir()
    cell = document_kind(f"vscode-notebook-cell:{tmp_path}/nbs/exp.ipynb#W1sZmlsZQ%3D%3D", root)
    assert cell.kind == TEXT and Path(str(cell.path)).parent == tmp_path / "nbs"
    other = document_kind(f"vscode-notebook-cell:{tmp_path}/nbs/exp.ipynb#W2sZmlsZQ%3D%3D", root)
    assert other.path != cell.path
    for uri, reason in [
        (f"git:{tmp_path}/a.py?%7B%22ref%22%3A%22HEAD%22%7D", "this is a git: document"),
        ("http://example.com/a.py", "this is an http: document"),
        ("file://build-host/ws/a.py", "this file is on another host (build-host)"),
        (f"file://{tmp_path}/a%00b.py", "NUL"),
    ]:
        kind = document_kind(uri, root)
        assert kind.kind == ELSEWHERE and not kind.analysed, uri
        assert reason in kind.refusal() and "files on disk" in kind.refusal()


def _open(session: Session, uri: str, text: str, language: str = "python") -> None:
    session.client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id=language, version=1, text=text
            )
        )
    )


async def _hover(session: Session, uri: str, line: int, character: int) -> str:
    result = await session.client.text_document_hover_async(
        types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
        )
    )
    assert result is not None and isinstance(result.contents, types.MarkupContent)
    return result.contents.value


async def _action_titles(session: Session, uri: str) -> list[str]:
    found = await session.client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=13, character=0), end=types.Position(line=13, character=0)
            ),
            context=types.CodeActionContext(diagnostics=[]),
        )
    )
    return [a.title for a in found or []]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    scope: dict[str, object] = {}
    exec(compile(MODEL, "tiny.py", "exec"), scope)
    weights = scope["Tiny"]().state_dict()  # type: ignore[operator]
    torch.save({f"module.{k}": v for k, v in weights.items()}, tmp_path / "dp.pt")
    (tmp_path / "train.py").write_text(TEXT_WITH_EVERYTHING)
    (tmp_path / "nbs").mkdir()
    return tmp_path


async def test_documents_that_are_not_workspace_files_get_nothing(workspace: Path) -> None:
    file_uri = (workspace / "train.py").as_uri()
    foreign = [
        f"git:{workspace}/train.py?%7B%22ref%22%3A%22HEAD~1%22%7D",
        "http://example.com/train.py",
        f"file://build-host{workspace}/train.py",
    ]
    async with lsp_session(workspace=workspace) as session:
        for uri in foreign:
            _open(session, uri, TEXT_WITH_EVERYTHING)
        _open(session, file_uri, TEXT_WITH_EVERYTHING)
        # The workspace file gets its load check (and the lint) ...
        await _diagnostics(
            session, file_uri, lambda d: {x.code for x in _torchls(d)} >= {"keys", "no-zero-grad"}
        )
        await asyncio.sleep(1.0)
        for uri in foreign:
            # ... the others nothing: no diagnostics, no actions, and a hover that says why.
            assert not _torchls(session.client.diagnostics.get(uri, [])), uri
            assert await _action_titles(session, uri) == [], uri
            shown = await _hover(session, uri, CLASS_LINE, 7)
            assert "torchls profiles files on disk" in shown and "Parameters" not in shown, shown
        assert "git: document" in await _hover(session, foreign[0], CLASS_LINE, 7)
        assert "on another host" in await _hover(session, foreign[2], CLASS_LINE, 7)
        profiled = await _hover(session, file_uri, CLASS_LINE, 7)
        assert "**Tiny**" in profiled and "15" in profiled  # 4*3 weights + 3 biases


@pytest.mark.parametrize("uri", ["untitled:Untitled-1", "vscode-notebook-cell:{ws}/nbs/a.ipynb#W0"])
async def test_untitled_documents_and_cells_get_hover_lint_and_kfold(
    workspace: Path, uri: str
) -> None:
    uri = uri.format(ws=workspace)
    async with lsp_session(workspace=workspace) as session:
        _open(session, uri, TEXT_WITH_EVERYTHING)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        # The lint, but no load check: "dp.pt" is relative to a file this document is not.
        assert {d.code for d in _torchls(found)} == {"no-zero-grad"}
        shown = await _hover(session, uri, CLASS_LINE, 7)
        assert "**Tiny**" in shown and "Parameters" in shown and "**15**" in shown, shown
        titles = await _action_titles(session, uri)
        assert any("k-fold cross-validation (KFold)" in t for t in titles), titles
