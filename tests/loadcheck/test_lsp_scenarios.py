"""Every load problem of the issue, end to end through one LSP session: the diagnostic the
editor shows, the quick fix it offers, and the fix applied as the editor would (a didChange)
clearing the error. (That each fixed script really loads with torch is tested in
test_fixes_real_torch.py.)"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from lsprotocol import types
from safetensors.torch import save_file
from tests.conftest import lsp_session
from tests.loadcheck.test_lsp_diagnostics import (
    _actions,
    _apply,
    _change,
    _diagnostics,
    _open,
    _torchls,
)
from torch import nn

MODEL = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)
"""


def _net(num_classes: int = 10) -> nn.Module:
    scope: dict[str, object] = {}
    exec(compile(MODEL, "model.py", "exec"), scope)
    return scope["Net"](num_classes)  # type: ignore[operator]


@contextmanager
def _saved_on_cuda() -> Iterator[None]:
    """torch.save tags CPU storages 'cuda:0', as on a GPU machine."""
    from torch import serialization

    def tagger(storage: object) -> str | None:
        return "cuda:0" if getattr(storage, "device", None) == torch.device("cpu") else None

    entry = (-1, tagger, lambda storage, location: None)
    serialization.register_package(*entry)
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


def _with(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


@dataclass
class Case:
    name: str
    save: Callable[[Path], None]
    load: str  # the lines after `model = Net()`
    code: str  # the diagnostic's code
    severity: types.DiagnosticSeverity
    words: str  # in the message
    fix: str | None  # in the title of the fix applied (None: no fix)
    header: str = "import torch\nfrom torch import nn\nfrom model import Net\n\nmodel = Net()\n"


def _save(name: str, make: Callable[[], object]) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        torch.save(make(), folder / name)

    return save


def _save_cuda(folder: Path) -> None:
    with _saved_on_cuda():
        torch.save(_net().state_dict(), folder / "gpu.pt")


def _save_safetensors(
    name: str, state: Callable[[], dict[str, torch.Tensor]]
) -> Callable[..., None]:
    def save(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in state().items()}, str(folder / name))

    return save


