"""Shape-mismatch explanations and their fixes, checked against real CPU runs.

Each model is written here with one wrong construction argument. A real forward on CPU (a
subprocess with torch) tells what the failing layer actually received; the explanation built from
a `shape_error` in the contract's format must name that layer, those numbers and the line that
builds it, and its edit, applied to the text, must make the model build AND run for real. Where a
worker is needed (the fix's verification), it is the real one, profiling the edited text.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.shape_fixtures import MNIST, TWO_MISTAKES

from torchls.cost.request import prepare
from torchls.loadcheck.fixes import apply_edits
from torchls.lsp.shape_checks import (
    CODE_MISMATCH,
    CODE_VIEW,
    Explanation,
    ModelClass,
    describe_and_verify,
    describe_shape_error,
    explain,
    shape_error_of,
    verify,
)
from torchls.source.construction import find_construction
from torchls.source.models import FileModels
from torchls.source.project import Project
from torchls.worker.client import JobResult, WorkerClient, WorkerSettings

Worker = tuple[Path, asyncio.AbstractEventLoop, WorkerClient]  # workspace, its loop, the worker

# Runs a model for real and reports what the failing module received, or the output's shape.
ORACLE = r"""
import importlib.util, json, sys, traceback
import torch
path, name, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, path.rsplit("/", 1)[0])
spec = importlib.util.spec_from_file_location("fixture_model", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
torch.manual_seed(0)
model = getattr(module, name)()
seen = {}
for path_name, sub in model.named_modules():
    if path_name:
        sub.register_forward_pre_hook(
            lambda m, args, p=path_name: seen.update(
                {p: [list(a.shape) for a in args if isinstance(a, torch.Tensor)]}
            )
        )
try:
    out = model(torch.randn(*shape))
except Exception as exc:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    last = list(seen)[-1] if seen else None
    print(json.dumps({"ok": False, "error": str(exc), "module": last,
                      "inputs": seen.get(last), "line": frames[-1].lineno if frames else None}))
else:
    print(json.dumps({"ok": True, "output": list(out.shape)}))
"""


def run_for_real(path: Path, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", ORACLE, str(path), name, json.dumps(list(shape))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def shape_error(
    path: Path, real: dict[str, Any], layer_type: str, argument: str, expected: int
) -> dict[str, Any]:
    """The worker's `shape_error` (contract format) for a failure seen in a real run."""
    inputs = real["inputs"][0]
    received = inputs[-1] if argument in ("in_features", "normalized_shape") else inputs[1]
    return {
        "module": real["module"],
        "type": layer_type,
        "message": real["error"],
        "input_shapes": real["inputs"],
        "expects": {"argument": argument, "position": 0, "value": expected},
        "received": received,
        "file": str(path),
        "line": real["line"],
        "inputs": "(1, 1, 28, 28)",
    }


def line_of(text: str, needle: str) -> int:
    """0-based line of the first line containing `needle`."""
    return next(n for n, line in enumerate(text.splitlines()) if needle in line)


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


def model_class(project: Project, path: Path, name: str) -> ModelClass:
    module = project.module_file(str(path))
    assert module is not None
    return module, name


def fixed_text(explanation: Explanation, path: Path) -> str:
    assert explanation.edit is not None and explanation.edit_path == str(path)
    return apply_edits(path.read_text(), [explanation.edit])


CHANNELS = """
from torch import nn


# torchls: input=(1, 1, 28, 28)
class ChannelNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(16, 64, kernel_size=3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        return self.head(x)
"""

SEQUENTIAL = """
from torch import nn


# torchls: input=(1, 1, 28, 28)
class SeqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(in_features=64 * 5 * 5, out_features=10),
        )

    def forward(self, x):
        return self.features(x)
"""

NAMED = """
import torch
from torch import nn


# torchls: input=(1, 1, 28, 28)
class HiddenNet(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.conv = nn.Conv2d(1, hidden, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(hidden * 5 * 5, 10)

    def forward(self, x):
        x = self.pool(self.conv(x))
        return self.fc1(torch.flatten(x, 1))
"""


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    workspace = tmp_path_factory.mktemp("shapes")
    loop = asyncio.new_event_loop()
    client = WorkerClient(
        WorkerSettings(
            command=(sys.executable,),
            workspace=str(workspace),
            timeout_seconds=120,
            env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "server")},
        )
    )
    try:
        yield workspace, loop, client
    finally:
        loop.run_until_complete(client.stop())
        loop.close()


