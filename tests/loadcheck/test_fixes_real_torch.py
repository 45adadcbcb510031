"""The load checker against real torch: each scenario writes a model, a checkpoint saved by torch
and a training script that loads it the way a user would. The diagnostic must say what torch
will say, the original script must really raise, and every quick fix offered must make the
script load, with the model's weights equal to the checkpoint's afterwards."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from tests.loadcheck.helpers import check_file, start_worker
from torch import nn

from torchls.loadcheck.analysis import Finding
from torchls.loadcheck.checker import SiteReport
from torchls.loadcheck.fixes import Fix, apply_edits
from torchls.worker.client import WorkerClient

MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class Wrapped(nn.Module):
    """Holds the network as `self.module`: every key starts with `module.`."""

    def __init__(self) -> None:
        super().__init__()
        self.module = Net()

    def forward(self, x):
        return self.module(x)
'''

# The model the test saves, built here as model.py builds it (the test process cannot import
# model.py: every test writes its own).
_model_py: dict[str, object] = {"__name__": "model"}
exec(compile(MODEL, "model.py", "exec"), _model_py)
Net: Callable[..., nn.Module] = _model_py["Net"]  # type: ignore[assignment]

# The script prints the load's result and saves what the model holds afterwards, next to itself.
SCRIPT = """
import torch
{imports}
from model import {model}

model = {model}()
{load}
print("LOADED", result)
torch.save(model.state_dict(), __file__ + ".loaded")
"""

pytestmark = pytest.mark.asyncio(loop_scope="module")


def trained(module: nn.Module) -> nn.Module:
    """Every parameter and buffer set to a value no fresh model has, so a load shows."""
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if not isinstance(value, torch.Tensor):
                continue  # extra state
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5)
            else:
                value.fill_(7 + len(key) % 3)
    return module


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


# Runs scripts as `python script.py` would, each in its own process: the runner imports torch
# once and forks a child per script, which runs it as __main__ (saving an import of torch, 2 s,
# per script). The test process registers nothing in the runner: it is started fresh.
RUNNER = r"""
import json, os, runpy, sys, traceback
import torch, safetensors.torch

