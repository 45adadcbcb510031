"""The `profile` job in a real worker process, against models with analytically known costs.

One worker serves the whole module (importing torch once); every test writes its own workspace
file, finds its target the way the hover does (`source/`), and runs the job.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.reference_models import EXPECTED, RESNET50_EXPECTED

from torchls.cost import report
from torchls.cost.request import prepare
from torchls.source.models import FileModels
from torchls.source.project import Project
from torchls.worker.client import JobResult, WorkerClient, WorkerSettings
from torchls.worker.protocol import ERROR_TIMEOUT, ERROR_UNTRUSTED, ERROR_USER

FIXTURES = ROOT / "tests" / "profiling" / "fixtures"
HF = FIXTURES / "hf"
REFERENCE = ROOT / "tests" / "profiling" / "reference_models.py"


class Runner:
    def __init__(self, workspace: Path, allow_user_code: bool = True, timeout: float = 120) -> None:
        self.workspace = workspace
        self.loop = asyncio.new_event_loop()
        env = dict(__import__("os").environ)
        # visionlib stands in for an installed library such as torchvision
        env["PYTHONPATH"] = f"{FIXTURES}:{ROOT / 'server'}"
        self.worker = WorkerClient(
            WorkerSettings(
                command=(__import__("sys").executable,),
                workspace=str(workspace),
                allow_user_code=allow_user_code,
                timeout_seconds=timeout,
                env=env,
            )
        )
        self._files = 0

    def write(self, source: str, name: str | None = None) -> Path:
        self._files += 1
        path = self.workspace / (name or f"case_{self._files}.py")
        path.write_text(textwrap.dedent(source))
        return path

    def targets(self, path: Path) -> FileModels:
        project = Project(str(self.workspace))
        module = project.module_file(str(path))
        assert module is not None
        return FileModels(project, module)

    def run(self, path: Path, name: str, kind: str | None = None, **options: Any) -> JobResult:
        models = self.targets(path)
        matches = [t for t in models.targets() if t.name == name and kind in (None, t.kind)]
        assert matches, f"no target {name} in {[t.name for t in models.targets()]}"
        prepared = prepare(matches[0], models.project, str(path), **options)
        return self.loop.run_until_complete(self.worker.run("profile", prepared.params))

    def ok(self, path: Path, name: str, kind: str | None = None, **options: Any) -> dict[str, Any]:
        result = self.run(path, name, kind, **options)
        assert result.ok, result.message
        value: dict[str, Any] = result.value
        return value

    def close(self) -> None:
        self.loop.run_until_complete(self.worker.stop())
        self.loop.close()


def runner_on(tmp_path_factory: pytest.TempPathFactory, fixture: Path) -> Iterator[Runner]:
    """A worker on a fresh workspace holding a copy of one fixture file (a module fixture's
    body: `yield from runner_on(tmp_path_factory, FIXTURE)`)."""
    workspace = tmp_path_factory.mktemp(fixture.stem)
    shutil.copy(fixture, workspace / fixture.name)
    made = Runner(workspace)
    try:
        yield made
    finally:
        made.close()


def import_fixture(fixture: Path, name: str) -> ModuleType:
    """The fixture file as a real module in this process: torch's own reference counts."""
    spec = importlib.util.spec_from_file_location(name, fixture)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    workspace = tmp_path_factory.mktemp("workspace")
    (workspace / "reference_models.py").write_text(REFERENCE.read_text())
    runner = Runner(workspace)
    yield runner
    runner.close()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_models_match_their_analytic_counts(runner: Runner, name: str) -> None:
    expected = EXPECTED[name]
    dtype = ":long" if expected["dtype"] == "int64" else ""
    shapes = ", ".join(f"({', '.join(map(str, shape))}){dtype}" for shape in expected["input"])
    path = runner.write(
        f"""
        from reference_models import {name}

        model = {name}()  # torchls: input={shapes}
        """
    )
    result = runner.ok(path, name)
    parameters = result["parameters"]
    assert parameters["total"] == expected["params"]
    assert parameters["trainable"] == expected["trainable"]
    assert parameters["frozen"] == expected["frozen"]
    assert result["buffers"]["total"] == expected["buffers"]
    assert result["macs"] == expected["macs"]
    assert result["flops"] == 2 * expected["macs"]
    assert result["inputs"]["source"].startswith("`# torchls: input=`")
    # The heaviest layers add up to no more than the whole, and are sorted.
    macs = [layer["macs"] for layer in result["layers"]]
    assert macs == sorted(macs, reverse=True) and sum(macs) <= result["macs"]