ERROR, WARNING = types.DiagnosticSeverity.Error, types.DiagnosticSeverity.Warning
CASES = [
    Case(
        "dataparallel",
        _save("dp.pt", lambda: nn.DataParallel(_net()).state_dict()),
        "model.load_state_dict(torch.load('dp.pt'))",
        "keys",
        ERROR,
        "start with `module.`",
        "strip the `module.` prefix",
    ),
    Case(
        "compiled",
        _save("compiled.pt", lambda: _with(_net().state_dict(), "_orig_mod.")),
        "model.load_state_dict(torch.load('compiled.pt'))",
        "keys",
        ERROR,
        "torch.compile",
        "strip the `_orig_mod.` prefix",
    ),
    Case(
        "wrapped-model",
        _save("plain.pt", lambda: _net().state_dict()),
        "model = nn.DataParallel(model)\nmodel.load_state_dict(torch.load('plain.pt'))",
        "keys",
        ERROR,
        "the model's keys start with `module.`",
        "add the `module.` prefix",
    ),
    Case(
        "training-checkpoint",
        _save("run.ckpt", lambda: {"epoch": 3, "state_dict": _net().state_dict(), "lr": 0.1}),
        "ckpt = torch.load('run.ckpt')\nmodel.load_state_dict(ckpt)",
        "nested",
        ERROR,
        "training checkpoint (epoch, state_dict, lr)",
        'nested ["state_dict"]',
    ),
    Case(
        "training-checkpoint-dataparallel",
        _save("ddp.ckpt", lambda: {"model": nn.DataParallel(_net()).state_dict(), "step": 9}),
        "model.load_state_dict(torch.load('ddp.ckpt'))",
        "nested",
        ERROR,
        "under ['model']",
        "strip the `module.` prefix",
    ),
    Case(
        "thop",
        _save(
            "thop.pt",
            lambda: {
                **_net().state_dict(),
                "total_ops": torch.zeros(1),
                "total_params": torch.zeros(1),
            },
        ),
        "model.load_state_dict(torch.load('thop.pt'))",
        "keys",
        ERROR,
        "thop",
        "drop thop's total_ops/total_params",
    ),
    Case(
        "other-head",
        _save("hundred.pt", lambda: _net(100).state_dict()),
        "model.load_state_dict(torch.load('hundred.pt'), strict=False)",
        "shapes",
        ERROR,
        "even with strict=False: the head `head`",
        "skip the head `head`",
    ),
    Case(
        "weights-only",
        _save("args.pt", lambda: {"model": _net().state_dict(), "args": argparse.Namespace(lr=1)}),
        "model.load_state_dict(torch.load('args.pt')['model'])",
        "weights-only",
        ERROR,
        "`argparse.Namespace`",
        "weights_only=False",
    ),
    Case(
        "cuda",
        _save_cuda,
        "model.load_state_dict(torch.load('gpu.pt'))",
        "cuda",
        ERROR,
        "cuda:0",
        'map_location="cpu"',
    ),
    Case(
        "strict-false-loads-nothing",
        _save("dp2.pt", lambda: nn.DataParallel(_net()).state_dict()),
        "model.load_state_dict(torch.load('dp2.pt'), strict=False)",
        "partial",
        WARNING,
        "strict=False loads nothing",
        "strip the `module.` prefix",
    ),
    Case(
        "safetensors",
        _save_safetensors("m.safetensors", lambda: _with(_net().state_dict(), "module.")),
        "from safetensors.torch import load_file\n"
        "model.load_state_dict(load_file('m.safetensors'))",
        "keys",
        ERROR,
        "`module.`",
        "strip the `module.` prefix",
    ),
    Case(
        "safetensors-load-model",
        _save_safetensors(
            "body.safetensors",
            lambda: {k: v for k, v in _net().state_dict().items() if k.startswith("features")},
        ),
        "from safetensors.torch import load_model\nload_model(model, 'body.safetensors')",
        "keys",
        ERROR,
        "load_model will raise",
        "strict=False",
    ),
    Case(
        "missing-file",
        lambda folder: None,
        "model.load_state_dict(torch.load('runs/best.pt'))",
        "missing-file",
        WARNING,
        "`runs/best.pt` does not exist",
        None,
    ),
]


async def test_each_problem_gets_its_diagnostic_and_a_fix_that_clears_it(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    opened = {}
    async with lsp_session(workspace=tmp_path) as session:
        for case in CASES:
            case.save(tmp_path)
            # Prefixed: a workspace `safetensors.py` would shadow the library for Python (and
            # so for torchls, which imports workspace modules as Python does).
            path = tmp_path / f"case_{case.name.replace('-', '_')}.py"
            text = case.header + case.load + "\n"
            path.write_text(text)
            opened[case.name] = (_open(session, path), text)
        for case in CASES:
            uri, text = opened[case.name]
            found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
            diagnostic = next((d for d in found if d.code == case.code), None)
            assert diagnostic is not None, (case.name, [(d.code, d.message) for d in found])
            assert diagnostic.severity == case.severity, case.name
            assert case.words in diagnostic.message, (case.name, diagnostic.message)
            actions = await _actions(session, uri, diagnostic)
            titles = [a.title for a in actions]
            if case.fix is None:
                assert titles == [], (case.name, titles)
                continue
            chosen = next((a for a in actions if case.fix.lower() in a.title.lower()), None)
            assert chosen is not None, (case.name, titles)
            _change(session, uri, _apply(text, chosen), 2)
        for case in CASES:
            if case.fix is None:
                continue
            uri, _ = opened[case.name]
            # The edited document is checked again: the problem is gone, and nothing is left
            # that would raise.
            await _diagnostics(
                session,
                uri,
                lambda d, case=case: (
                    not any(x.code == case.code or x.severity == ERROR for x in _torchls(d))
                ),
                timeout=60,
            )
        status = await session.command("torchls.status")
        assert status["heavy_modules_loaded"] == []