children = {}
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        out = os.open(name + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.argv = [name]
        code = 0
        try:
            runpy.run_path(name, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    children[pid] = name
codes = {name: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid, name in children.items()}
print(json.dumps(codes))
"""


@dataclass
class Run:
    returncode: int
    output: str
    loaded: dict[str, torch.Tensor] | None  # the model's state dict after the script


async def run_scripts(folder: Path, scripts: dict[str, str]) -> dict[str, Run]:
    """Each script, by name, run in `folder` by a fresh interpreter with real torch."""
    for name, text in scripts.items():
        (folder / name).write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUNNER,
        *scripts,
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    codes = json.loads(stdout)
    runs = {}
    for name in scripts:
        saved = folder / f"{name}.loaded"
        loaded = torch.load(saved, weights_only=True) if codes[name] == 0 else None
        output = (folder / f"{name}.out").read_text(errors="replace")
        runs[name] = Run(codes[name], output, loaded)
    return runs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(workspace: Path) -> AsyncIterator[WorkerClient]:
    """One worker for the module (starting one imports torch); each test has a folder in it."""
    client = start_worker(workspace)
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
def folder(workspace: Path, request: pytest.FixtureRequest) -> Path:
    path = workspace / re.sub(r"[^\w-]", "_", request.node.name)
    path.mkdir()
    return path


async def check(
    worker: WorkerClient, folder: Path, file: str = "train.py"
) -> list[tuple[SiteReport, list[Fix]]]:
    return await check_file(folder, file, worker)


def same_weights(
    loaded: dict[str, torch.Tensor] | None,
    expected: dict[str, torch.Tensor],
    skip: tuple[str, ...] = (),
) -> list[str]:
    """The keys whose values differ from the checkpoint's (empty: the load took)."""
    assert loaded is not None
    return [
        key
        for key, value in expected.items()
        if not key.startswith(skip)
        and not (
            key in loaded and loaded[key].shape == value.shape and torch.equal(loaded[key], value)
        )
    ]


@dataclass
class Scenario:
    """What the checker and torch make of one script."""

    findings: list[Finding]
    fixes: list[Fix]
    original: Run
    fixed: list[tuple[Fix, Run]]

    @property
    def finding(self) -> Finding:
        """The one finding at the site."""
        assert len(self.findings) == 1, self.findings
        return self.findings[0]

    def titles(self) -> list[str]:
        return [fix.title for fix in self.fixes]


async def scenario(
    worker: WorkerClient,
    folder: Path,
    load: str,
    imports: str = "",
    model: str = "Net",
    source: str = MODEL,
) -> Scenario:
    """Write model.py and train.py, check train.py, run it, and run it after each fix."""
    (folder / "model.py").write_text(source)
    text = SCRIPT.format(imports=imports, model=model, load=load).lstrip()
    (folder / "train.py").write_text(text)
    results = await check(worker, folder)
    assert len(results) == 1, [report.site for report, _ in results]
    report, fixes = results[0]
    scripts = {"train.py": text}
    for i, fix in enumerate(fixes):
        scripts[f"fixed_{i}.py"] = apply_edits(text, [fix.edit])
    runs = await run_scripts(folder, scripts)
    fixed = [(fix, runs[f"fixed_{i}.py"]) for i, fix in enumerate(fixes)]
    return Scenario(report.findings, fixes, runs["train.py"], fixed)


def assert_strips(fix: Fix, prefix: str) -> None:
    assert f"strip the `{prefix}` prefix" in fix.title.lower(), fix.title
    assert "strict=False" not in fix.title
    assert f'k.removeprefix("{prefix}")' in fix.edit.text


def assert_all_fixes_load(
    result: Scenario, expected: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> None:
    assert result.fixes, "no fix offered"
    for fix, run in result.fixed:
        assert run.returncode == 0, f"{fix.title!r} does not load:\n{fix.edit.text}\n{run.output}"
        assert "LOADED" in run.output
        assert same_weights(run.loaded, expected, skip) == [], fix.title


# -- key prefixes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "wrapper", "save"),
    [
        ("module.", "DataParallel", lambda net: nn.DataParallel(net).state_dict()),
        # What torch.compile(net).state_dict() writes, without compiling.
        ("_orig_mod.", "torch.compile", lambda net: prefixed(net.state_dict(), "_orig_mod.")),
    ],
    ids=["data-parallel", "compile"],
)
async def test_wrapper_prefix_in_checkpoint(
    worker: WorkerClient,
    folder: Path,
    prefix: str,
    wrapper: str,
    save: Callable[[nn.Module], dict[str, torch.Tensor]],
) -> None:
    net = trained(Net())
    expected = net.state_dict()
    state = save(net)
    assert all(key.startswith(prefix) for key in state)
    torch.save(state, folder / "best.pt")

    result = await scenario(worker, folder, 'result = model.load_state_dict(torch.load("best.pt"))')

    assert result.original.returncode != 0
    assert "Missing key(s)" in result.original.output
    assert "Unexpected key(s)" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "keys")
    assert f"`{prefix}`" in finding.message and wrapper in finding.message
    # One fix, the rename; strict=False would load nothing here.
    assert len(result.fixes) == 1, result.titles()
    assert_strips(result.fixes[0], prefix)
    assert result.fixes[0].preferred
    assert_all_fixes_load(result, expected)


async def test_wrapped_model_plain_checkpoint(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    torch.save(net.state_dict(), folder / "net.pt")
    expected = prefixed(net.state_dict(), "module.")

    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("net.pt"))', model="Wrapped"
    )

    assert result.original.returncode != 0
    assert "Missing key(s)" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "keys")
    assert "model's keys start with `module.`" in finding.message
    assert len(result.fixes) == 1, result.titles()
    title = result.fixes[0].title
    assert "add the `module.` prefix" in title.lower() and "strict=False" not in title
    assert_all_fixes_load(result, expected)


async def test_strict_false_with_a_prefix_loads_nothing(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    expected = net.state_dict()
    torch.save(nn.DataParallel(net).state_dict(), folder / "dp.pt")

    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("dp.pt"), strict=False)'
    )

    # torch says nothing: the script runs, and the model keeps its initial weights.
    assert result.original.returncode == 0, result.original.output
    assert sorted(same_weights(result.original.loaded, expected)) == sorted(expected)
    finding = result.finding
    assert (finding.severity, finding.code) == ("warning", "partial")
    assert "loads nothing" in finding.message and "`module.`" in finding.message
    assert len(result.fixes) == 1, result.titles()
    assert_strips(result.fixes[0], "module.")
    assert_all_fixes_load(result, expected)