def test_tied_and_shared_parameters_are_counted_once(runner: Runner) -> None:
    path = runner.write(
        """
        from reference_models import TiedLM, SharedBlock

        lm = TiedLM()  # torchls: input=(1, 16):long
        block = SharedBlock()  # torchls: input=(2, 16)
        """
    )
    lm = runner.ok(path, "TiedLM")
    assert lm["parameters"]["shared"] == 1
    block = runner.ok(path, "SharedBlock")
    # one Linear(16, 16) applied three times: its MACs three times, its parameters once
    assert block["parameters"]["total"] == 16 * 16 + 16
    assert block["layers"][0]["macs"] == 3 * 2 * 16 * 16


def test_resnet50_from_an_installed_library_matches_the_published_figures(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from thop import profile
        from visionlib.models import resnet50

        model = resnet50()
        macs, params = profile(model, inputs=(torch.rand(4, 3, 256, 128),))
        """
    )
    result = runner.ok(path, "resnet50")
    assert result["parameters"]["total"] == RESNET50_EXPECTED["params"] == 25_557_032
    assert result["macs"] == RESNET50_EXPECTED["macs_4x3x256x128"]
    assert round(result["macs"] / 1e9, 3) == 10.685
    assert result["inputs"]["tensors"] == [{"shape": [4, 3, 256, 128], "dtype": "float32"}]
    assert "profile(model" in result["inputs"]["source"]
    # thop's "FLOPs" are MACs, about 10.7-10.8 G here: it adds BatchNorm and pooling
    thop = result["thop"]
    assert 10.7e9 <= thop["macs"] <= 10.85e9
    assert thop["params"] == 25_557_032
    types = [row["type"] for row in thop["by_type"]]
    assert types[0] == "BatchNorm2d"
    assert result["layers"][0]["type"] == "Conv2d"


def test_bert_from_a_local_folder_is_built_from_its_config(runner: Runner) -> None:
    path = runner.write(
        f"""
        from transformers import AutoModel

        model = AutoModel.from_pretrained("{HF / "bert-base"}")
        """
    )
    result = runner.ok(path, "AutoModel.from_pretrained")
    assert result["parameters"]["total"] == 109_482_240
    assert result["class"].endswith("BertModel")
    assert result["inputs"]["guess"] and result["inputs"]["tensors"][0]["dtype"] == "int64"
    # thop misses the attention matmuls; the hover names the module type
    _line, reasons = report.thop_verdict(result)
    assert any("BertSelfAttention" in reason for reason in reasons)


def test_gpt2_lm_head_ties_its_embedding_and_thop_misses_conv1d(runner: Runner) -> None:
    path = runner.write(
        f"""
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained("{HF / "gpt2"}")
        model = AutoModelForCausalLM.from_config(config)  # torchls: input=(1, 64):long
        """
    )
    result = runner.ok(path, "AutoModelForCausalLM.from_config")
    assert result["parameters"]["total"] == 124_439_808
    assert result["parameters"]["shared"] == 1  # lm_head.weight is wte.weight
    length, hidden, layers, vocab = 64, 768, 12, 50257
    dense = layers * length * (4 * hidden * hidden + 2 * 4 * hidden * hidden)  # qkv+proj, mlp
    attention = layers * 2 * length * length * hidden
    assert result["macs"] == dense + attention + length * hidden * vocab
    _line, reasons = report.thop_verdict(result)
    assert result["thop"]["difference"] < -0.5
    assert any("Conv1D" in reason and "no thop rule" in reason for reason in reasons)


def test_llama_7b_profiles_on_the_meta_device(runner: Runner) -> None:
    path = runner.write(
        f"""
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("{HF / "llama-7b"}"))
        """
    )
    result = runner.ok(path, "AutoModelForCausalLM.from_config")
    assert result["parameters"]["total"] == 6_738_415_616
    assert result["build"] == "meta"


def test_constructor_arguments_from_names_arithmetic_and_comments(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        HIDDEN = 32

        # torchls: args=(8, depth=3)
        class Stack(nn.Module):
            def __init__(self, width, depth=1):
                super().__init__()
                self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

            def forward(self, x):
                return self.layers(x)

        def build():
            return Stack(HIDDEN * 2, depth=2)
        """
    )
    from_comment = runner.ok(path, "Stack", kind="class")
    assert from_comment["parameters"]["total"] == 3 * (8 * 8 + 8)
    from_call = runner.ok(path, "Stack", kind="construction")
    assert from_call["parameters"]["total"] == 2 * (64 * 64 + 64)


