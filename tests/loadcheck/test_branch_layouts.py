"""Loads written under `if`/`elif` branches and through rebindings of the model (issue 16): a
GPT training repository's resume branch (the config copied key by key from the checkpoint,
the `_orig_mod.` prefix stripped in a loop), and `model = model.cuda()` under `if`,
`model = model.to(device)`, `model = nn.DataParallel(model)`. Each checkpoint is written by
torch here and each script really run, before and after the fix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from tests.loadcheck.test_cli_check import _check
from tests.loadcheck.test_cli_parity import _run_script
from tests.loadcheck.test_reach_layouts import (
    GPT_MODEL,
    GPT_TRAIN,
    NET,
    _preferred_fix,
    _ran_fixed,
    _save,
)

Severity = types.DiagnosticSeverity

# The resume branch of a GPT training script: which model is built, and what is loaded into
# it, is decided by `init_from`; the sizes come from the checkpoint, copied key by key into
# the command line's defaults (which alone would not fit it).
RESUME = """\
import os

import torch
from model import TinyConfig, TinyGPT

init_from = "resume"
out_dir = "."
model_args = dict(vocab=64, width=16, depth=2, context=8, bias=True)
if init_from == "scratch":
    model_args["vocab"] = 64
    config = TinyConfig(**model_args)
    model = TinyGPT(config)
elif init_from == "resume":
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    checkpoint = torch.load(ckpt_path, map_location="cpu")
    saved_args = checkpoint["model_args"]
    for key in ["vocab", "width", "depth", "context", "bias"]:
        model_args[key] = saved_args[key]
    config = TinyConfig(**model_args)
    model = TinyGPT(config)
    state_dict = checkpoint["model"]
{strip}    model.load_state_dict(state_dict)
print("loaded")
"""
STRIP = """\
    unwanted = "_orig_mod."
    for k, v in list(state_dict.items()):
        if k.startswith(unwanted):
            state_dict[k[len(unwanted) :]] = state_dict.pop(k)
"""


def _resume_layout(tmp_path: Path, compiled: bool, strip: bool) -> Path:
    (tmp_path / "model.py").write_text(GPT_MODEL)
    (tmp_path / "train.py").write_text(GPT_TRAIN)
    subprocess.run(
        [sys.executable, "train.py", *(["--compile"] if compiled else [])],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    script = tmp_path / "resume.py"
    script.write_text(RESUME.format(strip=STRIP if strip else ""))
    return script


@pytest.mark.parametrize("compiled", [True, False])
def test_the_resume_branch_that_strips_the_prefix_loads_without_a_finding(
    tmp_path: Path, compiled: bool
) -> None:
    script = _resume_layout(tmp_path, compiled, strip=True)
    ran = _run_script(script)
    assert ran.returncode == 0 and ran.stdout.strip() == "loaded", ran.stderr
    done = _check("--strict", "resume.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "" and "1 load: 1 checked; 0 errors" in done.stderr
    # Checked, not passed: without the saved sizes copied in, the model does not fit.
    script.write_text(script.read_text().replace("model_args[key] = saved_args[key]", "pass"))
    assert _run_script(script).returncode != 0
    wrong = _check("resume.py", cwd=tmp_path)
    assert wrong.returncode == 1 and "have other shapes" in wrong.stdout, wrong.stdout


def test_the_resume_branch_without_the_strip_loop_gets_the_prefix_error_and_fix(
    tmp_path: Path,
) -> None:
    script = _resume_layout(tmp_path, compiled=True, strip=False)
    before = _run_script(script)
    assert before.returncode != 0 and '"_orig_mod.embed.weight"' in before.stderr
    done = _check("resume.py", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "resume.py:22:5: error: load_state_dict will raise (strict loading)" in done.stdout
    assert "start with `_orig_mod.` (saved from torch.compile)" in done.stdout
    assert "fix: Strip the `_orig_mod.` prefix" in done.stdout
    assert "1 load: 1 checked; 1 error" in done.stderr
    fixed = _check("--fix", "resume.py", cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr, fixed.stdout
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


async def test_the_resume_branch_without_the_strip_loop_is_fixed_in_the_editor(
    tmp_path: Path,
) -> None:
    script = _resume_layout(tmp_path, compiled=True, strip=False)
    error, chosen = await _preferred_fix(tmp_path, script)
    assert error.severity == Severity.Error and "`_orig_mod.`" in error.message
    assert error.range.start.line == 21
    after = _ran_fixed(script, chosen)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


# -- the model rebound before the load ---------------------------------------------------------

PLAIN_SAVE = """
import torch
from model import Net
torch.save(Net().state_dict(), "plain.pt")
torch.save({"module." + k: v for k, v in Net().state_dict().items()}, "wrapped.pt")
"""
REBOUND = {
    "cuda_if": """\
