"""Inlay shapes through a real LSP session over stdio: the hints equal what a real CPU forward
binds, an edit hides them until the model is profiled again, and the settings switch them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.protocol.inline_fixture import (
    MODEL_SOURCE,
    load_module,
    parameter_labels,
    real_forward_hints,
    whole,
)


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


async def _hints(session: Session, uri: str, text: str) -> list[types.InlayHint]:
    return await session.client.text_document_inlay_hint_async(whole(uri, text)) or []


async def _wait_for_hints(
    session: Session, uri: str, text: str, timeout: float = 120.0
) -> list[types.InlayHint]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await _hints(session, uri, text)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"no inlay hints within {timeout} s")


def _by_position(hints: list[types.InlayHint]) -> dict[tuple[int, int], str]:
    found = {}
    for hint in hints:
        assert isinstance(hint.label, str)
        found[(hint.position.line, hint.position.character)] = hint.label
    return found


async def test_inlay_shapes_equal_a_real_forward_and_hide_after_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "branchnet.py"
    path.write_text(MODEL_SOURCE)
    expected = real_forward_hints(path)
    # the fixture's forwards bind tensors on these many lines (BranchNet's and Block's)
    assert len(expected) >= 9
    async with lsp_session(workspace=tmp_path) as session:
        refreshes: list[str] = []

        @session.client.feature(types.WORKSPACE_INLAY_HINT_REFRESH)
        def on_inlay_refresh(params: Any) -> None:
            refreshes.append("inlay")

        @session.client.feature(types.WORKSPACE_CODE_LENS_REFRESH)
        def on_lens_refresh(params: Any) -> None:
            refreshes.append("lens")

        uri = _open(session, path, MODEL_SOURCE)
        hints = await _wait_for_hints(session, uri, MODEL_SOURCE)
        # once every model of the file has answered, the set is complete
        await asyncio.sleep(1.0)
        hints = await _hints(session, uri, MODEL_SOURCE)
        assert _by_position(hints) == expected
        assert all(hint.kind == types.InlayHintKind.Type for hint in hints)
        # pytest-lsp's VS Code capabilities offer a CodeLens refresh but no inlay hint refresh
        # (VS Code itself offers both): asked for what the client can do, and only that
        assert "lens" in refreshes and "inlay" not in refreshes

        # the emoji line: the return hint's column counts UTF-16 units (two per emoji)
        line_of_return = MODEL_SOURCE.split("\n").index(
            '        return {"\U0001f525": logits}["\U0001f525"]'
        )
        returned = [h for h in hints if h.position.line == line_of_return]
        assert len(returned) == 1 and returned[0].label == "→ (2, 5)"
        assert (
            returned[0].position.character
            == len('        return {"\U0001f525": logits}["\U0001f525"]'.encode("utf-16-le")) // 2
        )

        # a range: only the hints inside it
        block_forward = MODEL_SOURCE.split("\n").index("        y = self.act(self.conv(x))")
        ranged = await session.client.text_document_inlay_hint_async(
            types.InlayHintParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                range=types.Range(
                    start=types.Position(line=block_forward, character=0),
                    end=types.Position(line=block_forward + 1, character=200),
                ),
            )
        )
        assert ranged is not None
        assert {h.position.line for h in ranged} == {block_forward, block_forward + 1}

        # resolve: where the hint came from, in the tooltip
        y_hint = next(h for h in ranged if h.position.line == block_forward)
        resolved = await session.client.inlay_hint_resolve_async(y_hint)
        assert isinstance(resolved.tooltip, types.MarkupContent)
        tooltip = resolved.tooltip.value
        assert "Block.forward" in tooltip
        # Block is used twice in BranchNet: its line ran twice, seen from both profiles
        assert "ran 2 times" in tooltip
        assert "BranchNet (line" in tooltip
        assert "`(2, 8, 16, 16)`" in tooltip

        # an edit: the hints of the old text are never shown on the new one
        edited = "# a comment line moves every line down\n" + MODEL_SOURCE
        session.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=edited)],
            )
        )
        assert await _hints(session, uri, edited) == []
        # left alone, the file is profiled again and its hints come back where they now are
        again = await _wait_for_hints(session, uri, edited)
        await asyncio.sleep(1.0)
        again = await _hints(session, uri, edited)
        shifted = {(line + 1, character): label for (line, character), label in expected.items()}
        assert _by_position(again) == shifted


async def test_settings_switch_shapes_off_and_parameter_counts_on(tmp_path: Path) -> None:
    path = tmp_path / "branchnet.py"
    path.write_text(MODEL_SOURCE)
    labels = parameter_labels(path)
    assert len(labels) == 7  # five in BranchNet, two in Block
    options = {"inlayHints": {"shapes": False, "parameters": True}, "codeLens": False}
    async with lsp_session(options, workspace=tmp_path) as session:
        uri = _open(session, path, MODEL_SOURCE)
        hints = await _wait_for_hints(session, uri, MODEL_SOURCE)
        await asyncio.sleep(1.0)
        hints = await _hints(session, uri, MODEL_SOURCE)
        # one hint per `self.x = ...` line of an __init__, after the statement: the
        # parameters of that submodule as torch counts them; no shapes
        assert {h.position.line: h.label for h in hints} == labels
        lines = MODEL_SOURCE.split("\n")
        for hint in hints:
            assert hint.position.character == len(lines[hint.position.line])
        lenses = await session.client.text_document_code_lens_async(
            types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        assert not lenses


async def test_everything_off_means_no_hints_and_no_lenses(tmp_path: Path) -> None:
    path = tmp_path / "branchnet.py"
    path.write_text(MODEL_SOURCE)
    options = {"inlayHints": {"shapes": False, "parameters": False}, "codeLens": False}
    async with lsp_session(options, workspace=tmp_path) as session:
        uri = _open(session, path, MODEL_SOURCE)
        # the model is profiled all the same (the hover needs it): wait for it
        status = await session.command("torchls.status")
        deadline = time.monotonic() + 120
        while status["profiles_cached"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            status = await session.command("torchls.status")
        assert status["profiles_cached"] >= 1
        assert not await _hints(session, uri, MODEL_SOURCE)
        lenses = await session.client.text_document_code_lens_async(
            types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        assert not lenses


BLOCKS = """\
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(x + y)
"""
NET = """\
from torch import nn

