"""The `torchls` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchls import __version__
from torchls.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchls", *args], capture_output=True, text=True, timeout=120
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"torchls {__version__}"


@pytest.mark.parametrize("command", ["serve", "check", "profile", "inspect", "downgrade", "doctor"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: torchls {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["check", "profile", "inspect", "downgrade"])
def test_planned_commands_say_so_instead_of_faking_output(command: str) -> None:
    result = run_cli(command, "examples")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith(f"torchls {command}: not available yet")


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
