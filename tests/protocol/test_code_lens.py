"""CodeLens and the model report through a real LSP session over stdio: a lens above each model
class and each construction with a stated input, titles with the profile's own numbers, and the
report's tree and exports."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.protocol.inline_fixture import MODEL_SOURCE, load_module

from torchls.cost.report import count


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


async def _lenses(session: Session, uri: str) -> list[types.CodeLens]:
    found = await session.client.text_document_code_lens_async(
        types.CodeLensParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )
    return found or []


async def _report(session: Session, arguments: dict[str, Any]) -> dict[str, Any]:
    answer = await session.client.protocol.send_request_async("torchls/modelReport", arguments)
    return _plain(answer)


def _plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _torch_counts(path: Path) -> tuple[int, int]:
    """BranchNet's parameters, and its MACs (convolutions and the linear) at (2, 3, 16, 16),
    from torch itself: modules counted, each conv's MACs from its real output."""
    import torch

    module = load_module(path)
    model = module.BranchNet()
    macs = 0

    def hook(layer: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, torch.nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] ** 2
            macs += output.numel() * per_output
        elif isinstance(layer, torch.nn.Linear):
            macs += output.numel() * layer.in_features

    for layer in model.modules():
        layer.register_forward_hook(hook)
    model(torch.randn(2, 3, 16, 16))
    return sum(p.numel() for p in model.parameters()), macs


async def test_lenses_titles_and_the_model_report(tmp_path: Path) -> None:
    path = tmp_path / "branchnet.py"
    path.write_text(MODEL_SOURCE)
    params, macs = _torch_counts(path)
    lines = MODEL_SOURCE.split("\n")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path, MODEL_SOURCE)
        lenses = await _lenses(session, uri)
        # the two model classes and the construction with a stated input
        assert [lens.range.start.line for lens in lenses] == [
            lines.index("class Block(nn.Module):"),
            lines.index("class BranchNet(nn.Module):"),
            lines.index("model = BranchNet(width=8)  # torchls: input=(2, 3, 16, 16)"),
        ]
        assert all(lens.command is None for lens in lenses)  # titles come with resolve
        titles = []
        for lens in lenses:
            resolved = await session.client.code_lens_resolve_async(lens)
            assert resolved.command is not None
            assert resolved.command.command == "torchls.showModelReport"
            assert _plain(resolved.command.arguments) == [
                {"uri": uri, "line": lens.range.start.line, "character": lens.range.start.character}
            ]
            titles.append(resolved.command.title)
        # Block(width) has no default width: its profile fails, and the title says so
        assert titles[0].startswith("⚠") and "hover Block for why" in titles[0]
        expected = f"{count(params)} params · {count(macs)} MACs · (2, 3, 16, 16)"
        assert titles[1] == expected and titles[2] == expected

        # the report of the construction, as the lens's click asks for it
        arguments = _plain(resolved.command.arguments)[0]
        document = await _report(session, arguments)
        assert "error" not in document, document
        assert document["name"] == "BranchNet"
        assert document["parameters"]["total"] == params and document["macs"] == macs
        assert document["input"]["text"] == "(2, 3, 16, 16)"
        assert document["input"]["origin"] == "comment"
        tree = document["tree"]
        assert tree and tree[0]["path"] == "" and tree[0]["params"] == params
        # each module's parameters are its children's plus its own: here, leaves' sums
        by_path = {row["path"]: row for row in tree}
        for row in tree:
            children = [
                other
                for other in tree
                if other["depth"] == row["depth"] + 1
                and (other["path"].startswith(row["path"] + ".") or not row["path"])
            ]
            if children:
                assert sum(child["params"] for child in children) == row["params"], row
        assert set(by_path) == {name for name, _ in load_module(path).BranchNet().named_modules()}
        # the two Blocks are one repeated group
        assert by_path["right.0"]["repeat"]["count"] == 2
        # the exports hold every module
        rows = list(csv.DictReader(io.StringIO(document["csv"])))
        assert [row["path"] for row in rows] == [row["path"] for row in tree]
        for row in tree:
            assert f"`{row['path'] or '(BranchNet)'}`" in document["markdown"]
        assert "right.0-1: 2 x Block" in document["markdown"]
        assert re.search(r"gpu_memory_gb", str(document.keys()))

        # the failing class: one sentence, no report
        failed = await _report(
            session, {"uri": uri, "line": lines.index("class Block(nn.Module):"), "character": 6}
        )
        assert set(failed) == {"error"} and "Block" in failed["error"]
        nothing = await _report(session, {"uri": uri, "line": 0, "character": 0})
        assert set(nothing) == {"error"}


async def test_blocked_lenses_say_why(tmp_path: Path) -> None:
    path = tmp_path / "branchnet.py"
    path.write_text(MODEL_SOURCE)
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        uri = _open(session, path, MODEL_SOURCE)
        lenses = await _lenses(session, uri)
        assert len(lenses) == 3
        resolved = await session.client.code_lens_resolve_async(lenses[1])
        assert resolved.command is not None
        assert resolved.command.title == (
            "torchls runs no code in an untrusted workspace: no cost shown"
        )
        start = lenses[1].range.start
        report = await _report(
            session, {"uri": uri, "line": start.line, "character": start.character}
        )
        assert set(report) == {"error"} and "not trusted" in report["error"]


async def test_a_model_that_fails_on_a_shape_names_the_layer_in_its_lens(tmp_path: Path) -> None:
    """The lens above a model whose forward fails says where, in the numbers torch gives: what
    the layer was built for and what reaches it, not only "could not profile"."""
    import textwrap

    import torch
    from tests.shape_fixtures import MNIST

    text = textwrap.dedent(MNIST).lstrip()
    path = tmp_path / "mnist.py"
    path.write_text(text)
    model = load_module(path).MnistNet()
    try:
        model(torch.randn(1, 1, 28, 28))
    except RuntimeError as error:
        assert "1x3136 and 3200x10" in str(error)  # torch refuses it the same way
    else:
        raise AssertionError("the fixture should fail in torch")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path, text)
        (lens,) = await _lenses(session, uri)
        resolved = await session.client.code_lens_resolve_async(lens)
        assert resolved.command is not None
        assert resolved.command.title == (
            "⚠ MnistNet fails at (1, 1, 28, 28): fc1 has in_features=3200, receives 3136"
        )
