"""Hover on models through a real LSP session over stdio, as VS Code would ask."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

from lsprotocol import types
from tests.conftest import EXAMPLES, Session, lsp_session

MODEL_PY = EXAMPLES / "model.py"
TRAIN_PY = EXAMPLES / "train.py"


def _position(text: str, needle: str, nth: int = 0) -> types.Position:
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index)
    column = index - (text.rfind("\n", 0, index) + 1)
    return types.Position(line=line, character=column + 1)


def _open(session: Session, path: Path, text: str | None = None, version: int = 1) -> str:
    uri = path.as_uri()
    session.client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri,
                language_id="python",
                version=version,
                text=text if text is not None else path.read_text(),
            )
        )
    )
    return uri


async def _hover(session: Session, uri: str, position: types.Position) -> str | None:
    result = await session.client.text_document_hover_async(
        types.HoverParams(text_document=types.TextDocumentIdentifier(uri=uri), position=position)
    )
    if result is None:
        return None
    assert isinstance(result.contents, types.MarkupContent)
    assert result.contents.kind == types.MarkupKind.Markdown
    return result.contents.value


def _number(markdown: str, label: str) -> int:
    """The exact figure of a row: `| Parameters | **20,234** (20.2 K) |` or
    `| MACs | **5.6 M** (5,603,968) |`."""
    row = re.search(rf"^\| {label} \| (.*) \|$", markdown, re.MULTILINE)
    assert row, markdown
    exact = re.search(r"\*\*([\d,]+)\*\*", row.group(1)) or re.search(r"\(([\d,]+)\)", row.group(1))
    assert exact, row.group(0)
    return int(exact.group(1).replace(",", ""))


async def test_hover_on_a_model_class_shows_its_cost() -> None:
    text = MODEL_PY.read_text()
    async with lsp_session() as session:
        uri = _open(session, MODEL_PY)
        markdown = await _hover(session, uri, _position(text, "class SmallConvNet", 0))
        assert markdown is not None
        # conv 3->32 3x3 (896) + BN (64) + conv 32->64 3x3 (18,496) + BN (128) + linear 64->10
        assert _number(markdown, "Parameters") == 896 + 64 + 18_496 + 128 + 650
        assert "MACs" in markdown and "FLOPs" in markdown and "1 MAC = 2 FLOPs" in markdown
        # The input comes from the literal call in the file's __main__ block.
        assert "`(1, 3, 32, 32)`" in markdown and "model(torch.randn(1, 3, 32, 32))" in markdown
        macs = 3 * 32 * 9 * 32 * 32 + 32 * 64 * 9 * 16 * 16 + 64 * 10
        assert _number(markdown, "MACs") == macs
        assert "fp32" in markdown and "int8" in markdown and "Adam" in markdown
        assert "`features.4` | Conv2d | 1x64x16x16" in markdown
        # thop also counts BatchNorm's element-wise work; the hover says so
        assert "thop" in markdown and "BatchNorm2d" in markdown
        # Not on a model: no hover
        assert await _hover(session, uri, _position(text, "import torch", 0)) is None
        status = await session.command("torchls.status")
        assert status["heavy_modules_loaded"] == []


async def test_hover_on_a_construction_in_another_file_uses_its_arguments() -> None:
    text = TRAIN_PY.read_text()
    async with lsp_session() as session:
        uri = _open(session, TRAIN_PY)
        markdown = await _hover(session, uri, _position(text, "SmallConvNet(num_classes=10)"))
        assert markdown is not None
        assert "SmallConvNet(num_classes=10)" in markdown
        # train.py feeds the model from a DataLoader: the shape is a labelled guess
        assert "a guess** from the first layer" in markdown
        assert "`# torchls: input=(…)` comment above the call" in markdown
        # Hovering must not have run the training script.
        assert not (EXAMPLES / "checkpoints" / "never-written").exists()


async def test_an_edit_is_seen_by_the_next_hover(tmp_path: Path) -> None:
    shutil.copy(MODEL_PY, tmp_path / "model.py")
    path = tmp_path / "model.py"
    text = path.read_text()
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path, text)
        first = await _hover(session, uri, _position(text, "class TabularMLP"))
        assert first is not None
        # in 20 -> hidden 64 -> 2 classes
        assert _number(first, "Parameters") == 20 * 64 + 64 + 64 * 2 + 2
        edited = text.replace("hidden: int = 64", "hidden: int = 128")
        session.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=edited)],
            )
        )
        second = await _hover(session, uri, _position(edited, "class TabularMLP"))
        assert second is not None
        if "earlier version" in second:  # shown stale while the new count runs: then fresh
            await asyncio.sleep(3)
            second = await _hover(session, uri, _position(edited, "class TabularMLP"))
            assert second is not None
        assert _number(second, "Parameters") == 20 * 128 + 128 + 128 * 2 + 2
        # The unsaved edit was used; the file on disk is unchanged.
        assert path.read_text() == text


async def test_opening_a_file_warms_the_cache() -> None:
    async with lsp_session() as session:
        _open(session, MODEL_PY)
        for _ in range(120):
            status = await session.command("torchls.status")
            if status["profiles_cached"] >= 3:  # two classes and one construction
                break
            await asyncio.sleep(0.5)
        assert status["profiles_cached"] >= 3


async def test_untrusted_workspace_hover_says_why() -> None:
    text = MODEL_PY.read_text()
    async with lsp_session({"trusted": False}) as session:
        uri = _open(session, MODEL_PY)
        markdown = await _hover(session, uri, _position(text, "class SmallConvNet"))
        assert markdown is not None
        assert "not trusted" in markdown and "Parameters" not in markdown


async def test_without_torch_the_hover_says_where_it_looked(bare_python: str) -> None:
    text = MODEL_PY.read_text()
    async with lsp_session({"worker": {"interpreter": bare_python}}) as session:
        await session.wait_for_status(lambda status: status["state"] == "missing-torch")
        uri = _open(session, MODEL_PY)
        markdown = await _hover(session, uri, _position(text, "class SmallConvNet"))
        assert markdown is not None
        assert f"torch is not installed in `{bare_python}`" in markdown
        assert "torchls.worker.interpreter" in markdown


NAMED_DIMENSION = """\
from torch import nn


# torchls: input=(1, L=32):long
class Encoder(nn.Module):
    def __init__(self, vocab=100, width=64, ff=128, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))
"""


async def test_a_named_dimension_in_the_comment_shows_the_cost_as_a_checked_formula(
    tmp_path: Path,
) -> None:
    path = tmp_path / "encoder.py"
    path.write_text(NAMED_DIMENSION)

    def macs(length: int) -> int:
        # by hand, per layer: 4 d^2 + 2 d ff per token (projections, feed-forward), 2 d per pair
        # of tokens (scores and weighted sum); d x vocab per token for the head
        per_token = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 100
        return 2 * 2 * 64 * length * length + per_token * length

    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        markdown = await _hover(session, uri, _position(NAMED_DIMENSION, "class Encoder"))
        assert markdown is not None
        # the figures are at the written value, L=32
        assert _number(markdown, "MACs") == macs(32)
        # and the formula, fitted on the default sweep around it, is checked on a point past it
        found = re.search(
            r"MACs\(L\) = ([\d,]+) L\^2 \+ ([\d,]+) L \(checked at L=(\d+)\)", markdown
        )
        assert found, markdown
        square, linear, check = (int(group.replace(",", "")) for group in found.groups())
        for length in (32, 48, check):
            assert square * length * length + linear * length == macs(length)
