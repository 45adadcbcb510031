"""Hover on a checkpoint path in code, through a real LSP session: what the file holds, read as
data (in untrusted workspaces too), and the link that opens the viewer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

import torch
from lsprotocol import types
from safetensors.torch import save_file
from tests.checkpoint.factories import Payload, touch_command
from tests.conftest import Session, lsp_session
from torch import nn

TRAIN = """\
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel

CKPT = "runs/best.pt"
WEIGHTS = Path("model.safetensors")


class Net(torch.nn.Module):
    pass


state = torch.load("runs/best.pt")
weights = load_file("model.safetensors")
bert = AutoModel.from_pretrained("./hf")
again = torch.load(CKPT)
bad = torch.load("hostile.pt")
greeting = "hello.pt"
more = load_file(WEIGHTS)
net = Net()
"""


def _files(root: Path) -> None:
    (root / "runs").mkdir()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save({"epoch": 7, "state_dict": model.state_dict()}, root / "runs" / "best.pt")
    save_file({"w": torch.zeros(3, 5, dtype=torch.float16)}, root / "model.safetensors")
    (root / "hf").mkdir()
    save_file({"embeddings.weight": torch.zeros(10, 4)}, root / "hf" / "model.safetensors")
    (root / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    payload = Payload(os.system, touch_command(root / "PWNED"))
    torch.save({"w": torch.zeros(1), "run": payload}, root / "hostile.pt")
    (root / "train.py").write_text(TRAIN)


def _position(text: str, needle: str, offset: int = 1) -> types.Position:
    index = text.index(needle) + offset
    line = text.count("\n", 0, index)
    return types.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))


async def _hover(session: Session, path: Path, needle: str, offset: int = 1) -> str | None:
    text = path.read_text()
    reply = await session.client.text_document_hover_async(
        types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=path.as_uri()),
            position=_position(text, needle, offset),
        )
    )
    if reply is None:
        return None
    assert isinstance(reply.contents, types.MarkupContent)
    return reply.contents.value


def _open(session: Session, path: Path) -> None:
    session.client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=path.as_uri(), language_id="python", version=1, text=path.read_text()
            )
        )
    )


def _link_target(markdown: str) -> list[str]:
    prefix = "](command:torchls.openCheckpointViewer?"
    start = markdown.index(prefix) + len(prefix)
    argument = markdown[start : markdown.index(")", start)]
    value: list[str] = json.loads(unquote(argument))
    return value


async def test_hover_on_checkpoint_paths_in_an_untrusted_workspace(tmp_path: Path) -> None:
    _files(tmp_path)
    train = tmp_path / "train.py"
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        _open(session, train)
        best = await _hover(session, train, 'torch.load("runs/best.pt")', 13)
        safetensors = await _hover(session, train, '"model.safetensors"')
        folder = await _hover(session, train, '"./hf"')
        constant = await _hover(session, train, "torch.load(CKPT)", 12)
        path_constant = await _hover(session, train, "load_file(WEIGHTS)", 11)
        hostile = await _hover(session, train, '"hostile.pt"')
        not_there = await _hover(session, train, '"hello.pt"')
        model = await _hover(session, train, "net = Net()", 7)
    assert best is not None
    assert "torch zip archive" in best
    # 4x8 + 8 + 8x2 + 2 parameters in 4 tensors, as torch saved them.
    assert "4 tensors, 58 elements (float32 58)" in best
    assert "top-level keys: `epoch`, `state_dict`" in best
    assert "`torch.load(weights_only=True)` accepts it" in best
    assert _link_target(best) == [(tmp_path / "runs" / "best.pt").as_uri()]

    assert safetensors is not None and "safetensors" in safetensors
    assert "1 tensor, 15 elements (float16 15)" in safetensors
    assert _link_target(safetensors) == [(tmp_path / "model.safetensors").as_uri()]

    assert folder is not None and "Hugging Face model folder" in folder
    assert "1 tensor, 40 elements" in folder
    assert _link_target(folder) == [(tmp_path / "hf").as_uri()]

    assert constant is not None and "4 tensors, 58 elements" in constant
    assert path_constant is not None and "1 tensor, 15 elements" in path_constant

    assert hostile is not None and "**refuses** it" in hostile
    assert "it **runs code**: `posix.system`" in hostile or "`os.system`" in hostile
    assert not (tmp_path / "PWNED").exists()

    assert not_there is None  # a string naming no file is no checkpoint path
    # The model hover still answers on a model (here: why it is not profiled).
    assert model is not None and "not trusted" in model


async def test_hover_on_a_truncated_checkpoint_says_why_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(100)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    train = tmp_path / "train.py"
    train.write_text('import torch\nstate = torch.load("cut.pt")\n')
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        _open(session, train)
        text = await _hover(session, train, '"cut.pt"')
    assert text is not None
    first, link = text.split("\n\n")
    assert first.startswith("**cut.pt**: torchls cannot read this checkpoint: cut.pt: ")
    assert link.startswith("[Open in the checkpoint viewer](command:torchls.openCheckpointViewer?")


BUILT = """\
import os
import os.path as osp
from pathlib import Path

import torch

RUNS = "runs"


def train(run_dir, name):
    a = torch.load(os.path.join("runs", "best.pt"))
    b = torch.load(Path("runs") / "best.pt")
    c = torch.load(f"{RUNS}/best.pt")
    d = torch.load(LATER)
    e = torch.load(osp.join(RUNS, "best" + ".pt"))
    f = torch.load(os.path.join(run_dir, "best.pt"))
    g = torch.load(f"{name}/best.pt")
    h = torch.load(Path(run_dir) / "best.pt")


LATER = os.path.join(RUNS, "best.pt")
"""


async def test_hover_follows_paths_built_from_constants_and_guesses_no_other(
    tmp_path: Path,
) -> None:
    (tmp_path / "runs").mkdir()
    torch.save({"a": torch.zeros(2), "b": torch.zeros(3)}, tmp_path / "runs" / "best.pt")
    # A best.pt beside the script too: a path whose other parts are unknown must not be taken
    # for it.
    torch.save({"only": torch.zeros(1)}, tmp_path / "best.pt")
    train = tmp_path / "train.py"
    train.write_text(BUILT)
    runs_best = [(tmp_path / "runs" / "best.pt").as_uri()]
    async with lsp_session({"trusted": False}, workspace=tmp_path) as session:
        _open(session, train)
        built = {
            needle: await _hover(session, train, needle, offset)
            for needle, offset in [
                ('"best.pt"))', 2),  # on the string inside os.path.join
                ('os.path.join("runs"', 9),  # on `join`
                ('Path("runs")', 1),
                ('/ "best.pt"', 4),
                ("{RUNS}/best.pt", 10),
                ("load(LATER)", 6),
                ('"best" + ".pt"', 11),
            ]
        }
        unknown = [
            await _hover(session, train, needle, offset)
            for needle, offset in [
                ('run_dir, "best.pt"', 10),
                ("{name}/best.pt", 9),
                ("Path(run_dir)", 1),
            ]
        ]
    for needle, markdown in built.items():
        assert markdown is not None, needle
        assert "2 tensors, 5 elements" in markdown, (needle, markdown)
        assert _link_target(markdown) == runs_best, needle
    assert unknown == [None, None, None]