def profile_params(workspace: Path, path: Path, name: str) -> dict[str, Any]:
    project = Project(str(workspace))
    module = project.module_file(str(path))
    assert module is not None
    models = FileModels(project, module)
    target = next(t for t in models.targets() if t.kind == "class" and t.name == name)
    return prepare(target, project, str(path)).params


def run_verify(
    worker: Worker,
    explanation: Explanation,
    path: Path,
    name: str,
) -> Any:
    workspace, loop, client = worker
    params = profile_params(workspace, path, name)

    async def run(job: dict[str, Any]) -> JobResult:
        return await client.run("profile", job, background=True)

    def project_of(edited: Any) -> Project:
        return Project(str(workspace), lambda p: edited.get(p))

    return loop.run_until_complete(
        verify(explanation, params, lambda p: Path(p).read_text(), run, project_of)
    )


# -- the MNIST net: fc1 = nn.Linear(3200, 10) where the features are 64 x 7 x 7 ------------------


def test_mnist_fc1_mismatch_is_explained_at_the_forward_line_and_built_in_init(
    worker: Worker,
) -> None:
    workspace = worker[0]
    path = write(workspace, "mnist_model.py", MNIST)
    real = run_for_real(path, "MnistNet", (1, 1, 28, 28))
    assert not real["ok"] and real["module"] == "fc1"
    data = shape_error(path, real, "Linear", "in_features", 3200)
    project = Project(str(workspace))
    explanation = explain(data, project, model_class(project, path, "MnistNet"))
    text = path.read_text()

    assert explanation.code == CODE_MISMATCH
    assert explanation.line == line_of(text, "return self.fc1(x)")
    received = data["received"]
    assert received == 64 * 7 * 7  # what the real forward fed fc1
    assert "fc1 (Linear) expects 3200 input features" in explanation.message
    assert f"at input (1, 1, 28, 28) it receives {received}" in explanation.message
    assert explanation.construction is not None
    assert explanation.construction.line == line_of(text, "self.fc1 = nn.Linear(3200, 10)")
    assert explanation.built_here == "fc1 is built here with in_features=3200"
    assert explanation.title == f"Change in_features of fc1 to {received}"

    fixed = fixed_text(explanation, path)
    assert f"self.fc1 = nn.Linear({received}, 10)" in fixed
    fixed_path = write(workspace, "mnist_fixed.py", fixed)
    assert run_for_real(fixed_path, "MnistNet", (1, 1, 28, 28)) == {"ok": True, "output": [1, 10]}

    lines = describe_shape_error(data, project)  # the CLI, without knowing the model class
    assert lines[0].startswith(f"mnist_model.py:{explanation.line + 1}: fc1 (Linear) expects 3200")
    built = explanation.construction.line + 1
    assert lines[-1] == (
        f"fix: mnist_model.py:{built}: nn.Linear(3200, 10) -> nn.Linear({received}, 10)"
    )


def test_mnist_fix_is_verified_by_profiling_the_edited_text(
    worker: Worker,
) -> None:
    workspace = worker[0]
    path = write(workspace, "mnist_verified.py", MNIST)
    real = run_for_real(path, "MnistNet", (1, 1, 28, 28))
    data = shape_error(path, real, "Linear", "in_features", 3200)
    project = Project(str(workspace))
    explanation = explain(data, project, model_class(project, path, "MnistNet"))
    before = path.read_text()

    verification = run_verify(worker, explanation, path, "MnistNet")

    assert verification.ok, verification.why
    assert verification.titles == (explanation.title,)
    assert verification.texts == {str(path): fixed_text(explanation, path)}
    assert path.read_text() == before  # verification edits the job's sources, never the file


# -- a conv channel mismatch ---------------------------------------------------------------------


def test_conv_channel_mismatch_fix_runs_for_real(
    worker: Worker,
) -> None:
    workspace = worker[0]
    path = write(workspace, "channels.py", CHANNELS)
    real = run_for_real(path, "ChannelNet", (1, 1, 28, 28))
    assert not real["ok"] and real["module"] == "conv2"
    data = shape_error(path, real, "Conv2d", "in_channels", 16)
    project = Project(str(workspace))
    explanation = explain(data, project, model_class(project, path, "ChannelNet"))
    text = path.read_text()

    assert data["received"] == 32  # conv1's out_channels, as the real run fed it
    assert "conv2 (Conv2d) expects 16 input channels" in explanation.message
    assert "it receives 32" in explanation.message
    assert explanation.line == line_of(text, "x = self.conv2(x).relu()")
    assert explanation.construction is not None
    assert explanation.construction.line == line_of(text, "self.conv2 = nn.Conv2d(16")
    fixed = fixed_text(explanation, path)
    assert "self.conv2 = nn.Conv2d(32, 64, kernel_size=3)" in fixed
    fixed_path = write(workspace, "channels_fixed.py", fixed)
    assert run_for_real(fixed_path, "ChannelNet", (1, 1, 28, 28)) == {"ok": True, "output": [1, 10]}
    assert run_verify(worker, explanation, path, "ChannelNet").ok


