"""The server, the checkpoint reader and the workers import nothing from the workspace, however
they are started (issue 14, must fix 1).

A workspace `uuid.py`, `secrets.py`, `argparse.py` or `packaging.py` was imported by the server
started as `python -m torchls serve` in the workspace (the form the README gave any LSP client),
before `initialize` and whatever the trust setting; a `packaging.py` also killed it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import ROOT
from tests.hardening.helpers import (
    SERVER_ROOT,
    VENV_BIN,
    hostile_env,
    hostile_workspace,
    started_session,
)

# Shadowed and handed over to the real module: a server that imports them keeps running, and
# the mark file says so. Names the server, the worker and the reader all import.
SHADOWED = ("uuid", "secrets", "argparse", "json", "logging", "typing", "pickle", "zipfile")
# Recorded and nothing else: importing it breaks whoever does.
KILLERS = ("packaging", "pygls", "lsprotocol", "cattrs", "attrs")

START_FORMS = {
    # (command, working directory is the workspace, PYTHONPATH before the server's own)
    "python -m torchls serve, in the workspace": (
        [sys.executable, "-m", "torchls", "serve"],
        True,
        False,
    ),
    "python path/to/torchls/__main__.py serve": (
        [sys.executable, str(ROOT / "server" / "torchls" / "__main__.py"), "serve"],
        True,
        False,
    ),
    "torchls serve with the workspace on PYTHONPATH": (
        [str(VENV_BIN / "torchls"), "serve"],
        True,
        True,
    ),
    "python -m torchls serve elsewhere, the workspace on PYTHONPATH": (
        [sys.executable, "-m", "torchls", "serve"],
        False,
        True,
    ),
}


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("form", list(START_FORMS))
async def test_no_start_form_imports_workspace_modules(
    tmp_path: Path, form: str, trusted: bool
) -> None:
    workspace = tmp_path / "project"
    workspace.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mark = hostile_workspace(workspace, SHADOWED, KILLERS)
    command, in_workspace, on_pythonpath = START_FORMS[form]
    parts = [str(workspace), SERVER_ROOT] if on_pythonpath else [SERVER_ROOT]
    env = hostile_env(PYTHONPATH=os.pathsep.join(parts))
    async with started_session(
        command,
        workspace,
        cwd=workspace if in_workspace else elsewhere,
        env=env,
        initialization_options={"trusted": trusted},
    ) as session:
        # The worker has started and imported torch: it too ran before user code could.
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        assert ready["trusted"] is trusted
        status = await session.command("torchls.status")
        assert status["heavy_modules_loaded"] == []
    imported = mark.read_text() if mark.exists() else ""
    assert imported == "", f"imported from the workspace ({form}):\n{imported}"


async def test_modules_python_imported_before_torchls_are_reported(tmp_path: Path) -> None:
    """Python itself imports `sitecustomize` from PYTHONPATH before any torchls code runs: the
    server cannot prevent it, so it says so at `initialize`; the worker it starts does not."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    mark = hostile_workspace(workspace, (), killers=("sitecustomize",))
    env = hostile_env(PYTHONPATH=os.pathsep.join([str(workspace), SERVER_ROOT]))
    async with started_session(
        [str(VENV_BIN / "torchls"), "serve"], workspace, cwd=tmp_path, env=env
    ) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        messages = [m.message for m in session.log_messages]
        server_pid = session.server_pid
    assert any(
        "imported these modules from the workspace" in m and "sitecustomize" in m for m in messages
    ), messages
    pids = {int(line.split()[1]) for line in mark.read_text().splitlines()}
    assert pids == {server_pid}  # not the worker


def _checkpoint(folder: Path) -> Path:
    import torch

    path = folder / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2, 3)}, path)
    return path


def test_reader_child_imports_nothing_from_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "project"
    workspace.mkdir()
    checkpoint = _checkpoint(workspace)
    mark = hostile_workspace(workspace, ("json", "gc", "zipfile", "struct", "collections"))
    done = subprocess.run(
        [str(VENV_BIN / "torchls"), "inspect", "--json", str(checkpoint)],
        cwd=workspace,
        env=hostile_env(PYTHONPATH=os.pathsep.join([str(workspace), SERVER_ROOT])),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"layer.weight"' in done.stdout
    assert not mark.exists(), mark.read_text()


def test_one_shot_worker_imports_nothing_from_the_workspace(tmp_path: Path) -> None:
    """`torchls downgrade` runs a one-shot worker in the folder it is started from."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    checkpoint = _checkpoint(workspace)
    mark = hostile_workspace(workspace, (*SHADOWED, "ctypes", "tempfile", "shutil"))
    done = subprocess.run(
        [str(VENV_BIN / "torchls"), "downgrade", str(checkpoint)],
        cwd=workspace,
        env=hostile_env(PYTHONPATH=os.pathsep.join([str(workspace), SERVER_ROOT])),
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not mark.exists(), mark.read_text()
