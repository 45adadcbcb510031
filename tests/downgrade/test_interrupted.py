"""An interrupted downgrade leaves no partial file and the original intact: cancelled in the
middle (as the editor's Cancel button does), the worker killed from outside, and Ctrl+C on the
CLI. The worker is held after writing its temporary file (TORCHLS_TEST_DOWNGRADE_PAUSE), so the
interruption lands at the worst moment, deterministically."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.downgrade.helpers import fingerprint, leftovers, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def paused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHLS_WORKER_TEST_JOBS", "1")
    monkeypatch.setenv("TORCHLS_TEST_DOWNGRADE_PAUSE", "60")


def _checkpoint(folder: Path) -> Path:
    source = folder / "big.pt"
    torch.save({f"layer{i}.weight": torch.randn(256, 256) for i in range(8)}, source)
    return source


async def _wait_for_temp(folder: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = [p for p in folder.iterdir() if ".tmp-" in p.name]
        if temps and temps[0].stat().st_size > 0:
            return temps[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never wrote its temporary file")


async def test_cancelling_mid_write_removes_the_partial_file(tmp_path: Path, paused: None) -> None:
    source = _checkpoint(tmp_path)
    before = fingerprint(source)
    task = asyncio.ensure_future(run(source))
    await _wait_for_temp(tmp_path)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before


def _worker_pids() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--one-shot" in command:
                found.append(int(entry.name))
    return found


async def test_a_worker_killed_from_outside_leaves_nothing(tmp_path: Path, paused: None) -> None:
    source = _checkpoint(tmp_path)
    task = asyncio.ensure_future(run(source))
    await _wait_for_temp(tmp_path)
    workers = _worker_pids()
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    outcome = await asyncio.wait_for(task, 60)
    assert not outcome.ok and outcome.reason == "error"
    assert "the worker stopped before it finished" in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_cli_leaves_nothing(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl+C, and SIGTERM (`kill`, a closed terminal), which once left a 453 MB partial file."""
    source = _checkpoint(tmp_path)
    before = fingerprint(source)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "server"),
        TORCHLS_WORKER_TEST_JOBS="1",
        TORCHLS_TEST_DOWNGRADE_PAUSE="60",
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "torchls", "downgrade", str(source)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        asyncio.run(_wait_for_temp(tmp_path))
        cli.send_signal(stop)
        _out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130 and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before
    assert _worker_pids() == []  # the worker went with it
