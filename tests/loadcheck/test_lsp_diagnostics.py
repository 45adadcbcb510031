"""State-dict diagnostics and quick fixes through a real LSP session over stdio.

The checkpoints are written by torch in the test; the server reads them without torch and
builds the model in its worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lsprotocol import types
from tests.conftest import EXAMPLES, Session, lsp_session
from torch import nn

from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.text import Span

MODEL_PY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""


def _net(num_classes: int = 10) -> nn.Module:
    scope: dict[str, object] = {}
    exec(compile(MODEL_PY, "model.py", "exec"), scope)  # the same class the workspace has
    return scope["Net"](num_classes)  # type: ignore[operator]


def _workspace(tmp_path: Path, train: str) -> Path:
    (tmp_path / "model.py").write_text(MODEL_PY)
    (tmp_path / "train.py").write_text(train)
    return tmp_path / "train.py"


def _open(session: Session, path: Path, text: str | None = None) -> str:
    uri = path.as_uri()
    session.client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text=text or path.read_text()
            )
        )
    )
    return uri


async def _diagnostics(
    session: Session,
    uri: str,
    predicate: Callable[[Sequence[types.Diagnostic]], bool],
    timeout: float = 60.0,
) -> list[types.Diagnostic]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = session.client.diagnostics.get(uri)
        if found is not None and predicate(found):
            return list(found)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no matching diagnostics: {session.client.diagnostics.get(uri)}")


def _torchls(found: Sequence[types.Diagnostic]) -> list[types.Diagnostic]:
    return [d for d in found if d.source == "torchls"]


async def _actions(
    session: Session, uri: str, diagnostic: types.Diagnostic
) -> list[types.CodeAction]:
    result = await session.client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=diagnostic.range,
            context=types.CodeActionContext(
                diagnostics=[diagnostic], only=[types.CodeActionKind.QuickFix]
            ),
        )
    )
    return [a for a in result or [] if isinstance(a, types.CodeAction)]


def _apply(text: str, action: types.CodeAction) -> str:
    assert action.edit is not None and action.edit.document_changes
    change = action.edit.document_changes[0]
    assert isinstance(change, types.TextDocumentEdit)
    assert len(change.edits) == 1  # one edit: one undo takes it back
    edit = change.edits[0]
    assert isinstance(edit, types.TextEdit)
    r = edit.range
    span = Span(r.start.line, r.start.character, r.end.line, r.end.character)
    return apply_edits(text, [Edit(span, edit.new_text)])


def _change(session: Session, uri: str, text: str, version: int) -> None:
    session.client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


async def test_the_example_script_gets_an_error_per_broken_load_and_fixes_that_work() -> None:
    train = EXAMPLES / "train.py"
    text = train.read_text()
    async with lsp_session() as session:
        uri = _open(session, train)
        found = _torchls(await _diagnostics(session, uri, lambda d: len(_torchls(d)) >= 2))
        by_line = {d.range.start.line: d for d in found}
        prefix = by_line[text[: text.index("model.load_state_dict(torch.load(")].count("\n")]
        assert prefix.severity == types.DiagnosticSeverity.Error
        assert "`module.`" in prefix.message and "DataParallel" in prefix.message
        assert prefix.related_information  # the missing keys, listed
        assert any("missing" in r.message for r in prefix.related_information)
        nested = by_line[text[: text.index("model.load_state_dict(checkpoint)")].count("\n")]
        assert "training checkpoint" in nested.message and "['state_dict']" in nested.message
        assert "epoch" in nested.message

        actions = await _actions(session, uri, prefix)
        titles = [a.title for a in actions]
        assert any("strip the `module.` prefix" in t.lower() for t in titles), titles
        # strict=False would load nothing here: it is not offered.
        assert not any("strict=False" in t for t in titles), titles
        strip = next(a for a in actions if "module." in a.title)
        assert strip.is_preferred and strip.diagnostics
        fixed = _apply(text, strip)
        assert 'removeprefix("module.")' in fixed

        actions = await _actions(session, uri, nested)
        select = next(a for a in actions if 'nested ["state_dict"]' in a.title)
        fixed = _apply(fixed, select)
        # After both fixes (an edit, debounced), the errors go away.
        _change(session, uri, fixed, 2)
        await _diagnostics(session, uri, lambda d: not _torchls(d), timeout=30)
        status = await session.command("torchls.status")
        assert status["heavy_modules_loaded"] == []


async def test_a_checkpoint_rewritten_on_disk_is_checked_again(tmp_path: Path) -> None:
    net = _net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    train = _workspace(
        tmp_path,
        "import torch\nfrom model import Net\n\nmodel = Net()\n"
        "model.load_state_dict(torch.load('w.pt'))\n",
    )
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, train)
        await asyncio.sleep(0.1)
        await _diagnostics(session, uri, lambda d: not _torchls(d))
        # Training for 100 classes overwrote the file: the head no longer fits.
        torch.save(_net(100).state_dict(), tmp_path / "w.pt")
        session.client.workspace_did_change_watched_files(
            types.DidChangeWatchedFilesParams(
                changes=[
                    types.FileEvent(
                        uri=(tmp_path / "w.pt").as_uri(), type=types.FileChangeType.Changed
                    )
                ]
            )
        )
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        assert found[0].severity == types.DiagnosticSeverity.Error
        assert "even with strict=False" in found[0].message and "`head`" in found[0].message
        actions = await _actions(session, uri, found[0])
        assert [a.title for a in actions] == [
            "torchls: Skip the head `head` (its shape differs), strict=False"
        ]


async def test_an_edit_to_the_model_module_rechecks_the_script(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    train = _workspace(
        tmp_path,
        "import torch\nfrom model import Net\n\nmodel = Net()\n"
        "model.load_state_dict(torch.load('w.pt'), strict=False)\n",
    )
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, train)
        model_uri = _open(session, tmp_path / "model.py")
        await asyncio.sleep(0.1)
        await _diagnostics(session, uri, lambda d: not _torchls(d))
        # Unsaved: the network grows a layer the checkpoint does not have.
        grown = MODEL_PY.replace(
            "self.head = nn.Linear(16, num_classes)",
            "self.extra = nn.Linear(16, 16)\n        self.head = nn.Linear(16, num_classes)",
        )
        _change(session, model_uri, grown, 2)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        assert found[0].severity == types.DiagnosticSeverity.Warning
        assert "strict=False loads" in found[0].message and "`extra.weight`" not in found[0].message
        assert "2 keys stay at their initial values" in found[0].message


async def test_missing_files_and_untrusted_workspaces(tmp_path: Path) -> None:
    torch.save({"epoch": 1, "model": _net().state_dict()}, tmp_path / "run.ckpt")
    train = _workspace(
        tmp_path,
        "import torch\nfrom model import Net\n\nmodel = Net()\n"
        "model.load_state_dict(torch.load('nothere.pt'))\n"
        "model.load_state_dict(torch.load('run.ckpt'))\n",
    )
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        uri = _open(session, train)
        found = await _diagnostics(session, uri, lambda d: len(_torchls(d)) >= 2)
        missing = next(d for d in found if d.code == "missing-file")
        assert missing.severity == types.DiagnosticSeverity.Warning
        assert "`nothere.pt` does not exist" in missing.message
        # The path argument itself is marked.
        line = train.read_text().splitlines()[missing.range.start.line]
        assert line[missing.range.start.character : missing.range.end.character] == "'nothere.pt'"
        # Untrusted: the model is not built, but a training checkpoint is still recognised.
        nested = next(d for d in found if d.code == "nested")
        assert "['model']" in nested.message


async def test_a_closed_document_loses_its_diagnostics(tmp_path: Path) -> None:
    torch.save({"state_dict": _net().state_dict()}, tmp_path / "run.ckpt")
    train = _workspace(
        tmp_path,
        "import torch\nfrom model import Net\nmodel = Net()\n"
        "model.load_state_dict(torch.load('run.ckpt'))\n",
    )
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        uri = _open(session, train)
        await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        session.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        await _diagnostics(session, uri, lambda d: not d)


async def test_a_load_torchls_cannot_check_says_why_in_the_editor(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    train = _workspace(
        tmp_path,
        "import sys\nimport torch\nfrom model import Net\n\n"
        "path = sys.argv[1] if len(sys.argv) > 1 else 'w.pt'\n"
        "model = Net()\n"
        "model.load_state_dict(torch.load(path))\n"
        "twin = Net()\n"
        "twin.load_state_dict(model.state_dict())\n",
    )
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, train)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        assert [d.code for d in _torchls(found)] == ["unchecked"]  # not the in-memory copy
        note = _torchls(found)[0]
        assert note.severity == types.DiagnosticSeverity.Information
        assert note.range.start.line == 6
        assert note.message == (
            "torchls cannot check this load: the checkpoint path `path` is not a literal "
            "torchls can read."
        )