async def test_safetensors_with_a_prefix(worker: WorkerClient, folder: Path) -> None:
    from safetensors.torch import save_file

    net = trained(Net())
    expected = net.state_dict()
    save_file(prefixed(expected, "module."), folder / "m.safetensors")

    result = await scenario(
        worker,
        folder,
        "result = model.load_state_dict(load_file('m.safetensors'))",
        imports="from safetensors.torch import load_file",
    )

    assert result.original.returncode != 0
    assert "Missing key(s)" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "keys")
    assert "`module.`" in finding.message
    assert len(result.fixes) == 1, result.titles()
    assert_strips(result.fixes[0], "module.")
    assert_all_fixes_load(result, expected)


# -- training checkpoints -----------------------------------------------------------------------


def training_checkpoint(net: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, object]:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    return {"epoch": 3, "state_dict": state, "optimizer": optimizer.state_dict()}


@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "module-prefix"])
async def test_whole_training_checkpoint(
    worker: WorkerClient, folder: Path, data_parallel: bool
) -> None:
    net = trained(Net())
    state = nn.DataParallel(net).state_dict() if data_parallel else net.state_dict()
    torch.save(training_checkpoint(net, state), folder / "last.ckpt")
    expected = net.state_dict()  # after the optimizer's step, as saved

    result = await scenario(
        worker,
        folder,
        'checkpoint = torch.load("last.ckpt")\nresult = model.load_state_dict(checkpoint)',
    )

    assert result.original.returncode != 0
    assert "Missing key(s)" in result.original.output
    assert 'Unexpected key(s) in state_dict: "epoch", "state_dict", "optimizer"' in (
        result.original.output
    )
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "nested")
    assert "training checkpoint" in finding.message and "['state_dict']" in finding.message
    # One fix: select the weights (and strip the prefix); strict=False would load nothing.
    assert len(result.fixes) == 1, result.titles()
    title = result.fixes[0].title
    assert '["state_dict"]' in title and '["state_dict"]' in result.fixes[0].edit.text
    assert ("strip the `module.` prefix" in title) == data_parallel
    assert "strict=False" not in title
    assert_all_fixes_load(result, expected)


# -- stray and mismatched keys ----------------------------------------------------------------


async def test_thop_leftovers(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    expected = net.state_dict()
    state = dict(expected)
    for name, _ in net.named_modules():  # thop's profile() registers both on every module
        for counter in ("total_ops", "total_params"):
            state[f"{name}.{counter}" if name else counter] = torch.zeros(1, dtype=torch.float64)
    torch.save(state, folder / "profiled.pt")

    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("profiled.pt"))'
    )

    assert result.original.returncode != 0
    assert 'Unexpected key(s) in state_dict: "total_ops"' in result.original.output
    assert "Missing key(s)" not in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "keys")
    assert "thop" in finding.message
    titles = result.titles()
    # Dropping the counters, or strict=False: everything the model has is there.
    assert len(titles) == 2, titles
    assert "thop" in titles[0] and "total_ops" in titles[0] and "strict" not in titles[0]
    assert titles[1].startswith("Load with strict=False") and "%" not in titles[1]
    assert_all_fixes_load(result, expected)


async def test_other_number_of_classes(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net(num_classes=100))
    expected = net.state_dict()
    torch.save(expected, folder / "imagenet.pt")

    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("imagenet.pt"))'
    )

    assert result.original.returncode != 0
    assert "size mismatch for head.weight" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "shapes")
    assert "head `head`" in finding.message and "(10, 8)" in finding.message
    assert "(100, 8)" in finding.message
    # strict=False alone raises the same size mismatch: only skipping the head is offered.
    assert len(result.fixes) == 1, result.titles()
    title = result.fixes[0].title
    assert "skip the head `head`" in title.lower() and "strict=False" in title
    assert_all_fixes_load(result, expected, skip=("head.",))
    for _, run in result.fixed:
        assert run.loaded is not None
        assert run.loaded["head.weight"].shape == (10, 8)
        assert "missing_keys=['head.weight', 'head.bias']" in run.output


# -- torch.load itself ------------------------------------------------------------------------