import torch
from model import Net

model = Net()
if torch.cuda.is_available():
    model = model.cuda()
model.load_state_dict(torch.load("{file}", map_location="cpu"))
print("loaded")
""",
    "to_device": """\
import torch
from model import Net

device = "cuda" if torch.cuda.is_available() else "cpu"
model = Net()
model = model.to(device)
model.load_state_dict(torch.load("{file}", map_location=device))
print("loaded")
""",
    "data_parallel": """\
import torch
from torch import nn
from model import Net

model = Net()
model = nn.DataParallel(model)
model.load_state_dict(torch.load("{file}"))
print("loaded")
""",
}
# What each script needs: the DataParallel model's keys start with `module.`.
FITS = {"cuda_if": "plain.pt", "to_device": "plain.pt", "data_parallel": "wrapped.pt"}
OTHER = {"plain.pt": "wrapped.pt", "wrapped.pt": "plain.pt"}


def _rebound(tmp_path: Path, case: str, file: str) -> Path:
    (tmp_path / "model.py").write_text(NET)
    _save(tmp_path, PLAIN_SAVE)
    script = tmp_path / "predict.py"
    script.write_text(REBOUND[case].replace("{file}", file))
    return script


@pytest.mark.parametrize("case", sorted(REBOUND))
def test_a_rebound_model_is_followed_to_its_construction(tmp_path: Path, case: str) -> None:
    script = _rebound(tmp_path, case, FITS[case])
    ran = _run_script(script)
    assert ran.returncode == 0 and ran.stdout.strip() == "loaded", ran.stderr
    done = _check("--strict", "predict.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 load: 1 checked; 0 errors" in done.stderr
    script.write_text(REBOUND[case].replace("{file}", OTHER[FITS[case]]))
    before = _run_script(script)
    assert before.returncode != 0 and "Error(s) in loading state_dict" in before.stderr
    wrong = _check("predict.py", cwd=tmp_path)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "1 load: 1 checked; 1 error" in wrong.stderr
    assert "prefix" in wrong.stdout and "`module.`" in wrong.stdout
    fixed = _check("--fix", "predict.py", cwd=tmp_path)
    assert fixed.returncode == 0 and "fixed 1 problem" in fixed.stderr, fixed.stdout
    after = _run_script(script)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


async def test_a_model_moved_under_an_if_is_checked_in_the_editor(tmp_path: Path) -> None:
    script = _rebound(tmp_path, "cuda_if", "wrapped.pt")
    error, chosen = await _preferred_fix(tmp_path, script)
    assert error.severity == Severity.Error and "`module.`" in error.message
    after = _ran_fixed(script, chosen)
    assert after.returncode == 0 and after.stdout.strip() == "loaded", after.stderr


def test_a_model_wrapped_on_one_path_only_is_said_not_checked(tmp_path: Path) -> None:
    script = _rebound(tmp_path, "data_parallel", "plain.pt")
    script.write_text(
        script.read_text().replace(
            "model = nn.DataParallel(model)",
            "if torch.cuda.device_count() > 1:\n    model = nn.DataParallel(model)",
        )
    )
    assert _run_script(script).returncode == 0  # on this machine; not with two GPUs
    done = _check("predict.py", cwd=tmp_path)
    assert "`model` is wrapped on some paths only" in done.stdout, done.stdout
    assert "1 load: 0 checked, 1 not checked" in done.stderr
    assert _check("--strict", "predict.py", cwd=tmp_path).returncode == 1
