"""Checks of the profiling fixtures themselves (not of torchls): the analytic figures in
reference_models.py agree with what torch reports, and the stand-in libraries build."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import reference_models as ref

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HF = FIXTURES / "hf"


def _counts(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())  # unique: a tied or shared parameter appears once
    return dict(
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        frozen=sum(p.numel() for p in params if not p.requires_grad),
        buffers=sum(b.numel() for b in model.buffers()),
    )


def _macs(model: nn.Module, inputs: list[torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def _meta_inputs(expected: dict[str, Any]) -> list[torch.Tensor]:
    dtype = getattr(torch, expected["dtype"])
    return [torch.empty(shape, dtype=dtype, device="meta") for shape in expected["input"]]


def test_every_model_has_expectations() -> None:
    assert set(ref.EXPECTED) == set(ref.MODELS)


@pytest.mark.parametrize("name", sorted(ref.MODELS))
def test_reference_model(name: str) -> None:
    expected = ref.EXPECTED[name]
    with torch.device("meta"):
        model = ref.MODELS[name]()
    counts = _counts(model)
    assert counts == {k: expected[k] for k in counts}
    assert expected["trainable"] + expected["frozen"] == expected["params"]
    assert _macs(model, _meta_inputs(expected)) == expected["macs"]


def test_tied_and_shared_parameters_are_really_shared() -> None:
    with torch.device("meta"):
        tied = ref.TiedLM()
        shared = ref.SharedBlock()
    assert tied.lm_head.weight is tied.embed.weight
    # Counting every registration twice would give a different total.
    naive = sum(p.numel() for _, p in tied.named_parameters(remove_duplicate=False))
    assert naive == ref.EXPECTED["TiedLM"]["params"] + 100 * 32
    assert len(list(shared.modules())) == 2


@pytest.fixture
def visionlib(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(FIXTURES))
    for mod in [m for m in sys.modules if m == "visionlib" or m.startswith("visionlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    import visionlib.models

    return visionlib.models


@pytest.mark.parametrize(
    ("arch", "expected", "shape", "key"),
    [
        ("resnet50", ref.RESNET50_EXPECTED, (4, 3, 256, 128), "macs_4x3x256x128"),
        ("resnet18", ref.RESNET18_EXPECTED, (1, 3, 224, 224), "macs_1x3x224x224"),
    ],
)
def test_resnet(
    visionlib: Any, arch: str, expected: dict[str, int], shape: tuple, key: str
) -> None:
    with torch.device("meta"):
        model = getattr(visionlib, arch)()
    assert isinstance(model, visionlib.ResNet)
    counts = _counts(model)
    assert counts["params"] == expected["params"] == expected["params_formula"]
    assert counts["trainable"] == counts["params"]
    assert _macs(model, [torch.empty(shape, device="meta")]) == expected[key]


def test_resnet_known_figures() -> None:
    assert round(ref.RESNET50_EXPECTED["macs_4x3x256x128"] / 1e9, 3) == 10.685
    assert round(ref.RESNET18_EXPECTED["macs_1x3x224x224"] / 1e9, 3) == 1.814


def _hf_params(directory: str, causal_lm: bool) -> int:
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.from_pretrained(HF / directory)
    factory = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
    with torch.device("meta"):
        model = factory.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize(
    ("directory", "causal_lm", "params"),
    [
        ("bert-base", False, 109_482_240),
        ("gpt2", False, 124_439_808),
        ("gpt2", True, 124_439_808),  # lm_head tied to wte
        ("llama-7b", True, 6_738_415_616),
    ],
)
def test_hf_config(hf_offline: None, directory: str, causal_lm: bool, params: int) -> None:
    assert _hf_params(directory, causal_lm) == params