async def test_weights_only_refuses_a_namespace(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    expected = net.state_dict()
    arguments = argparse.Namespace(lr=0.1, arch="net")
    torch.save({"state_dict": expected, "args": arguments}, folder / "run.pt")

    result = await scenario(
        worker,
        folder,
        'sd = torch.load("run.pt")\nresult = model.load_state_dict(sd["state_dict"])',
    )

    assert result.original.returncode != 0
    assert "Weights only load failed" in result.original.output
    assert "argparse.Namespace" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "weights-only")
    assert "argparse.Namespace" in finding.message
    # Naming the class first (argparse imported for it), trusting the whole file last.
    assert len(result.fixes) == 2
    allow, fix = result.fixes
    assert "safe_globals" in allow.title and not allow.safe
    assert "import argparse" in allow.edit.text and "[argparse.Namespace]" in allow.edit.text
    assert "weights_only=False" in fix.title and "runs code" in fix.title
    assert "weights_only=False" in fix.edit.text
    assert_all_fixes_load(result, expected)


@contextmanager
def saved_on_cuda() -> Iterator[None]:
    """torch.save tags every CPU storage 'cuda:0', as it would on a GPU machine."""
    from torch import serialization

    def tagger(storage: object) -> str | None:
        return "cuda:0" if getattr(storage, "device", None) == torch.device("cpu") else None

    entry: tuple[int, Callable[..., object], Callable[..., object]] = (
        -1,
        tagger,
        lambda storage, location: None,
    )
    serialization.register_package(*entry)
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


async def test_cuda_checkpoint_on_a_cpu_machine(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    expected = net.state_dict()
    with saved_on_cuda():
        torch.save(expected, folder / "gpu.pt")
    # The tagger is gone: saving is back to normal for other tests.
    torch.save(expected, folder / "cpu.pt")
    assert b"cuda" not in (folder / "cpu.pt").read_bytes()

    result = await scenario(worker, folder, 'result = model.load_state_dict(torch.load("gpu.pt"))')

    assert result.original.returncode != 0
    assert "Attempting to deserialize object on a CUDA device" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "cuda")
    assert "cuda:0" in finding.message and "map_location" in finding.message
    assert len(result.fixes) == 1, result.titles()
    assert 'map_location="cpu"' in result.fixes[0].title
    assert 'map_location="cpu"' in result.fixes[0].edit.text
    assert_all_fixes_load(result, expected)


# -- wrappers in the script, strict by position -----------------------------------------------


async def test_model_wrapped_by_data_parallel_in_the_script(
    worker: WorkerClient, folder: Path
) -> None:
    net = trained(Net())
    torch.save(net.state_dict(), folder / "net.pt")
    expected = prefixed(net.state_dict(), "module.")

    result = await scenario(
        worker,
        folder,
        'model = nn.DataParallel(model)\nresult = model.load_state_dict(torch.load("net.pt"))',
        imports="from torch import nn",
    )

    assert result.original.returncode != 0
    assert "Missing key(s)" in result.original.output
    finding = result.finding
    assert (finding.severity, finding.code) == ("error", "keys")
    assert "`module.`" in finding.message
    assert_all_fixes_load(result, expected)


@pytest.mark.parametrize("strict", [True, False])
async def test_strict_passed_positionally(worker: WorkerClient, folder: Path, strict: bool) -> None:
    net = trained(Net())
    expected = net.state_dict()
    state = dict(expected)
    state["total_ops"] = torch.zeros(1, dtype=torch.float64)
    state["head.total_ops"] = torch.zeros(1, dtype=torch.float64)
    torch.save(state, folder / "profiled.pt")

    result = await scenario(
        worker, folder, f'result = model.load_state_dict(torch.load("profiled.pt"), {strict})'
    )

    if strict:
        assert result.original.returncode != 0
        assert 'Unexpected key(s) in state_dict: "total_ops"' in result.original.output
        assert (result.finding.severity, result.finding.code) == ("error", "keys")
        assert_all_fixes_load(result, expected)
    else:
        # torch skips the two extra keys and loads every weight: nothing to report.
        assert result.original.returncode == 0, result.original.output
        assert same_weights(result.original.loaded, expected) == []
        assert result.findings == []


# -- several problems at one load; a head that is not the last module -------------------------


async def test_cuda_storages_and_a_prefix_are_fixed_together(
    worker: WorkerClient, folder: Path
) -> None:
    net = trained(Net())
    with saved_on_cuda():
        torch.save(nn.DataParallel(net).state_dict(), folder / "gpu.pt")

    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("gpu.pt", map_location=None))'
    )

    assert "Attempting to deserialize object on a CUDA device" in result.original.output
    assert {f.code for f in result.findings} == {"cuda", "keys"}
    # Neither fix alone makes this load work, so only the two together are offered.
    assert len(result.fixes) == 1, result.titles()
    title = result.fixes[0].title
    assert 'map_location="cpu"' in title and "strip the `module.` prefix" in title
    assert result.fixes[0].preferred
    assert_all_fixes_load(result, net.state_dict())


