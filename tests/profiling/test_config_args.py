"""Config objects as constructor arguments, read from the source as laid out and built by the
worker: a workspace dataclass, `Settings(**model_args)` from a literal dict, a class method's
defaults changed attribute by attribute, SimpleNamespace, a Hugging Face config; the same calls
in `--args`. Every count is checked against the model built for real with torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.source.values import callable_allowed, settable

CONFIGS = FIXTURES / "configs"


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(CONFIGS)
    yield runner
    runner.close()


def _torch_counts(model: Any, *inputs: Any) -> tuple[int, int]:
    """Parameters and MACs as torch itself counts them on real tensors. Attention runs its
    math kernel: the CPU's fused one is an op FlopCounterMode has no formula for."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*inputs)
    return params, counter.get_total_flops() // 2


def _decoder(settings: Any, batch: int, length: int) -> tuple[int, int]:
    import torch

    sys.path.insert(0, str(CONFIGS))
    try:
        from tinygpt.net import Decoder
    finally:
        sys.path.remove(str(CONFIGS))
    torch.manual_seed(0)
    model = Decoder(settings)
    vocab = model.head.out_features
    return _torch_counts(model, torch.randint(0, vocab, (batch, length)))


def _settings(**values: Any) -> Any:
    sys.path.insert(0, str(CONFIGS))
    try:
        from tinygpt.net import DecoderSettings
    finally:
        sys.path.remove(str(CONFIGS))
    return DecoderSettings(**values)


def _check(result: dict[str, Any], expected: tuple[int, int]) -> None:
    assert (result["parameters"]["total"], result["macs"]) == expected


def test_a_workspace_dataclass_config(runner: Runner) -> None:
    result = runner.ok(CONFIGS / "with_dataclass.py", "Decoder")
    _check(result, _decoder(_settings(vocab=120, context=24, width=48, depth=3), 2, 24))


def test_a_config_from_a_literal_dict_expanded_with_stars(runner: Runner) -> None:
    # model_args = dict(...), then model_args["heads"] = 4, then DecoderSettings(**model_args)
    result = runner.ok(CONFIGS / "with_dict.py", "Decoder")
    _check(result, _decoder(_settings(vocab=90, context=12, width=40, depth=3, heads=4), 1, 12))


def test_a_class_methods_defaults_then_attribute_assignments(runner: Runner) -> None:
    result = runner.ok(CONFIGS / "with_defaults.py", "Decoder")
    expected = _decoder(SimpleNamespace(size="small", vocab=77, context=20), 3, 20)
    _check(result, expected)
    # "small" is 4 blocks of width 64: the assignments after the call were applied
    assert (
        result["parameters"]["total"]
        > _decoder(SimpleNamespace(size="tiny", vocab=77, context=20), 3, 20)[0]
    )


def test_a_simple_namespace(runner: Runner) -> None:
    result = runner.ok(CONFIGS / "with_namespace.py", "Decoder")
    _check(result, _decoder(SimpleNamespace(vocab=64, context=10, width=24, depth=1), 2, 10))


def test_a_hugging_face_config_call(runner: Runner) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    result = runner.ok(CONFIGS / "with_hf_config.py", "GPT2LMHeadModel")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=32)
    model = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in model.parameters())  # tied: counted once
    assert result["parameters"]["total"] == params
    assert result["macs"] == _torch_counts(model, torch.randint(0, 500, (1, 32)))[1]


def test_changes_torchls_cannot_follow_make_the_argument_unknown(tmp_path: Any) -> None:
    from torchls.source.models import FileModels
    from torchls.source.project import Project

    (tmp_path / "m.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, cfg):\n"
        "        super().__init__()\n"
        "cfg = Net.defaults()\n"
        "cfg.update(width=3)\n"
        "model = Net(cfg)\n"
    )
    project = Project(str(tmp_path))
    module = project.module_file(str(tmp_path / "m.py"))
    assert module is not None
    target = next(t for t in FileModels(project, module).targets() if t.kind == "construction")
    assert "unknown" in target.args[0] and "cannot follow" in target.args[0]["why"]


def test_what_the_worker_may_call_and_change() -> None:
    assert callable_allowed({"import": "types.SimpleNamespace"})
    assert settable({"import": "types.SimpleNamespace"})
    assert settable({"import": "transformers.GPT2Config"})
    for dotted in ("types.FunctionType", "os.system", "argparse.Namespace", "torch.load"):
        assert not callable_allowed({"import": dotted}) and not settable({"import": dotted})
    assert not settable({"import": "builtins.dict"})


# -- the CLI: the same calls in --args ----------------------------------------------------------


def _torchls(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{FIXTURES}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args, "--json", "--no-thop"],
        cwd=CONFIGS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_args_take_a_workspace_dataclass_call() -> None:
    done = _torchls(
        "tinygpt/net.py::Decoder",
        "--args",
        "(DecoderSettings(vocab=50, context=8, width=16, depth=2),)",
        "--input",
        "(2, 8):long",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    _check(result, _decoder(_settings(vocab=50, context=8, width=16, depth=2), 2, 8))


def test_cli_args_take_simple_namespace_and_a_library_config() -> None:
    done = _torchls(
        "tinygpt/net.py::Decoder",
        "--args",
        "(SimpleNamespace(vocab=30, context=6, width=8, depth=1),)",
        "--input",
        "(1, 6):long",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    _check(result, _decoder(SimpleNamespace(vocab=30, context=6, width=8, depth=1), 1, 6))

    done = _torchls(
        "transformers::GPT2LMHeadModel",
        "--args",
        "(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16),)",
        "--input",
        "(1, 16):long",
    )
    assert done.returncode == 0, done.stderr
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    params = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())
    assert json.loads(done.stdout)["result"]["parameters"]["total"] == params


def test_cli_builds_a_hugging_face_model_from_its_config_class_defaults() -> None:
    done = _torchls("transformers::GPT2LMHeadModel", "--input", "(1, 8):long")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    from transformers import GPT2Config, GPT2LMHeadModel

    with __import__("torch").device("meta"):
        params = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config()).parameters())
    assert result["parameters"]["total"] == params == 124_439_808
    assert "built from GPT2Config() defaults" in " ".join(result["notes"])


def test_cli_args_refuse_what_the_hover_refuses() -> None:
    done = _torchls("tinygpt/net.py::Decoder", "--args", "(__import__('os').getcwd(),)")
    assert done.returncode == 2
    assert "--args: cannot read" in done.stderr and "Traceback" not in done.stderr