def test_a_required_argument_torchls_cannot_see_is_named(runner: Runner) -> None:
    path = runner.write(
        """
        import sys
        from torch import nn

        class Head(nn.Module):
            def __init__(self, classes, dropout=0.1):
                super().__init__()
                self.fc = nn.Linear(16, classes)

            def forward(self, x):
                return self.fc(x)

        classes = int(sys.argv[1])
        head = Head(classes, dropout=float(sys.argv[2]))
        """
    )
    result = runner.run(path, "Head", kind="construction")
    assert not result.ok and result.error_kind == ERROR_USER
    assert "needs `classes`" in result.message and "# torchls: args=" in result.message
    no_args = runner.run(path, "Head", kind="class")
    assert not no_args.ok
    assert "needs `classes`" in no_args.message


def test_an_unseen_optional_argument_falls_back_to_its_default(runner: Runner) -> None:
    path = runner.write(
        """
        import os
        from torch import nn

        class Head(nn.Module):
            def __init__(self, classes=10, dropout=0.1):
                super().__init__()
                self.fc = nn.Linear(16, classes)

            def forward(self, x):
                return self.fc(x)

        head = Head(dropout=float(os.environ["P"]))
        """
    )
    result = runner.ok(path, "Head", kind="construction")
    assert result["parameters"]["total"] == 16 * 10 + 10
    assert any("default for `dropout`" in note for note in result["notes"])


def test_a_failing_forward_names_the_error_and_the_users_line(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        class Broken(nn.Module):  # torchls: input=(1, 20)
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(20, 30)
                self.b = nn.Linear(40, 10)

            def forward(self, x):
                return self.b(self.a(x))
        """
    )
    result = runner.run(path, "Broken")
    assert not result.ok
    assert "forward() failed with the input (1, 20)" in result.message
    assert "RuntimeError" in result.message
    assert f"{path.name}, line 11" in result.message


def test_the_files_script_statements_never_run(runner: Runner, tmp_path: Path) -> None:
    sentinel = tmp_path / "trained.txt"
    path = runner.write(
        f"""
        import pathlib
        from torch import nn

        class Net(nn.Module):  # torchls: input=(2, 4)
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(x)

        pathlib.Path({str(sentinel)!r}).write_text("the script ran")
        while True:
            pass
        """
    )
    result = runner.ok(path, "Net")
    assert result["parameters"]["total"] == 10
    assert not sentinel.exists()


def test_constructors_that_need_real_values_are_built_empty_then_moved_to_meta(
    runner: Runner,
) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn

        class Rates(nn.Module):  # torchls: input=(1, 8)
            def __init__(self, depth=4):
                super().__init__()
                # like timm's drop-path schedule: needs real numbers at construction
                self.rates = [r.item() for r in torch.linspace(0, 0.1, depth)]
                self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in self.rates)

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return x
        """
    )
    result = runner.ok(path, "Rates")
    assert result["build"] == "empty"
    assert result["parameters"]["total"] == 4 * (8 * 8 + 8)
    assert result["macs"] == 4 * 8 * 8