# -- a Sequential-indexed layer, argument by keyword ---------------------------------------------


def test_sequential_index_keyword_argument_fix(
    worker: Worker,
) -> None:
    workspace = worker[0]
    path = write(workspace, "seq.py", SEQUENTIAL)
    real = run_for_real(path, "SeqNet", (1, 1, 28, 28))
    assert not real["ok"] and real["module"] == "features.3"
    data = shape_error(path, real, "Linear", "in_features", 64 * 5 * 5)
    project = Project(str(workspace))
    explanation = explain(data, project, model_class(project, path, "SeqNet"))
    text = path.read_text()

    received = data["received"]
    assert received == 8 * 26 * 26
    assert explanation.line == line_of(text, "return self.features(x)")
    assert explanation.construction is not None
    assert explanation.construction.line == line_of(text, "nn.Linear(in_features=")
    assert explanation.built_here == "features.3 is built here with in_features=64 * 5 * 5 = 1600"
    # 5408 = 8 x 26 x 26, but the old expression's first factor (64) does not divide it into a
    # square: the plain number, not a guessed factorization
    fixed = fixed_text(explanation, path)
    assert f"nn.Linear(in_features={received}, out_features=10)" in fixed
    fixed_path = write(workspace, "seq_fixed.py", fixed)
    assert run_for_real(fixed_path, "SeqNet", (1, 1, 28, 28)) == {"ok": True, "output": [1, 10]}
    assert run_verify(worker, explanation, path, "SeqNet").ok


# -- an expression with names is explained, not rewritten ----------------------------------------


def test_expression_with_names_says_what_it_is_and_must_become(tmp_path: Path) -> None:
    path = write(tmp_path, "hidden.py", NAMED)
    real = run_for_real(path, "HiddenNet", (1, 1, 28, 28))
    assert not real["ok"] and real["module"] == "fc1"
    data = shape_error(path, real, "Linear", "in_features", 64 * 5 * 5)
    project = Project(str(tmp_path))
    explanation = explain(data, project, model_class(project, path, "HiddenNet"))

    received = data["received"]
    assert received == 64 * 7 * 7
    assert explanation.edit is None
    assert f"`hidden * 5 * 5` is 1600 here and must be {received}" in explanation.message
    assert "(hidden)" in explanation.message
    # hidden is 1600 / (5 x 5) = 64 here: the suggestion keeps the name and the square
    assert f"it receives {received} = 64 x 7 x 7" in explanation.message
    assert explanation.message.endswith("or write hidden * 7 * 7.")
    assert explanation.built_here == "fc1 is built here with in_features=hidden * 5 * 5 = 1600"


# -- nested: a workspace class in another file, through a ModuleList comprehension ---------------


