"""Where the hover answers besides a class and a construction (issue 15 item 6): on a variable
bound to a model, on a `self.x = ...` submodule line (its share of the parent's profile), and on
a workspace factory function's call, unless the factory loads or writes something. The numbers
are checked against torch itself, on real tensors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.profiling.test_hover import _hover, _number, _open
from torch.utils.flop_counter import FlopCounterMode

from torchls.source.models import FileModels, PlacedTarget, models_of
from torchls.source.project import Project

FIXTURE = Path(__file__).parent / "fixtures" / "hover_places" / "nets.py"


def _at(text: str, needle: str, offset: int = 1, nth: int = 0) -> types.Position:
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index)
    return types.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1) + offset)


def _real(module: torch.nn.Module, *inputs: torch.Tensor) -> tuple[int, int, Any]:
    """(parameters, MACs, output) as torch counts them on real tensors."""
    counter = FlopCounterMode(display=False)
    with counter:
        output = module(*inputs)
    parameters = sum(p.numel() for p in module.parameters())
    return parameters, counter.get_total_flops() // 2, output


def _fixture_module() -> Any:
    namespace: dict[str, Any] = {"__name__": "hover_places_nets"}
    exec(compile(FIXTURE.read_text(), str(FIXTURE), "exec"), namespace)
    return namespace


def _workspace(tmp_path: Path) -> Path:
    shutil.copy(FIXTURE, tmp_path / "nets.py")
    return tmp_path / "nets.py"


async def _hover_text(session: Session, uri: str, position: types.Position) -> str:
    markdown = await _hover(session, uri, position)
    assert markdown is not None, position
    return markdown


async def test_hover_on_a_variable_and_a_submodule_line_show_the_numbers(tmp_path: Path) -> None:
    nets = _fixture_module()
    torch.manual_seed(0)
    net = nets["Net"](width=24).eval()
    x = torch.randn(2, 3, 8, 8)
    net_parameters, net_macs, _ = _real(net, x)
    encoder_parameters, encoder_macs, encoder_output = _real(net.encoder, x)
    head_parameters = sum(p.numel() for p in net.head.parameters())
    built = nets["build_model"](8)
    built_parameters, built_macs, _ = _real(built, torch.randn(1, 3, 16, 16))

    path = _workspace(tmp_path)
    text = path.read_text()
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)

        # `model` in `model.eval()`: the profile of `model = Net(width=24).to("cpu")`
        on_variable = await _hover_text(session, uri, _at(text, "model.eval()", nth=1))
        assert "Net(width=24)" in on_variable
        assert _number(on_variable, "Parameters") == net_parameters
        assert _number(on_variable, "MACs") == net_macs
        # the same in `print(model(...))`
        on_call = await _hover_text(session, uri, _at(text, "model(torch.randn(2", offset=2))
        assert _number(on_call, "MACs") == net_macs

        # `self.encoder = Encoder(width)` in Net.__init__: its share of Net(width=24)
        on_line = await _hover_text(session, uri, _at(text, "self.encoder = ", offset=6))
        title = "**self.encoder** (Encoder) · its share of **Net**, built as `Net(width=24)`"
        assert title in on_line
        assert _number(on_line, "Parameters") == encoder_parameters
        assert _number(on_line, "MACs") == encoder_macs
        assert f"of Net's {net_parameters:,}" in on_line
        assert re.search(rf"\| output \| {'x'.join(map(str, encoder_output.shape))} \|", on_line)
        # a torch layer's line (nn.Linear is no model of its own): its share too, no forward
        # of its own counted twice
        on_head = await _hover_text(session, uri, _at(text, "self.head = nn.Linear", offset=14))
        assert _number(on_head, "Parameters") == head_parameters
        assert "| output | 2x10 |" in on_head
        # attributes that are no modules: no hover on a plain value, a sentence on a call's
        assert await _hover(session, uri, _at(text, "self.width = ", offset=6)) is None
        on_scale = await _hover_text(session, uri, _at(text, "self.scale = ", offset=6))
        assert on_scale.startswith("**self.scale** is no submodule: `self.scale` of the built Net")
        assert "is a float" in on_scale

        # `built = build_model(8)`: the factory is run, on the callee and on the variable
        on_factory = await _hover_text(session, uri, _at(text, "build_model(8)"))
        assert _number(on_factory, "Parameters") == built_parameters
        assert _number(on_factory, "MACs") == built_macs
        on_built = await _hover_text(session, uri, _at(text, "print(built", offset=7))
        assert _number(on_built, "MACs") == built_macs

        # a factory that loads and writes is not run, and the hover says why, with the line
        on_loader = await _hover_text(session, uri, _at(text, 'load_model("weights.pt")'))
        line = text[: text.index("model.load_state_dict")].count("\n") + 1
        assert f"`load_model` calls `model.load_state_dict` on line {line}" in on_loader
        assert "torchls does not run" in on_loader
        on_loaded = await _hover_text(session, uri, _at(text, "print(loaded", offset=7))
        assert "torchls does not run" in on_loaded
    assert not (tmp_path / "factory-ran.txt").exists()


async def test_a_submodule_line_of_a_model_that_cannot_be_built_says_why(tmp_path: Path) -> None:
    path = _workspace(tmp_path)
    text = path.read_text()
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        markdown = await _hover_text(session, uri, _at(text, "self.body = ", offset=6))
        assert markdown.startswith("**self.body**: torchls could not profile it.")
        assert "profiling Broken, which failed" in markdown
        assert "this model needs a dataset to build" in markdown
        assert "Traceback" not in markdown


def _models(tmp_path: Path, source: str) -> tuple[FileModels, str]:
    (tmp_path / "m.py").write_text(source)
    project = Project(str(tmp_path), lambda path: None)
    module = project.module_file(str(tmp_path / "m.py"))
    assert module is not None
    return models_of(project, module), source


def _target(models: FileModels, text: str, needle: str, offset: int = 1, nth: int = 0) -> Any:
    position = _at(text, needle, offset, nth)
    return models.target_at(position.line, position.character)


HEADER = "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    pass\n\n"


def test_a_variable_is_a_model_only_where_its_binding_is_certain(tmp_path: Path) -> None:
    models, text = _models(
        tmp_path,
        HEADER
        + "def run(model):\n    model.eval()\n\n"
        + "def loop(nets):\n    for model in nets:\n        model.eval()\n\n"
        + "def wrapped():\n    model = Net()\n    model = nn.DataParallel(model)\n"
        + "    model.eval()\n\n"
        + "model = Net()\n",
    )
    # a parameter's value is the caller's, and a loop variable is not one model
    assert _target(models, text, "model.eval()", nth=0) is None
    assert _target(models, text, "model.eval()", nth=1) is None
    # through DataParallel, the wrapped model
    wrapped = _target(models, text, "model.eval()", nth=2)
    assert wrapped is not None and wrapped.name == "Net"
    # on the assignment itself
    assert _target(models, text, "model = Net()\n", nth=1).name == "Net"


def test_a_factory_is_run_only_when_its_body_does_no_io(tmp_path: Path) -> None:
    models, text = _models(
        tmp_path,
        HEADER
        + "def make(n):\n    return Net()\n\n"
        + "def fetch(n):\n    import requests\n    requests.get('http://x')\n    return Net()\n\n"
        + "def saves(n):\n    net = Net()\n    torch.save(net, 'x.pt')\n    return net\n\n"
        + "def helper(n):\n    return n + 1\n\n"
        + "a = make(1)\nb = fetch(1)\nc = saves(1)\nd = helper(1)\n",
    )
    made = _target(models, text, "make(1)")
    assert isinstance(made, PlacedTarget) and not made.refusal and made.args == [{"literal": 1}]
    fetched = _target(models, text, "fetch(1)")
    assert "`fetch` calls `requests.get` on line 12" in fetched.refusal
    saved = _target(models, text, "saves(1)")
    assert "`saves` calls `torch.save` on line 17" in saved.refusal
    # a function that builds no model is no factory
    assert _target(models, text, "helper(1)") is None


def test_a_hover_finds_its_place_in_nested_and_decorated_statements(tmp_path: Path) -> None:
    models, text = _models(
        tmp_path,
        HEADER
        + "def register(model):\n    return lambda f: f\n\n"
        + "@register(Net())\ndef decorated():\n    pass\n\n"
        + "def nested(flag):\n    if flag:\n        try:\n            model = Net()\n"
        + "        except ValueError:\n            return None\n        else:\n"
        + "            model.eval()\n    return None\n",
    )
    assert _target(models, text, "Net())\ndef").name == "Net"  # in a decorator
    assert _target(models, text, "Net()\n        except").name == "Net"  # try under an if
    # assigned under an `if`: not certainly the model where it is used (the load checks' rule)
    assert _target(models, text, "model.eval()") is None


def test_a_factory_in_another_workspace_file(tmp_path: Path) -> None:
    (tmp_path / "factories.py").write_text(
        HEADER
        + "def build(n):\n    return Net()\n\n"
        + "def restore(path):\n    net = Net()\n    net.load_state_dict(torch.load(path))\n"
        + "    return net\n"
    )
    models, text = _models(
        tmp_path,
        "from factories import build, restore\n\nmodel = build(3)\nmodel.eval()\n"
        + "other = restore('w.pt')\n",
    )
    built = _target(models, text, "model.eval()")
    assert isinstance(built, PlacedTarget) and not built.refusal
    assert built.ref["file"] == str(tmp_path / "factories.py") and built.ref["qualname"] == "build"
    restored = _target(models, text, "restore('w.pt')")
    assert restored.refusal.startswith("`restore` calls `net.load_state_dict` on line 12 of ")
    assert "factories.py" in restored.refusal