def test_several_inputs_with_dtypes(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        # torchls: input=(2, 12):long, (2, 12, 16)
        class TwoInputs(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(100, 16)
                self.mix = nn.Linear(16, 16)

            def forward(self, ids, extra):
                return self.mix(self.embed(ids) + extra)
        """
    )
    result = runner.ok(path, "TwoInputs")
    assert result["inputs"]["tensors"] == [
        {"shape": [2, 12], "dtype": "int64"},
        {"shape": [2, 12, 16], "dtype": "float32"},
    ]
    assert result["macs"] == 2 * 12 * 16 * 16


def test_from_pretrained_of_a_hub_name_is_refused_without_downloading(runner: Runner) -> None:
    path = runner.write(
        """
        from transformers import AutoModel

        model = AutoModel.from_pretrained("bert-base-uncased")
        """
    )
    result = runner.run(path, "AutoModel.from_pretrained")
    assert not result.ok
    assert "not a local folder" in result.message and "never downloads" in result.message


def test_a_syntax_error_is_one_sentence(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
        """
    )
    models = runner.targets(path)
    target = models.targets()[0]
    path.write_text(path.read_text() + "\n    def forward(self, x:\n")
    prepared = prepare(target, Project(str(runner.workspace)), str(path))
    prepared.params["sources"] = {}  # read the broken file from disk
    result = runner.loop.run_until_complete(runner.worker.run("profile", prepared.params))
    assert not result.ok
    assert f"{path.name} has a syntax error on line" in result.message


def test_an_endless_forward_times_out_and_the_worker_recovers(tmp_path: Path) -> None:
    slow = Runner(tmp_path, timeout=8)
    try:
        path = slow.write(
            """
            from torch import nn

            class Forever(nn.Module):  # torchls: input=(1, 2)
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(2, 2)

                def forward(self, x):
                    while True:
                        pass
            """
        )
        result = slow.run(path, "Forever")
        assert not result.ok and result.error_kind == ERROR_TIMEOUT
        again = slow.write(
            """
            from torch import nn

            class Fine(nn.Module):  # torchls: input=(1, 2)
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(2, 3)

                def forward(self, x):
                    return self.fc(x)
            """
        )
        assert slow.ok(again, "Fine")["parameters"]["total"] == 9
    finally:
        slow.close()


def test_untrusted_workers_refuse_to_profile(tmp_path: Path) -> None:
    untrusted = Runner(tmp_path, allow_user_code=False)
    try:
        path = untrusted.write(
            """
            from torch import nn

            class Net(nn.Module):
                pass
            """
        )
        result = untrusted.run(path, "Net")
        assert not result.ok and result.error_kind == ERROR_UNTRUSTED
    finally:
        untrusted.close()


def test_thop_counts_a_throwaway_copy_never_the_model() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("thop")
    from tests.profiling.reference_models import TinyConvNet

    from torchls.worker import profiling

    with torch.device("meta"):
        model = TinyConvNet()
    keys = list(model.state_dict())
    inputs = [torch.empty(1, 3, 32, 32, device="meta")]
    measured = profiling._measure(
        torch, model, inputs, {"tensors": [{"shape": [1, 3, 32, 32]}]}, None
    )
    thop = profiling._thop(torch, model, inputs, measured)
    assert thop is not None and thop["macs"] > 0
    assert list(model.state_dict()) == keys
    assert not any(hasattr(module, "total_ops") for module in model.modules())


def test_local_modules_are_imported_as_definitions_too(runner: Runner, tmp_path: Path) -> None:
    sentinel = tmp_path / "helpers-ran.txt"
    runner.write(
        f"""
        import pathlib
        from torch import nn

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return self.fc(x)

        pathlib.Path({str(sentinel)!r}).write_text("the helper's script ran")
        """,
        name="helpers_for_skeleton.py",
    )
    path = runner.write(
        """
        from torch import nn
        from helpers_for_skeleton import Block

        class Net(nn.Module):  # torchls: input=(1, 4)
            def __init__(self):
                super().__init__()
                self.block = Block()

            def forward(self, x):
                return self.block(x)
        """
    )
    assert runner.ok(path, "Net", kind="class")["parameters"]["total"] == 20
    assert not sentinel.exists()


def test_work_is_counted_for_the_module_that_does_it(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn

        class Inner(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)

        class Outer(nn.Module):  # torchls: input=(2, 8)
            def __init__(self):
                super().__init__()
                self.inner = Inner()
                self.weight = nn.Parameter(torch.empty(8, 8))

            def forward(self, x):
                x = self.inner.fc(x)  # a grandchild called directly
                return x @ self.weight  # functional work in the root
        """
    )
    result = runner.ok(path, "Outer", kind="class")
    layers = {layer["path"]: layer["macs"] for layer in result["layers"]}
    assert layers == {"inner.fc": 2 * 8 * 8, "(Outer.forward)": 2 * 8 * 8}
    assert sum(layer["share"] for layer in result["layers"]) == pytest.approx(1.0)


def test_lazy_modules_are_counted_after_the_forward(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        class Lazy(nn.Module):  # torchls: input=(1, 12)
            def __init__(self):
                super().__init__()
                self.fc = nn.LazyLinear(5)

            def forward(self, x):
                return self.fc(x)
        """
    )
    result = runner.ok(path, "Lazy", kind="class")
    assert result["parameters"]["total"] == 12 * 5 + 5
    assert result["macs"] == 12 * 5


def test_an_argument_that_raises_is_one_sentence(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn

        SIZES = {"small": 8}

        def width(name):
            return SIZES[name]

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = nn.Linear(width, width)

        net = Net(width("tiny"))
        """
    )
    result = runner.run(path, "Net", kind="construction")
    assert not result.ok and result.error_kind == ERROR_USER
    assert "evaluating the arguments failed: KeyError: 'tiny'" in result.message
    assert "line 7" in result.message


def test_state_dict_keys_meet_a_checkpoint_read_without_torch(
    runner: Runner, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    from tests.profiling.reference_models import TinyConvNet

    from torchls.checkpoint import read_checkpoint
    from torchls.compare import compare

    checkpoint = tmp_path / "dataparallel.pt"
    state = {f"module.{key}": value for key, value in TinyConvNet().state_dict().items()}
    torch.save(state, checkpoint)
    path = runner.write(
        """
        from reference_models import TinyConvNet

        model = TinyConvNet()
        """
    )
    models = runner.targets(path)
    target = models.targets()[0]
    prepared = prepare(target, models.project, str(path))
    result = runner.loop.run_until_complete(runner.worker.run("state_dict", prepared.params))
    assert result.ok, result.message
    model_keys = {key: tuple(info["shape"]) for key, info in result.value["keys"].items()}
    assert model_keys["head.weight"] == (10, 32 * 8 * 8)
    assert result.value["keys"]["features.1.num_batches_tracked"]["parameter"] is False
    summary = read_checkpoint(str(checkpoint))
    on_disk = {info.key: tuple(info.shape) for info in summary.tensors}
    found = compare(model_keys, on_disk)
    assert not found.loads_strict and found.overlap == 0.0
    assert found.prefix_fix is not None and found.prefix_fix.strip == "module."