HEAD_FIRST = """

class HeadFirst(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.classifier = nn.Linear(8, num_classes)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
"""


async def test_a_head_defined_before_the_body_is_still_a_head(
    worker: WorkerClient, folder: Path
) -> None:
    scope: dict[str, object] = {}
    exec(compile("from torch import nn" + HEAD_FIRST, "model.py", "exec"), scope)
    make: Callable[..., nn.Module] = scope["HeadFirst"]  # type: ignore[assignment]
    net = trained(make(num_classes=100))
    torch.save(net.state_dict(), folder / "hundred.pt")
    result = await scenario(
        worker,
        folder,
        'result = model.load_state_dict(torch.load("hundred.pt"))',
        model="HeadFirst",
        source=MODEL + HEAD_FIRST,
    )

    assert "size mismatch for classifier.weight" in result.original.output
    assert (result.finding.code, result.finding.severity) == ("shapes", "error")
    assert "the head `classifier`" in result.finding.message
    assert len(result.fixes) == 1 and "skip the head `classifier`" in result.fixes[0].title.lower()
    assert_all_fixes_load(result, net.state_dict(), skip=("classifier.",))


# -- the review's findings: torch loads these, or raises otherwise than first predicted --------

EXTRAS = """

class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))


class Lazy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(3)


class WithState(Net):
    def get_extra_state(self):
        return {"version": 2}

    def set_extra_state(self, state):
        self.version = state["version"]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
"""
_extras: dict[str, object] = {"__name__": "model"}
exec(compile(MODEL + EXTRAS, "model.py", "exec"), _extras)


def _make(name: str) -> nn.Module:
    return _extras[name]()  # type: ignore[operator,no-any-return]


def _loads_quietly(result: Scenario, expected: dict[str, torch.Tensor]) -> None:
    """torch loads it, and torchls says nothing that would stop the user."""
    assert result.original.returncode == 0, result.original.output
    assert same_weights(result.original.loaded, expected) == []
    assert [f for f in result.findings if f.severity in {"error", "warning"}] == []


async def test_old_weight_norm_keys_load_into_the_parametrization(
    worker: WorkerClient, folder: Path
) -> None:
    old = nn.Module()
    old.fc = torch.nn.utils.weight_norm(nn.Linear(4, 3))  # the deprecated one: weight_g, weight_v
    torch.save(trained(old).state_dict(), folder / "old.pt")
    result = await scenario(
        worker,
        folder,
        'result = model.load_state_dict(torch.load("old.pt"))',
        model="Normed",
        source=MODEL + EXTRAS,
    )
    assert result.original.returncode == 0, result.original.output
    assert result.findings == []


async def test_lazy_modules_and_extra_state(worker: WorkerClient, folder: Path) -> None:
    lazy = _make("Lazy")
    lazy.fc(torch.zeros(1, 5))  # materialize: in_features=5
    expected = trained(lazy).state_dict()
    torch.save(expected, folder / "lazy.pt")
    result = await scenario(
        worker,
        folder,
        'result = model.load_state_dict(torch.load("lazy.pt"))',
        model="Lazy",
        source=MODEL + EXTRAS,
    )
    _loads_quietly(result, expected)

    torch.save(nn.DataParallel(trained(_make("WithState"))).state_dict(), folder / "dp.pt")
    result = await scenario(
        worker,
        folder,
        'result = model.load_state_dict(torch.load("dp.pt", weights_only=False))',
        model="WithState",
        source=MODEL + EXTRAS,
    )
    assert result.original.returncode != 0
    assert (result.finding.code, result.finding.severity) == ("keys", "error")
    assert "`module.`" in result.finding.message


async def test_globals_the_script_allows_are_not_refused(
    worker: WorkerClient, folder: Path
) -> None:
    expected = trained(Net()).state_dict()
    torch.save({"state_dict": expected, "args": argparse.Namespace(lr=1)}, folder / "ns.pt")
    result = await scenario(
        worker,
        folder,
        "torch.serialization.add_safe_globals([argparse.Namespace])\n"
        'result = model.load_state_dict(torch.load("ns.pt")["state_dict"])',
        imports="import argparse",
    )
    _loads_quietly(result, expected)


