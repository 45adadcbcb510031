"""`torchls check` as the editor's equal (issue 16, items 8 and 9): loads it cannot check are
listed with their reason and counted, never a silent "0 errors"; the training-loop lint is
reported; `--diff`/`--fix` apply the safe fixes and the script then really runs; SARIF and
GitHub annotations for CI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from tests.conftest import ROOT
from tests.loadcheck.test_cli_check import MODEL, _check, _net


def _run_script(path: Path) -> subprocess.CompletedProcess[str]:
    """The user's script, really run (with torch), from its folder."""
    return subprocess.run(
        [sys.executable, path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_load_that_cannot_be_checked_is_listed_and_fails_with_strict(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    torch.save(_net().state_dict(), tmp_path / "good.pt")
    (tmp_path / "train.py").write_text(
        "import sys\nimport torch\nfrom model import Net\n\n"
        "path = sys.argv[1] if len(sys.argv) > 1 else 'good.pt'\n"
        "m = Net()\n"
        "m.load_state_dict(torch.load(path))\n"
        "twin = Net()\n"
        "twin.load_state_dict(m.state_dict())\n"
    )
    done = _check("train.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, lines  # the in-memory copy is counted, not flagged
    assert lines[0].startswith("train.py:7:1: information: torchls cannot check this load:")
    assert "`path`" in lines[0] and lines[0].endswith("[unchecked]")
    assert "2 loads: 0 checked, 1 not checked" in done.stderr
    assert "1 from memory (no file)" in done.stderr

    strict = _check("--strict", "train.py", cwd=tmp_path)
    assert strict.returncode == 1 and strict.stdout == done.stdout

    report = json.loads(_check("--format", "json", "train.py", cwd=tmp_path).stdout)
    assert (report["loads"], report["checked"], report["not_checked"]) == (2, 0, 1)
    assert report["in_memory"] == 1


def test_files_that_cannot_be_read_say_so(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\ndef f(:\n    pass\n")
    done = _check(".", cwd=tmp_path)
    assert "broken.py: not checked: a syntax error on line 2" in done.stdout
    assert "1 file (1 not read)" in done.stderr
    assert done.returncode == 0
    assert _check("--strict", ".", cwd=tmp_path).returncode == 1


TRAIN_LOOP = """import torch
from torch import nn

model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for inputs in [torch.randn(3, 4), torch.randn(3, 4)]:
    loss = model(inputs).sum()
    loss.backward()
    optimizer.step()
"""


def test_the_lint_the_editor_shows_is_reported(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(TRAIN_LOOP)
    done = _check("loop.py", cwd=tmp_path)
    assert done.returncode == 0  # a warning, not an error
    assert done.stdout.splitlines()[0].startswith("loop.py:6:5: warning: `optimizer.step()`")
    assert "[no-zero-grad]" in done.stdout
    assert "    fix: Clear the gradients first: optimizer.zero_grad()" in done.stdout
    assert "0 loads: 0 checked; 0 errors, 1 warning" in done.stderr

    # The lint's fix changes what the training does: only with --unsafe-fixes.
    assert "0 fixes would be applied" in _check("--diff", "loop.py", cwd=tmp_path).stderr
    diff = _check("--diff", "--unsafe-fixes", "loop.py", cwd=tmp_path)
    assert "+    optimizer.zero_grad()" in diff.stdout
    assert (tmp_path / "loop.py").read_text() == TRAIN_LOOP  # --diff changes nothing


PREFIXED = """import torch
from model import Net

m = Net()
m.load_state_dict(torch.load("dp.pt"))
print("loaded", sum(p.numel() for p in m.parameters()))
"""


def test_fix_applies_the_safe_fix_and_the_script_runs(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "dp.pt")
    script = tmp_path / "train.py"
    script.write_text(PREFIXED)
    before = _run_script(script)
    assert before.returncode != 0 and 'Missing key(s) in state_dict: "body.weight"' in before.stderr

    diff = _check("--diff", "train.py", cwd=tmp_path)
    assert diff.returncode == 0
    assert diff.stdout.startswith("--- a/train.py\n+++ b/train.py\n")
    assert '-m.load_state_dict(torch.load("dp.pt"))' in diff.stdout
    assert script.read_text() == PREFIXED

    fixed = _check("--fix", "train.py", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "fixed 1 problem" in fixed.stderr and fixed.stdout == ""
    assert "1 load: 1 checked; 0 errors" in fixed.stderr
    after = _run_script(script)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == f"loaded {sum(p.numel() for p in _net().parameters())}"


def test_fix_never_turns_off_weights_only(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL + "\n\nclass Scaler:\n    pass\n")
    script = tmp_path / "train.py"
    text = (
        "import torch\nfrom model import Net, Scaler\n\nm = Net()\n"
        "m.load_state_dict(torch.load('run.pt')['model'])\n"
    )
    script.write_text(text)
    saver = (
        "import torch, sys\nsys.path.insert(0, '.')\nfrom model import Scaler\n"
        "from torch import nn\n"
        "net = nn.ModuleDict({'body': nn.Linear(4, 8), 'head': nn.Linear(8, 10)})\n"
        "torch.save({'model': net.state_dict(), 'scaler': Scaler()}, 'run.pt')\n"
    )
    subprocess.run([sys.executable, "-c", saver], cwd=tmp_path, check=True, timeout=300)
    done = _check("train.py", cwd=tmp_path)
    assert done.returncode == 1 and "[weights-only]" in done.stdout, done.stdout
    assert "weights_only=False" in done.stdout  # offered to the editor user, by name
    fixed = _check("--fix", "train.py", cwd=tmp_path)
    assert script.read_text() == text  # the only fix trusts the file: not applied
    assert fixed.returncode == 1 and "fixed" not in fixed.stderr


def test_sarif_and_github_annotations(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "dp.pt")
    (tmp_path / "train.py").write_text(PREFIXED)
    (tmp_path / "loop.py").write_text(TRAIN_LOOP)
    done = _check("--format", "sarif", ".", cwd=tmp_path)
    assert done.returncode == 1
    sarif = json.loads(done.stdout)
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "torchls"
    results = {r["ruleId"]: r for r in run["results"]}
    keys = results["keys"]
    assert keys["level"] == "error" and "`module.`" in keys["message"]["text"]
    location = keys["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "train.py"
    assert (location["region"]["startLine"], location["region"]["startColumn"]) == (5, 1)
    assert results["no-zero-grad"]["level"] == "warning"
    assert {rule["id"] for rule in run["tool"]["driver"]["rules"]} == {"keys", "no-zero-grad"}

    github = _check("--format", "github", ".", cwd=tmp_path)
    lines = github.stdout.splitlines()
    error = next(line for line in lines if line.startswith("::error "))
    assert error.startswith("::error file=train.py,line=5,col=1,")
    assert "title=torchls keys::" in error
    assert any(line.startswith("::warning file=loop.py,line=6,") for line in lines)


def test_the_pre_commit_hook_runs_torchls_check(tmp_path: Path) -> None:
    """pre-commit runs the hook's `entry` with the staged Python files as arguments."""
    fields = {}
    for line in (ROOT / ".pre-commit-hooks.yaml").read_text().splitlines():
        key, _, value = line.strip().lstrip("- ").partition(": ")
        if value and not line.lstrip().startswith("#"):
            fields[key] = value
    assert fields["id"] == "torchls-check" and fields["types"] == "[python]"
    (tmp_path / "model.py").write_text(MODEL)
    torch.save({f"module.{k}": v for k, v in _net().state_dict().items()}, tmp_path / "dp.pt")
    (tmp_path / "train.py").write_text(PREFIXED)
    command = fields["entry"].split()
    assert command[0] == "torchls"
    executable = Path(sys.executable).parent / "torchls"  # the console script pip installs
    done = subprocess.run(
        [str(executable), *command[1:], "model.py", "train.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "train.py:5:1: error:" in done.stdout, done.stderr