def test_nested_module_path_through_a_workspace_class_in_another_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        "blocks.py",
        """
        from torch import nn


        class Layer(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.linear1 = nn.Linear(width + 1, width)

            def forward(self, x):
                return self.linear1(x)


        class Encoder(nn.Module):
            def __init__(self, width, depth):
                super().__init__()
                self.layers = nn.ModuleList([Layer(width) for _ in range(depth)])

            def forward(self, x):
                for layer in self.layers:
                    x = layer(x)
                return x
        """,
    )
    path = write(
        tmp_path,
        "top.py",
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
        """,
    )
    project = Project(str(tmp_path))
    top = model_class(project, path, "Top")
    found = find_construction(project, top[0], "Top", "encoder.layers.1.linear1", "in_features")
    assert found.construction is not None, found.why
    blocks_text = (tmp_path / "blocks.py").read_text()
    assert found.construction.path == str(tmp_path / "blocks.py")
    assert found.construction.line == line_of(blocks_text, "self.linear1 = nn.Linear(")
    assert found.construction.argument is not None
    assert found.construction.argument.text == "width + 1"
    assert not found.construction.argument.rewritable

    # The CLI knows no model class: the failing line's class (Layer) and the path's suffix.
    real = run_for_real(path, "Top", (2, 16))
    assert not real["ok"] and real["module"] == "encoder.layers.0.linear1"
    data = {
        **shape_error(path, real, "Linear", "in_features", 17),
        "file": str(tmp_path / "blocks.py"),
        "line": line_of(blocks_text, "return self.linear1(x)") + 1,
        "inputs": "(2, 16)",
    }
    assert data["received"] == 16
    lines = describe_shape_error(data, project)
    assert lines[0].startswith("blocks.py:")
    assert "encoder.layers.0.linear1 (Linear) expects 17 input features" in lines[0]
    assert "`width + 1` is 17 here and must be 16" in lines[0]
    assert lines[1].startswith(f"blocks.py:{found.construction.line + 1}: ")
    assert not any(line.startswith("fix:") for line in lines)


# -- view(-1, n) -----------------------------------------------------------------------------------


def test_view_size_mismatch_fix_then_chains_the_linear_after_it(
    worker: Worker,
) -> None:
    workspace = worker[0]
    source = MNIST.replace("torch.flatten(x, 1)", "x.view(-1, 64 * 5 * 5)").replace(
        "nn.Linear(3200, 10)", "nn.Linear(64 * 5 * 5, 10)"
    )
    path = write(workspace, "viewnet.py", source)
    real = run_for_real(path, "MnistNet", (1, 1, 28, 28))
    assert not real["ok"] and "invalid for input of size 3136" in real["error"]
    text = path.read_text()
    data = {
        "module": None,
        "type": None,
        "message": real["error"],
        "input_shapes": [],
        "expects": None,
        "received": None,
        "file": str(path),
        "line": line_of(text, "x.view(") + 1,
        "inputs": "(1, 1, 28, 28)",
        "view": {"requested": [-1, 1600], "size": 3136},
    }
    project = Project(str(workspace))
    explanation = explain(data, project)
    assert explanation.code == CODE_VIEW
    assert "the tensor has 3136 elements, which is not a multiple of 1600" in explanation.message
    assert explanation.after == "x.view(-1, 64 * 7 * 7)"
    fixed = fixed_text(explanation, path)
    # The view alone is not enough: fc1 then receives 3136 features for its 1600.
    again = run_for_real(write(workspace, "viewnet_half.py", fixed), "MnistNet", (1, 1, 28, 28))
    assert not again["ok"] and again["module"] == "fc1"


# -- the CLI's lines, from the worker's own shape_error, with the fix verified --------------------


def cli_lines(worker: Worker, path: Path, name: str) -> list[str]:
    workspace, loop, client = worker
    params = profile_params(workspace, path, name)

    async def run(job: dict[str, Any]) -> JobResult:
        return await client.run("profile", job)

    failed = loop.run_until_complete(run(params))
    data = shape_error_of(failed)
    assert data is not None, failed.message
    project = Project(str(workspace))
    model = model_class(project, path, name)
    return loop.run_until_complete(describe_and_verify(data, project, params, run, model))


def test_cli_lines_for_the_mnist_net_name_the_verified_one_line_fix(worker: Worker) -> None:
    path = write(worker[0], "cli_mnist.py", MNIST)
    text = path.read_text()
    lines = cli_lines(worker, path, "MnistNet")
    forward = line_of(text, "return self.fc1(x)") + 1
    built = line_of(text, "self.fc1 = nn.Linear") + 1
    assert lines == [
        f"cli_mnist.py:{forward}: fc1 (Linear) expects 3200 input features; at input "
        "(1, 1, 28, 28) it receives 3136 = 64 x 7 x 7. (torch: mat1 and mat2 shapes cannot be "
        "multiplied (1x3136 and 3200x10))",
        f"cli_mnist.py:{built}: fc1 is built here with in_features=3200: nn.Linear(3200, 10)",
        f"fix: cli_mnist.py:{built}: nn.Linear(3200, 10) -> nn.Linear(3136, 10) "
        "(verified: the model then profiles)",
    ]
    assert path.read_text() == text


def test_cli_lines_list_every_edit_of_a_chained_fix(worker: Worker) -> None:
    path = write(worker[0], "cli_two.py", TWO_MISTAKES)
    text = path.read_text()
    lines = cli_lines(worker, path, "TwoMistakes")
    conv2 = line_of(text, "self.conv2 = nn.Conv2d") + 1
    fc = line_of(text, "self.fc = nn.Linear") + 1
    forward = line_of(text, "x = self.pool(torch.relu(self.conv2(x)))") + 1
    assert lines[0].startswith(
        f"cli_two.py:{forward}: conv2 (Conv2d) expects 8 input channels; at input "
        "(1, 3, 32, 32) it receives 16."
    )
    assert lines[2:] == [
        f"fix: cli_two.py:{conv2}: self.conv2 = nn.Conv2d(8, 32, 3, padding=1) -> "
        "self.conv2 = nn.Conv2d(16, 32, 3, padding=1)",
        f"fix: cli_two.py:{fc}: self.fc = nn.Linear(32 * 4 * 4, 10) -> "
        "self.fc = nn.Linear(32 * 8 * 8, 10) (verified: with these edits the model profiles)",
    ]
    fixed = write(worker[0], "cli_two_fixed.py", text.replace("Conv2d(8,", "Conv2d(16,"))
    fixed.write_text(fixed.read_text().replace("32 * 4 * 4", "32 * 8 * 8"))
    assert run_for_real(fixed, "TwoMistakes", (1, 3, 32, 32)) == {"ok": True, "output": [1, 10]}


# -- where a module path is built: the source's other shapes --------------------------------------

SHAPES = """
from collections import OrderedDict

import torch.nn as nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)


