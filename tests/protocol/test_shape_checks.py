"""Shape diagnostics and their verified quick fix in the language server, in-process.

The server is torchls's own (`create_server()`), with a real worker; ShapeChecks is installed as
lsp/server.py installs it, documents are put in its workspace, and what it publishes is recorded.
The quick fix's edit is applied to the text and the result is run for real on CPU.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.workspace import Workspace
from tests.shape_fixtures import MNIST, TWO_MISTAKES

from torchls.lsp.server import TorchLanguageServer, create_server
from torchls.lsp.shape_checks import CODE_MISMATCH, ShapeChecks, install

# Fixing conv2 moves the failure to fc, whose size is an expression with names: no fix.
NOT_ENOUGH = TWO_MISTAKES.replace("def __init__(self):", "def __init__(self, width=32):").replace(
    "nn.Linear(32 * 4 * 4, 10)", "nn.Linear(width * 4 * 4, 10)"
)

RUN = r"""
import json, sys, torch
namespace = {"__name__": "fixed_model"}
exec(compile(sys.stdin.read(), "fixed_model.py", "exec"), namespace)
model = namespace[sys.argv[1]]()
out = model(torch.randn(*json.loads(sys.argv[2])))
print(json.dumps(list(out.shape)))
"""


def run_for_real(text: str, name: str, shape: list[int]) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, name, json.dumps(shape)],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: list[int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class Editor:
    """The server's side of an editor: documents in its workspace, publishes recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: TorchLanguageServer = create_server()
        self.server.configure(
            types.InitializeParams(capabilities=types.ClientCapabilities(), root_uri=root.as_uri())
        )
        self.server.protocol._workspace = Workspace(root.as_uri())
        self.published: list[types.PublishDiagnosticsParams] = []
        self.server.text_document_publish_diagnostics = self.published.append  # type: ignore[method-assign]
        self.checks: ShapeChecks = install(self.server)

    def open(self, name: str, text: str, version: int = 1) -> str:
        path = self.root / name
        path.write_text(text)
        uri = path.as_uri()
        self.server.workspace.remove_text_document(
            uri
        ) if uri in self.server.workspace.text_documents else None
        self.server.workspace.put_text_document(
            types.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)
        )
        return uri

    def edit(self, uri: str, text: str, version: int) -> None:
        self.server.workspace.remove_text_document(uri)
        self.server.workspace.put_text_document(
            types.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)
        )

    def actions(self, uri: str, line: int) -> list[types.CodeAction]:
        params = types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=line, character=0),
                end=types.Position(line=line, character=0),
            ),
            context=types.CodeActionContext(diagnostics=[]),
        )
        return self.checks.code_actions(params)

    async def settled(self, uri: str, line: int, timeout: float = 180) -> list[types.CodeAction]:
        """Code actions once the background verification is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.checks._verifying:
                return self.actions(uri, line)
            await asyncio.sleep(0.1)
        raise AssertionError("the fix was not verified in time")

    async def close(self) -> None:
        self.checks.close()
        if self.server.worker is not None:
            await self.server.worker.stop()


def apply(text: str, action: types.CodeAction, uri: str) -> str:
    from torchls.loadcheck.fixes import Edit, apply_edits
    from torchls.source.text import Span

    assert action.edit is not None and action.edit.document_changes is not None
    edits = []
    for change in action.edit.document_changes:
        assert isinstance(change, types.TextDocumentEdit)
        assert change.text_document.uri == uri
        for edit in change.edits:
            r = edit.range
            span = Span(r.start.line, r.start.character, r.end.line, r.end.character)
            edits.append(Edit(span, edit.new_text))
    return apply_edits(text, edits)


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines()) if needle in line)


def last_published(editor: Editor, uri: str) -> list[types.Diagnostic]:
    mine = [p for p in editor.published if p.uri == uri]
    assert mine, "nothing was published"
    return list(mine[-1].diagnostics)


def test_mnist_mismatch_is_an_error_with_a_verified_fix_that_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            text = textwrap.dedent(MNIST).lstrip()
            uri = editor.open("model.py", text)
            await editor.checks.refresh(uri)
            forward = line_of(text, "return self.fc1(x)")
            (diagnostic,) = editor.checks.diagnostics(uri)
            assert diagnostic.severity == types.DiagnosticSeverity.Error
            assert diagnostic.code == CODE_MISMATCH and diagnostic.source == "torchls"
            assert diagnostic.range.start.line == forward
            assert "fc1 (Linear) expects 3200 input features" in diagnostic.message
            assert "at input (1, 1, 28, 28) it receives 3136 = 64 x 7 x 7" in diagnostic.message
            (related,) = diagnostic.related_information or []
            assert related.location.uri == uri
            assert related.location.range.start.line == line_of(text, "self.fc1 = nn.Linear")
            assert related.message == "fc1 is built here with in_features=3200"
            # one publish carries it (load_checks' publish, with its own diagnostics)
            assert any(d.code == CODE_MISMATCH for d in last_published(editor, uri))

            actions = await editor.settled(uri, forward)
            (action,) = actions
            assert action.kind == types.CodeActionKind.QuickFix and action.is_preferred
            assert action.title == "torchls: Change in_features of fc1 to 3136"
            fixed = apply(text, action, uri)
            assert "self.fc1 = nn.Linear(3136, 10)" in fixed
            assert run_for_real(fixed, "MnistNet", [1, 1, 28, 28]) == [1, 10]
            assert (tmp_path / "model.py").read_text() == text  # only the code action edits

            # Another text: the fix and the error of the old one are gone at once.
            editor.edit(uri, "\n" + text, 2)
            assert editor.actions(uri, forward) == []
            assert editor.actions(uri, forward + 1) == []
            assert editor.checks.diagnostics(uri) == []
            # The fixed text profiles: nothing to say.
            editor.edit(uri, fixed, 3)
            await editor.checks.refresh(uri)
            assert editor.checks.diagnostics(uri) == []
            assert not any(d.code == CODE_MISMATCH for d in last_published(editor, uri))
        finally:
            await editor.close()

    asyncio.run(scenario())


def test_a_second_mismatch_after_the_first_is_fixed_in_the_same_action(tmp_path: Path) -> None:
    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            text = textwrap.dedent(TWO_MISTAKES).lstrip()
            uri = editor.open("two.py", text)
            await editor.checks.refresh(uri)
            forward = line_of(text, "x = self.pool(torch.relu(self.conv2(x)))")
            (diagnostic,) = editor.checks.diagnostics(uri)
            assert diagnostic.range.start.line == forward
            assert "conv2 (Conv2d) expects 8 input channels" in diagnostic.message
            assert "it receives 16" in diagnostic.message

            (action,) = await editor.settled(uri, forward)
            assert action.title == (
                "torchls: Change in_channels of conv2 to 16 and change in_features of fc to "
                "32 * 8 * 8 (= 2048)"
            )
            (diagnostic,) = editor.checks.diagnostics(uri)
            moved = (
                "Fixing it moves the failure further on; the quick fix also does: change "
                "in_features of fc to 32 * 8 * 8 (= 2048), after which the model profiles."
            )
            assert moved in diagnostic.message
            assert action.edit is not None and action.edit.document_changes is not None
            (change,) = action.edit.document_changes
            assert isinstance(change, types.TextDocumentEdit)
            # two small edits, each on its own line, not one over the lines between them
            assert [(e.range.start.line, e.range.end.line, e.new_text) for e in change.edits] == [
                (line_of(text, "self.conv2 ="), line_of(text, "self.conv2 ="), "16"),
                (line_of(text, "self.fc ="), line_of(text, "self.fc ="), "8 * 8"),
            ]
            fixed = apply(text, action, uri)
            assert "nn.Conv2d(16, 32, 3, padding=1)" in fixed
            # 32 x 32 pooled by 4: 32 channels of 8 x 8
            assert "nn.Linear(32 * 8 * 8, 10)" in fixed
            assert run_for_real(fixed, "TwoMistakes", [1, 3, 32, 32]) == [1, 10]
        finally:
            await editor.close()

    asyncio.run(scenario())


def test_a_fix_that_is_not_enough_is_not_offered_and_the_error_says_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            text = textwrap.dedent(NOT_ENOUGH).lstrip()
            uri = editor.open("half.py", text)
            await editor.checks.refresh(uri)
            forward = line_of(text, "x = self.pool(torch.relu(self.conv2(x)))")
            assert await editor.settled(uri, forward) == []
            (diagnostic,) = editor.checks.diagnostics(uri)
            why = "Changing in_channels of conv2 to 16 is not enough: the model then fails: fc"
            assert why in diagnostic.message
            assert "fc (Linear) expects 512 input features" in diagnostic.message
            assert "`width * 4 * 4` is 512 here and must be 2048" in diagnostic.message
        finally:
            await editor.close()

    asyncio.run(scenario())


def test_a_view_size_fix_chains_the_linear_layer_it_feeds(tmp_path: Path) -> None:
    source = (
        textwrap.dedent(MNIST)
        .lstrip()
        .replace("torch.flatten(x, 1)", "x.view(-1, 64 * 5 * 5)")
        .replace("nn.Linear(3200, 10)", "nn.Linear(64 * 5 * 5, 10)")
    )

    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            uri = editor.open("viewed.py", source)
            await editor.checks.refresh(uri)
            view_line = line_of(source, "x.view(")
            (diagnostic,) = editor.checks.diagnostics(uri)
            assert diagnostic.code == "view-size-mismatch"
            assert diagnostic.range.start.line == view_line
            assert "the tensor has 3136 elements, which is not a multiple of 1600" in (
                diagnostic.message
            )
            (action,) = await editor.settled(uri, view_line)
            assert action.title == (
                "torchls: Change 64 * 5 * 5 in the view to 64 * 7 * 7 (= 3136) and change "
                "in_features of fc1 to 64 * 7 * 7 (= 3136)"
            )
            fixed = apply(source, action, uri)
            assert "x = x.view(-1, 64 * 7 * 7)" in fixed
            assert "self.fc1 = nn.Linear(64 * 7 * 7, 10)" in fixed
            assert run_for_real(fixed, "MnistNet", [1, 1, 28, 28]) == [1, 10]
        finally:
            await editor.close()

    asyncio.run(scenario())


def test_the_failing_line_in_another_open_file_gets_the_error_and_the_fix(tmp_path: Path) -> None:
    blocks = textwrap.dedent(
        """
        from torch import nn


        class Layer(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.linear1 = nn.Linear(17, width)

            def forward(self, x):
                return self.linear1(x).relu()


        class Encoder(nn.Module):
            def __init__(self, width, depth):
                super().__init__()
                self.layers = nn.ModuleList([Layer(width) for _ in range(depth)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x
        """
    ).lstrip()
    top = textwrap.dedent(
        """
        from torch import nn

        from blocks import Encoder


        # torchls: input=(2, 16)
        class Top(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = Encoder(16, 2)

            def forward(self, x):
                return self.encoder(x)
        """
    ).lstrip()

    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            blocks_uri = editor.open("blocks.py", blocks)
            top_uri = editor.open("top.py", top)
            await editor.checks.refresh(top_uri)
            assert editor.checks.diagnostics(top_uri) == []
            forward = line_of(blocks, "return self.linear1(x)")
            (diagnostic,) = editor.checks.diagnostics(blocks_uri)
            assert diagnostic.range.start.line == forward
            assert "encoder.layers.0.linear1 (Linear) expects 17 input features" in (
                diagnostic.message
            )
            assert "at input (2, 16) it receives 16" in diagnostic.message
            (related,) = diagnostic.related_information or []
            assert related.location.uri == blocks_uri
            assert related.location.range.start.line == line_of(blocks, "self.linear1 = nn.Linear")
            assert "one expression builds every layer" in related.message
            assert any(d.code == CODE_MISMATCH for d in last_published(editor, blocks_uri))

            (action,) = await editor.settled(blocks_uri, forward)
            assert action.title == "torchls: Change in_features of encoder.layers.0.linear1 to 16"
            fixed = apply(blocks, action, blocks_uri)
            assert "self.linear1 = nn.Linear(16, width)" in fixed
            (tmp_path / "blocks.py").write_text(fixed)
            runs = (tmp_path / "blocks.py").parent
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys, torch; sys.path.insert(0, sys.argv[1]);"
                    "from top import Top; print(tuple(Top()(torch.randn(2, 16)).shape))",
                    str(runs),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=runs,
            )
            assert done.stdout.strip() == "(2, 16)", done.stderr[-2000:]
        finally:
            await editor.close()

    asyncio.run(scenario())


def test_a_hover_warm_up_that_meets_a_shape_error_publishes_it(tmp_path: Path) -> None:
    """No refresh asked for: the profile cache tells the shape checks of the failed result."""

    async def scenario() -> None:
        editor = Editor(tmp_path)
        try:
            text = textwrap.dedent(MNIST).lstrip()
            uri = editor.open("warmed.py", text)
            editor.server.model_cost.warm(uri)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                published = [p for p in editor.published if p.uri == uri]
                if published and any(d.code == CODE_MISMATCH for d in published[-1].diagnostics):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no shape diagnostic published: {editor.published}")
            forward = line_of(text, "return self.fc1(x)")
            (action,) = await editor.settled(uri, forward)
            assert action.title == "torchls: Change in_features of fc1 to 3136"
        finally:
            await editor.close()

    asyncio.run(scenario())


# -- the served server (`torchls serve --stdio`), as an editor drives it ---------------------------


async def _served_diagnostics(session: Any, uri: str, wanted: bool, timeout: float = 150) -> list:
    """The torchls shape diagnostics on `uri` once there are some (`wanted`) or none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in session.client.diagnostics.get(uri, []) if d.code == CODE_MISMATCH]
        if bool(found) == wanted:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"shape diagnostics on {uri}: {session.client.diagnostics.get(uri)}")


async def test_the_served_server_marks_the_mismatch_on_open_and_its_fix_clears_it(
    tmp_path: Path,
) -> None:
    """Nothing but what an editor sends: open, code actions at the error, the edit, save. And
    after close and reopen of the failing text (its profile now cached), the error again."""
    from tests.conftest import lsp_session

    text = textwrap.dedent(MNIST).lstrip()
    path = tmp_path / "mnist.py"
    path.write_text(text)
    uri = path.as_uri()
    forward = line_of(text, "return self.fc1(x)")

    def opened(session: Any, content: str, version: int = 1) -> None:
        session.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id="python", version=version, text=content
                )
            )
        )

    async with lsp_session(workspace=tmp_path) as session:
        opened(session, text)
        (diagnostic,) = await _served_diagnostics(session, uri, wanted=True)
        assert diagnostic.range.start.line == forward
        assert "fc1 (Linear) expects 3200 input features" in diagnostic.message
        assert "it receives 3136 = 64 x 7 x 7" in diagnostic.message
        (related,) = diagnostic.related_information or []
        assert related.location.range.start.line == line_of(text, "self.fc1 = nn.Linear")

        action = None
        deadline = time.monotonic() + 150
        while action is None and time.monotonic() < deadline:
            actions = await session.client.text_document_code_action_async(
                types.CodeActionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    range=types.Range(
                        start=types.Position(line=forward, character=8),
                        end=types.Position(line=forward, character=8),
                    ),
                    context=types.CodeActionContext(diagnostics=[diagnostic]),
                )
            )
            action = next(
                (a for a in actions or [] if isinstance(a, types.CodeAction) and "3136" in a.title),
                None,
            )
            if action is None:
                await asyncio.sleep(0.5)
        assert action is not None, "the verified fix was never offered"
        assert action.title == "torchls: Change in_features of fc1 to 3136"
        fixed = apply(text, action, uri)
        assert fixed == text.replace("nn.Linear(3200, 10)", "nn.Linear(3136, 10)")
        assert run_for_real(fixed, "MnistNet", [1, 1, 28, 28]) == [1, 10]

        path.write_text(fixed)
        session.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=fixed)],
            )
        )
        session.client.text_document_did_save(
            types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        assert await _served_diagnostics(session, uri, wanted=False) == []

        # The failing text again, from a closed file: its profile is cached, no job runs to tell
        # a listener, and the error must come back all the same.
        path.write_text(text)
        session.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        opened(session, text, version=3)
        (again,) = await _served_diagnostics(session, uri, wanted=True)
        assert again.range.start.line == forward
