"""Loads real repositories write that torchls could not reach before (issue 16, items 2, 4, 5
and 7). Each case's checkpoint is written by torch here, the script really run before and after
the fix, in the editor (LSP) and in `torchls check`; whenever the script runs, no error.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from tests.conftest import lsp_session
from tests.loadcheck.helpers import what_raises
from tests.loadcheck.test_cli_check import _check
from tests.loadcheck.test_cli_parity import _run_script
from tests.loadcheck.test_lsp_diagnostics import _actions, _apply, _diagnostics, _open, _torchls

Severity = types.DiagnosticSeverity


def _save(folder: Path, code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", code], cwd=folder, check=True, capture_output=True, timeout=300
    )


def _severe(found: list[types.Diagnostic]) -> list[types.Diagnostic]:
    return [d for d in _torchls(found) if d.severity in {Severity.Error, Severity.Warning}]


# -- item 7: from_pretrained on the weights file itself, with a config ---------------------------

transformers = pytest.importorskip("transformers")

HF_SAVE = """
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
config = BertConfig(vocab_size=96, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=40)
config.save_pretrained("tiny-bert")
torch.save(BertModel(config).state_dict(), "pytorch_model.bin")
other = GPT2Config(vocab_size=96, n_embd=24, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
torch.save(GPT2Model(other).state_dict(), "gpt2_weights.bin")
"""
HF_GOOD = """\
from transformers import AutoConfig, AutoModel, BertForSequenceClassification

config = AutoConfig.from_pretrained("./tiny-bert")
model = AutoModel.from_pretrained("./pytorch_model.bin", config=config)
classifier = BertForSequenceClassification.from_pretrained("pytorch_model.bin", config=config)
print("loaded")
"""
HF_WRONG = """\
from transformers import AutoConfig, AutoModel, BertConfig, BertModel

config = AutoConfig.from_pretrained("./tiny-bert")
gpt = BertModel.from_pretrained("./gpt2_weights.bin", config=config)
wide = BertConfig(vocab_size=120, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=40)
bigger = BertModel.from_pretrained("./pytorch_model.bin", config=wide)
bare = AutoModel.from_pretrained("./pytorch_model.bin")
print("loaded")
"""
HF_PRELUDE = """
from transformers.utils import logging
logging.set_verbosity_error()
from transformers import AutoConfig, AutoModel, BertConfig, BertModel
config = AutoConfig.from_pretrained("./tiny-bert")
wide = BertConfig(vocab_size=120, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=40)
"""


def _hf_layout(tmp_path: Path, script: str) -> Path:
    _save(tmp_path, HF_SAVE)
    path = tmp_path / "resave.py"
    path.write_text(script)
    return path


async def test_a_weights_file_with_its_config_is_checked_as_the_file_it_is(
    tmp_path: Path,
) -> None:
    script = _hf_layout(tmp_path, HF_GOOD)
    ran = _run_script(script)
    assert ran.returncode == 0 and ran.stdout.strip() == "loaded", ran.stderr
    done = _check("resave.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "does not exist" not in done.stdout
    # The file was read: the classifier head is not in it, and transformers initializes it.
    assert "resave.py:5:14: information: from_pretrained initializes 2 keys anew" in done.stdout
    assert "2 loads: 2 checked; 0 errors, 0 warnings, 1 information" in done.stderr
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, script)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        assert not _severe(found), found
        assert [d.code for d in _torchls(found)] == ["new-weights"]


async def test_a_weights_file_that_does_not_fit_its_config_says_what_transformers_does(
    tmp_path: Path,
) -> None:
    script = _hf_layout(tmp_path, HF_WRONG)
    lines = HF_WRONG.splitlines()
    real = what_raises(tmp_path, HF_PRELUDE, [lines[3], lines[6], lines[7]])
    assert real[0] == ""  # another architecture's file: transformers warns and loads nothing
    assert "ignore_mismatched_sizes" in real[1] and "not a valid JSON file" in real[2]
    done = _check("resave.py", cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "resave.py:4:7: warning: from_pretrained loads nothing from `./gpt2_weights.bin`" in out
    assert "resave.py:7:10: error: from_pretrained will raise: 1 key" in out
    assert "`embeddings.word_embeddings.weight` is (120, 24) in the model and (96, 24)" in out
    assert "fix: Initialize the mismatched weights anew: ignore_mismatched_sizes=True" in out
    assert "resave.py:8:34: error: from_pretrained will raise OSError" in out
    assert "no config= is given" in out
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, script)
        found = await _diagnostics(session, uri, lambda d: len(_torchls(d)) >= 3)
        by_line = {d.range.start.line: d for d in _torchls(found)}
        assert by_line[3].severity == Severity.Warning and by_line[3].code == "partial"
        assert by_line[6].severity == Severity.Error and by_line[6].code == "shapes"
        assert by_line[7].severity == Severity.Error and by_line[7].code == "pretrained-file"
        actions = await _actions(session, uri, by_line[6])
        chosen = next((a for a in actions if "ignore_mismatched_sizes" in a.title), None)
        assert chosen is not None, [a.title for a in actions]
    fixed = _apply(script.read_text(), chosen)
    fixed_line = fixed.splitlines()[6]
    assert "ignore_mismatched_sizes=True" in fixed_line
    assert what_raises(tmp_path, HF_PRELUDE, [fixed_line]) == [""]


async def _preferred_fix(tmp_path: Path, script: Path) -> tuple[types.Diagnostic, types.CodeAction]:
    """The first torchls diagnostic the editor shows for the script, and its preferred fix."""
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, script)
        found = await _diagnostics(session, uri, lambda d: bool(_torchls(d)))
        error = _torchls(found)[0]
        actions = await _actions(session, uri, error)
    return error, next(a for a in actions if a.is_preferred)


def _ran_fixed(script: Path, chosen: types.CodeAction) -> subprocess.CompletedProcess[str]:
    script.write_text(_apply(script.read_text(), chosen))
    return _run_script(script)


# -- item 4: the state dict bound inside a `with` body -------------------------------------------

NET = """from torch import nn


class Net(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)
"""
# Saved from nn.DataParallel(net): every key starts with `module.`.
WRAPPED_SAVE = """
import torch
from model import Net
torch.save({"module." + k: v for k, v in Net().state_dict().items()}, "m.pt")
"""
WITH_SCRIPTS = {
    "top_level": """\
import torch
from model import Net

model = Net()
with open("m.pt", "rb") as f:
    sd = torch.load(f)
model.load_state_dict(sd)
print("loaded")
""",
    "in_a_function": """\
import torch
from model import Net


def main():
    net = Net()
    with torch.no_grad(), open("m.pt", "rb") as handle:
        state = torch.load(handle, map_location="cpu")
        net.load_state_dict(state)
    print("loaded")


main()
""",
}


def _with_layout(tmp_path: Path, case: str) -> Path:
    (tmp_path / "model.py").write_text(NET)
    _save(tmp_path, WRAPPED_SAVE)
    script = tmp_path / "predict.py"
    script.write_text(WITH_SCRIPTS[case])
    return script


@pytest.mark.parametrize("case", sorted(WITH_SCRIPTS))
def test_a_state_dict_loaded_in_a_with_body_is_checked_by_the_cli(
    tmp_path: Path, case: str
) -> None:
    script = _with_layout(tmp_path, case)
    before = _run_script(script)
    assert before.returncode != 0 and 'Missing key(s) in state_dict: "body.weight"' in before.stderr
    done = _check("predict.py", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the checkpoint's keys start with `module.`" in done.stdout
    assert "1 load: 1 checked; 1 error" in done.stderr
    fixed = _check("--fix", "predict.py", cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr, fixed.stdout
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


@pytest.mark.parametrize("case", sorted(WITH_SCRIPTS))
async def test_a_state_dict_loaded_in_a_with_body_is_checked_in_the_editor(
    tmp_path: Path, case: str
) -> None:
    script = _with_layout(tmp_path, case)
    error, chosen = await _preferred_fix(tmp_path, script)
    assert error.severity == Severity.Error and "`module.`" in error.message
    assert "module." in chosen.title
    after = _ran_fixed(script, chosen)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


# -- item 2: the model's config read from the checkpoint -----------------------------------------

GPT_MODEL = """from dataclasses import dataclass

from torch import nn


@dataclass
class TinyConfig:
    vocab: int = 64
    width: int = 16
    depth: int = 2
    context: int = 8
    bias: bool = True


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.width, bias=config.bias)
        self.mix = nn.Linear(config.width, config.width, bias=config.bias)


class TinyGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed = nn.Embedding(config.vocab, config.width)
        self.position = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.out = nn.Linear(config.width, config.vocab, bias=False)
"""
# A training run's checkpoint; its sizes differ from the config's defaults, so only a model
# built from the saved `model_args` fits it.
GPT_TRAIN = """
import sys
import torch
from model import TinyConfig, TinyGPT

model_args = dict(vocab=50, width=12, depth=3, context=6, bias=False)
model = TinyGPT(TinyConfig(**model_args))
if "--compile" in sys.argv:
    model = torch.compile(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
torch.save({"model": model.state_dict(), "model_args": model_args, "iter_num": 5,
            "optimizer": optimizer.state_dict(), "best_val_loss": 1.5}, "ckpt.pt")
"""
GPT_SAMPLE = """\
import torch
from model import TinyConfig, TinyGPT

checkpoint = torch.load("ckpt.pt", map_location="cpu")
config = TinyConfig(**checkpoint["model_args"])
model = TinyGPT(config)
state_dict = checkpoint["model"]
model.load_state_dict(state_dict)
print("loaded")
"""


def _gpt_layout(tmp_path: Path, *train: str) -> Path:
    (tmp_path / "model.py").write_text(GPT_MODEL)
    (tmp_path / "train.py").write_text(GPT_TRAIN)
    subprocess.run(
        [sys.executable, "train.py", *train], cwd=tmp_path, check=True, capture_output=True
    )
    script = tmp_path / "sample.py"
    script.write_text(GPT_SAMPLE)
    return script


async def test_a_model_built_from_the_checkpoints_config_is_checked_and_fits(
    tmp_path: Path,
) -> None:
    script = _gpt_layout(tmp_path)
    ran = _run_script(script)
    assert ran.returncode == 0 and ran.stdout.strip() == "loaded", ran.stderr
    done = _check("--strict", "sample.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and "1 load: 1 checked; 0 errors" in done.stderr
    # The model really is the checkpoint's: with the config's defaults it would not fit.
    script.write_text(GPT_SAMPLE.replace('**checkpoint["model_args"]', ""))
    assert _run_script(script).returncode != 0
    wrong = _check("sample.py", cwd=tmp_path)
    assert wrong.returncode == 1 and "have other shapes" in wrong.stdout, wrong.stdout


async def test_a_compiled_models_checkpoint_with_the_saved_config_gets_the_prefix_fix(
    tmp_path: Path,
) -> None:
    script = _gpt_layout(tmp_path, "--compile")
    before = _run_script(script)
    assert before.returncode != 0 and '"_orig_mod.embed.weight"' in before.stderr
    done = _check("sample.py", cwd=tmp_path)
    assert done.returncode == 1
    assert "sample.py:8:1: error: load_state_dict will raise (strict loading): the " in done.stdout
    assert "start with `_orig_mod.` (saved from torch.compile)" in done.stdout
    assert "built with `checkpoint['model_args']` as saved in ckpt.pt" in done.stdout
    assert "fix: Strip the `_orig_mod.` prefix" in done.stdout
    error, chosen = await _preferred_fix(tmp_path, script)
    assert error.severity == Severity.Error and "`_orig_mod.`" in error.message
    assert "checkpoint['model_args']" in error.message
    assert "_orig_mod." in chosen.title
    edited = _apply(script.read_text(), chosen)
    fixed = _check("--fix", "sample.py", cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr
    assert script.read_text() == edited  # the editor's fix and the CLI's are the same edit
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


# -- item 5: models reached through sys.path hacks, classes, factories and packages --------------

NET_WITH_FACTORY = (
    NET
    + """

def build_model(classes=10):
    net = Net(classes)
    return net


def build_parallel():
    return nn.DataParallel(Net())
"""
)
REACH_SCRIPTS = {
    "sys_path_insert": (
        "tools/predict.py",
        """\
import sys

sys.path.insert(0, "../lib")
import torch
from netdefs import Net

model = Net()
model.load_state_dict(torch.load("../m.pt"))
print("loaded")
""",
    ),
    "sys_path_append_file": (
        "tools/restore.py",
        """\
import os
import sys

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "lib"))
import torch
from netdefs import Net

