"""The `torchls` command line."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchls import __version__
from torchls.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchls", *args], capture_output=True, text=True, timeout=120
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"torchls {__version__}"


COMMANDS = ["serve", "doctor", "inspect", "diff", "profile", "check", "downgrade", "convert"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: torchls {command}" in capsys.readouterr().out


def test_help_lists_every_command_with_a_line_saying_what_it_does() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    listed = re.findall(r"^    (\w+)(?: +\S|$)", result.stdout, flags=re.MULTILINE)
    assert listed == COMMANDS
    # ... and no command the parser knows is missing from the list above.
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(actions[0].choices) == sorted(COMMANDS)


def test_downgrade_of_a_folder_without_a_model_says_why_in_one_line() -> None:
    result = run_cli("downgrade", "examples")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("torchls downgrade: ") and result.stderr.count("\n") == 1
    assert "without a Hugging Face model" in result.stderr


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: torchls" in result.stderr


def test_serve_rejects_a_bad_tcp_address() -> None:
    result = run_cli("serve", "--tcp", "localhost")
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr


def test_doctor_reports_the_worker_environment() -> None:
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "ready"
    assert report["libraries"]["torch"]["version"].startswith("2.13.0")
    assert report["python"] == sys.executable


def test_doctor_on_an_interpreter_without_torch(bare_python: str) -> None:
    result = run_cli("doctor", "--python", bare_python)
    assert result.returncode == 1
    assert f"torch not found in {bare_python}" in result.stdout


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch
    from torch import nn

    path = tmp_path_factory.mktemp("ckpt") / "train.ckpt"
    model = nn.Linear(4, 2)
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return str(path)


def test_inspect_prints_tensors_candidates_and_verdict(training_checkpoint: str) -> None:
    result = run_cli("inspect", training_checkpoint)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "format        torch zip archive" in out
    assert "weights_only  accepted" in out
    assert "state-dict candidates (largest first)\n  ['state_dict']" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert lines["weight"][1:5] == ["float32", "[2,", "4]", "8"]
    assert lines["bias"][1:4] == ["float32", "[2]", "2"]


def test_inspect_json_schema(training_checkpoint: str) -> None:
    result = run_cli("inspect", training_checkpoint, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "torchls.inspect/1"
    assert report["format"] == "torch-zip"
    assert report["candidates"][0]["path"] == "['state_dict']"
    weight = next(t for t in report["tensors"] if t["key"] == "weight")
    assert weight == {
        "container": "['state_dict']",
        "key": "weight",
        "dtype": "float32",
        "shape": [2, 4],
        "numel": 8,
        "bytes": 32,
        "kind": "tensor",
        "device": "cpu",
    }
    assert report["totals"]["by_dtype"]["float32"] == {"tensors": 2, "elements": 10, "bytes": 40}
    assert report["weights_only"]["accepted"] is True


def test_inspect_unreadable_file_exit_code_1(tmp_path: Path) -> None:
    path = tmp_path / "page.pt"
    path.write_text("<html><body>Sign in to download</body></html>")
    result = run_cli("inspect", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"torchls inspect: {path}: an HTML page saved under a checkpoint's name "
        "(a failed download?), not a checkpoint"
    )


def test_inspect_usage_error_exit_code_2() -> None:
    assert run_cli("inspect").returncode == 2