class Many(Base):
    def __init__(self, depth=3):
        super().__init__()
        layers = [nn.Conv2d(16, 32, 3)]
        layers.append(nn.ReLU())
        layers += [nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3)]
        self.body = nn.Sequential(*layers)
        blocks = []
        for _ in range(depth):
            blocks.append(nn.Linear(64, 64))
        self.blocks = nn.Sequential(*blocks)
        mixed = [nn.Linear(8, 8)]
        for _ in range(depth):
            mixed.append(nn.Linear(8, 8))
        self.mixed = nn.ModuleList(mixed)
        self.heads = nn.ModuleDict({"cls": nn.Linear(64, 10), "box": nn.Linear(64, 4)})
        self.named = nn.Sequential(OrderedDict([("proj", nn.Linear(64, 32))]))
        proj = nn.LayerNorm(normalized_shape=32)
        self.norm = proj
        self.add_module("extra", nn.BatchNorm2d(num_features=64))
"""


@pytest.mark.parametrize(
    ("path", "argument", "call", "text", "shared"),
    [
        ("stem", "in_channels", "nn.Conv2d(3, 16, 3)", "3", False),  # an inherited __init__
        ("body.0", "in_channels", "nn.Conv2d(16, 32, 3)", "16", False),
        (
            "body.2",
            "in_channels",
            "nn.Conv2d(in_channels=32, out_channels=64, kernel_size=3)",
            "32",
            False,
        ),
        ("blocks.2", "in_features", "nn.Linear(64, 64)", "64", True),  # one append in a loop
        ("heads.box", "in_features", "nn.Linear(64, 4)", "64", False),
        ("named.proj", "in_features", "nn.Linear(64, 32)", "64", False),
        ("norm", "normalized_shape", "nn.LayerNorm(normalized_shape=32)", "32", False),
        ("extra", "num_features", "nn.BatchNorm2d(num_features=64)", "64", False),
    ],
)
def test_find_construction_follows_the_source(
    tmp_path: Path, path: str, argument: str, call: str, text: str, shared: bool
) -> None:
    file = write(tmp_path, "many.py", SHAPES)
    project = Project(str(tmp_path))
    module = model_class(project, file, "Many")[0]
    found = find_construction(project, module, "Many", path, argument)
    assert found.construction is not None, found.why
    assert found.construction.call_text == call
    assert found.construction.shared is shared
    assert found.construction.argument is not None
    assert found.construction.argument.text == text
    assert found.construction.argument.rewritable
    source = file.read_text()
    assert found.construction.line == line_of(source, call)


def test_find_construction_says_why_when_indices_are_not_in_the_source(tmp_path: Path) -> None:
    file = write(tmp_path, "many.py", SHAPES)
    project = Project(str(tmp_path))
    module = model_class(project, file, "Many")[0]
    found = find_construction(project, module, "Many", "mixed.2", "in_features")
    assert found.construction is None
    assert "loop" in found.why and "mixed" in found.why
    missing = find_construction(project, module, "Many", "body.7", "in_channels")
    assert missing.construction is None
    assert missing.why == "body: torchls sees 3 elements in the source, not index 7"