HERE = os.path.dirname(os.path.abspath(__file__))
model = Net()
model.load_state_dict(torch.load(os.path.join(HERE, "..", "m.pt")))
print("loaded")
""",
    ),
    "member": (
        "predict.py",
        """\
import torch
from netdefs import Net


class Predictor:
    def __init__(self, path):
        self.path = path
        self.model = Net()

    def restore(self):
        self.model.load_state_dict(torch.load("m.pt"))


Predictor("m.pt").restore()
print("loaded")
""",
    ),
    "factory": (
        "predict.py",
        """\
import torch
from netdefs import build_model

model = build_model()
model.load_state_dict(torch.load("m.pt"))
print("loaded")
""",
    ),
    "star_import": (
        "predict.py",
        """\
import torch
from netdefs import *

model = Net()
model.load_state_dict(torch.load("m.pt"))
print("loaded")
""",
    ),
    "package_reexport": (
        "predict.py",
        """\
import torch
from nets import Net

model = Net()
model.load_state_dict(torch.load("m.pt"))
print("loaded")
""",
    ),
}


def _reach_layout(tmp_path: Path, case: str) -> Path:
    """The model in netdefs.py (at the root, and in lib/ for the scripts in tools/, which put
    it on sys.path) and re-exported by the package nets/; the checkpoint saved from
    nn.DataParallel, so each load raises until its keys lose the `module.` prefix."""
    (tmp_path / "netdefs.py").write_text(NET_WITH_FACTORY)
    (tmp_path / "lib").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "nets").mkdir()
    if case.startswith("sys_path"):
        (tmp_path / "netdefs.py").unlink()  # only where the script's sys.path line points
        (tmp_path / "lib" / "netdefs.py").write_text(NET_WITH_FACTORY)
    (tmp_path / "nets" / "core.py").write_text(NET)
    (tmp_path / "nets" / "__init__.py").write_text("from .core import Net\n")
    (tmp_path / "model.py").write_text(NET)
    _save(tmp_path, WRAPPED_SAVE)
    where, text = REACH_SCRIPTS[case]
    script = tmp_path / where
    script.write_text(text)
    return script


@pytest.mark.parametrize("case", sorted(REACH_SCRIPTS))
def test_a_model_the_check_reaches_is_checked_by_the_cli(tmp_path: Path, case: str) -> None:
    script = _reach_layout(tmp_path, case)
    before = _run_script(script)
    assert before.returncode != 0 and 'Missing key(s) in state_dict: "body.weight"' in before.stderr
    where = REACH_SCRIPTS[case][0]
    done = _check(where, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the checkpoint's keys start with `module.`" in done.stdout
    assert "fix: Strip the `module.` prefix" in done.stdout
    fixed = _check("--fix", where, cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr, fixed.stdout
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


@pytest.mark.parametrize("case", sorted(REACH_SCRIPTS))
async def test_a_model_the_check_reaches_is_checked_in_the_editor(
    tmp_path: Path, case: str
) -> None:
    script = _reach_layout(tmp_path, case)
    error, chosen = await _preferred_fix(tmp_path, script)
    assert error.severity == Severity.Error and "`module.`" in error.message
    assert "module." in chosen.title
    after = _ran_fixed(script, chosen)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


def test_a_factory_that_wraps_its_model_loads_the_wrapped_keys_without_error(
    tmp_path: Path,
) -> None:
    script = _reach_layout(tmp_path, "factory")
    script.write_text(REACH_SCRIPTS["factory"][1].replace("build_model", "build_parallel"))
    ran = _run_script(script)
    assert ran.returncode == 0 and ran.stdout.strip() == "loaded", ran.stderr
    done = _check("--strict", "predict.py", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    assert "1 load: 1 checked; 0 errors" in done.stderr


def test_a_model_the_check_cannot_reach_is_said_not_fine(tmp_path: Path) -> None:
    script = _reach_layout(tmp_path, "member")
    # Assigned in two places: which one the load sees depends on the order of the calls.
    script.write_text(
        REACH_SCRIPTS["member"][1].replace(
            "    def restore(self):",
            "    def reset(self):\n        self.model = None\n\n    def restore(self):",
        )
    )
    done = _check("predict.py", cwd=tmp_path)
    assert done.returncode == 0 and "torchls cannot tell which model `self.model` is" in done.stdout
    assert "1 load: 0 checked, 1 not checked" in done.stderr
    assert _check("--strict", "predict.py", cwd=tmp_path).returncode == 1