async def test_a_plain_dict_copy_lets_batchnorm_fill_its_counter(
    worker: WorkerClient, folder: Path
) -> None:
    state = trained(Net()).state_dict()
    del state["features.1.num_batches_tracked"]  # kept `_metadata`: a strict load would fail
    torch.save(state, folder / "old_bn.pt")
    result = await scenario(
        worker,
        folder,
        'sd = {k: v for k, v in torch.load("old_bn.pt").items()}\n'
        "result = model.load_state_dict(sd)",
    )
    _loads_quietly(result, state)


async def test_safetensors_load_model_fills_tied_weights(
    worker: WorkerClient, folder: Path
) -> None:
    from safetensors.torch import save_model

    tied = trained(_make("Tied"))
    save_model(tied, str(folder / "tied.safetensors"))  # keeps one of the two shared tensors
    result = await scenario(
        worker,
        folder,
        'result = load_model(model, "tied.safetensors")',
        imports="from safetensors.torch import load_model",
        model="Tied",
        source=MODEL + EXTRAS,
    )
    _loads_quietly(result, tied.state_dict())


async def test_a_list_is_not_a_state_dict(worker: WorkerClient, folder: Path) -> None:
    torch.save([trained(Net()).state_dict()], folder / "list.pt")
    result = await scenario(worker, folder, 'result = model.load_state_dict(torch.load("list.pt"))')
    assert "TypeError" in result.original.output
    assert (result.finding.code, result.finding.severity) == ("not-a-mapping", "error")
    assert "holds a list" in result.finding.message and "[0]" in result.finding.message


async def test_map_location_by_position(worker: WorkerClient, folder: Path) -> None:
    expected = trained(Net()).state_dict()
    with saved_on_cuda():
        torch.save(expected, folder / "gpu.pt")
    result = await scenario(
        worker, folder, 'result = model.load_state_dict(torch.load("gpu.pt", "cpu"))'
    )
    _loads_quietly(result, expected)


async def test_strict_hidden_in_kwargs_is_unknown(worker: WorkerClient, folder: Path) -> None:
    net = trained(Net())
    torch.save(nn.DataParallel(net).state_dict(), folder / "dp.pt")
    result = await scenario(
        worker,
        folder,
        'kw = {"strict": False}\nresult = model.load_state_dict(torch.load("dp.pt"), **kw)',
    )
    assert result.original.returncode == 0  # strict=False: loads nothing, raises nothing
    assert (result.finding.code, result.finding.severity) == ("keys", "warning")
    assert "if `strict` is true" in result.finding.message
    # The fix renames the keys; none adds a second `strict`.
    assert [f.title for f in result.fixes] == ["Strip the `module.` prefix"]
    assert_all_fixes_load(result, net.state_dict())


async def test_keys_renamed_in_place_and_models_changed_after_building(
    worker: WorkerClient, folder: Path
) -> None:
    net = trained(Net())
    torch.save(nn.DataParallel(net).state_dict(), folder / "dp.pt")
    result = await scenario(
        worker,
        folder,
        'sd = torch.load("dp.pt")\n'
        "for k in list(sd):\n"
        '    sd[k.replace("module.", "")] = sd.pop(k)\n'
        "result = model.load_state_dict(sd)",
    )
    _loads_quietly(result, net.state_dict())

    net = Net()
    net.head = nn.Linear(8, 3)
    expected = trained(net).state_dict()
    torch.save(expected, folder / "three.pt")
    result = await scenario(
        worker,
        folder,
        'model.head = nn.Linear(8, 3)\nresult = model.load_state_dict(torch.load("three.pt"))',
        imports="from torch import nn",
    )
    _loads_quietly(result, expected)
    assert [f.code for f in result.findings] == ["unchecked"]
    assert "line 6" in result.findings[0].message and result.fixes == []


class _RunsCode:
    """Unpickles by calling os.getcwd: harmless here, but any call could be os.system."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        import os

        return (os.getcwd, ())


async def test_weights_only_false_on_a_file_that_runs_code_is_said(
    worker: WorkerClient, folder: Path
) -> None:
    expected = trained(Net()).state_dict()
    torch.save({"state_dict": expected, "where": _RunsCode()}, folder / "code.pt")
    result = await scenario(
        worker,
        folder,
        'result = model.load_state_dict(torch.load("code.pt", weights_only=False)["state_dict"])',
    )
    assert result.original.returncode == 0, result.original.output  # it did call os.getcwd
    assert (result.finding.code, result.finding.severity) == ("runs-code", "warning")
    assert "getcwd`" in result.finding.message and result.fixes == []  # posix.getcwd