from blocks import Residual


# torchls: input=(1, 4, 8, 8)
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Residual(4)
        self.down = nn.Conv2d(4, 6, 2, stride=2)
        self.second = Residual(6)

    def forward(self, x):
        return self.second(self.down(self.first(x)))
"""


async def test_a_model_in_another_file_gives_hints_where_its_code_ran(tmp_path: Path) -> None:
    import sys

    import torch

    (tmp_path / "blocks.py").write_text(BLOCKS)
    (tmp_path / "net.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    try:
        net = load_module(tmp_path / "net.py").Net()
        expected = real_forward_hints(tmp_path / "blocks.py", lambda: net(torch.randn(1, 4, 8, 8)))
    finally:
        sys.path.remove(str(tmp_path))
    # Residual runs at two widths: its lines bound two shapes each
    assert set(expected.values()) == {
        ": {(1, 4, 8, 8), (1, 6, 4, 4)}",
        "→ {(1, 4, 8, 8), (1, 6, 4, 4)}",
    }
    async with lsp_session(workspace=tmp_path) as session:
        net_uri = _open(session, tmp_path / "net.py", NET)
        await _wait_for_hints(session, net_uri, NET)  # Net's profile is in
        # blocks.py, opened now, shows what Net's forward bound in it, without a run of its own
        # (Residual cannot be built alone: its width has no default)
        blocks_uri = _open(session, tmp_path / "blocks.py", BLOCKS)
        hints = await _hints(session, blocks_uri, BLOCKS)
        assert _by_position(hints) == expected
        resolved = await session.client.inlay_hint_resolve_async(hints[0])
        assert isinstance(resolved.tooltip, types.MarkupContent)
        assert "Net (line 7 of net.py)" in resolved.tooltip.value
        assert "Residual.forward" in resolved.tooltip.value


BRANCHES = """\
import torch.nn.functional as F
from torch import nn


class Tiny(nn.Module):  # torchls: input=(2, 8):long
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.extra = nn.ModuleList()
        self.head = nn.Linear(16, 100)

    def forward(self, idx, targets=None):
        x = self.emb(idx)
        for block in self.extra:
            x = block(x)
        if targets is not None:
            logits = self.head(x)
            loss = F.cross_entropy(logits.view(-1, 100), targets.view(-1))
        else:
            logits = self.head(x[:, [-1], :])
            loss = None
        return logits, loss
"""
WITH_TARGETS = """

class WithTargets(Tiny):  # torchls: input=(2, 8):long, targets=(2, 8):long
    pass
"""


async def test_lines_no_forward_ran_say_not_run_and_why(tmp_path: Path) -> None:
    """Where there is no shape because the line did not run at the profiled input, the editor
    says so at the line's end (silence would read as "nothing here"); a line that another
    model's forward ran shows that model's shape instead."""
    lines = BRANCHES.splitlines()

    def end_of(needle: str) -> tuple[int, int]:
        number = next(i for i, line in enumerate(lines) if needle in line)
        return (number, len(lines[number]))

    async with lsp_session(workspace=tmp_path) as session:
        (tmp_path / "tiny.py").write_text(BRANCHES)
        uri = _open(session, tmp_path / "tiny.py", BRANCHES)
        hints = await _wait_for_hints(session, uri, BRANCHES)
        not_run = {k for k, label in _by_position(hints).items() if label == "not run"}
        assert not_run == {
            end_of("x = block(x)"),
            end_of("logits = self.head(x)"),
            end_of("loss = F.cross_entropy"),
        }
        # the branch this input takes has its shapes
        shown = _by_position(hints)
        assert shown[(end_of("self.head(x[:")[0], len("            logits"))] == ": (2, 1, 100)"
        hint = next(h for h in hints if h.label == "not run")
        resolved = await session.client.inlay_hint_resolve_async(hint)
        assert isinstance(resolved.tooltip, types.MarkupContent)
        assert "did not run" in resolved.tooltip.value
        assert "Tiny (line 5 of tiny.py) at input (2, 8):long" in resolved.tooltip.value

        both = BRANCHES + WITH_TARGETS
        (tmp_path / "both.py").write_text(both)
        both_uri = _open(session, tmp_path / "both.py", both)
        deadline = time.monotonic() + 120
        while True:
            found = _by_position(await _hints(session, both_uri, both))
            taken = (end_of("logits = self.head(x)")[0], len("            logits"))
            if taken in found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        # WithTargets takes the `targets` branch: its shapes, not "not run"
        assert found[taken] == ": (2, 8, 100)"
        assert {k for k, label in found.items() if label == "not run"} == {end_of("x = block(x)")}
