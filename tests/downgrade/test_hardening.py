"""Issue 14's downgrade cases from the adversarial run: `$/cancelRequest` and frozen workers,
two downgrades racing for one output, and bad output locations and option values.

The worker is held after writing its temporary file (TORCHLS_TEST_DOWNGRADE_PAUSE), so each
interruption lands at the worst moment, deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from tests.conftest import Session, lsp_session, server_env
from tests.downgrade.helpers import fingerprint, is_legacy, leftovers, one_shot_workers, run

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "torchls.downgradeCheckpoint"


def _checkpoint(folder: Path, name: str = "big.pt") -> Path:
    source = folder / name
    torch.save({f"layer{i}.weight": torch.randn(128, 128) for i in range(4)}, source)
    return source


async def _wait_for_temp(folder: Path, timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = [p for p in folder.iterdir() if ".tmp-" in p.name]
        if temps and temps[0].is_file() and temps[0].stat().st_size > 0:
            return temps[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the worker never wrote its temporary file")


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _request(session: Session, msg_id: str, *arguments: Any) -> asyncio.Future[Any]:
    """executeCommand with an id the test knows, so it can send `$/cancelRequest` for it."""
    future = session.client.protocol.send_request(
        types.WORKSPACE_EXECUTE_COMMAND,
        types.ExecuteCommandParams(command=COMMAND, arguments=list(arguments)),
        msg_id=msg_id,
    )
    return asyncio.wrap_future(future)


def _cancel(session: Session, msg_id: str) -> None:
    session.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))


# -- $/cancelRequest and frozen workers ----------------------------------------------------------


async def test_cancel_request_stops_the_worker_and_nothing_is_written(tmp_path: Path) -> None:
    """It answered "canceled" at once while the worker went on and wrote the output."""
    source = _checkpoint(tmp_path)
    before = fingerprint(source)
    env = server_env(TORCHLS_TEST_DOWNGRADE_PAUSE="3")
    async with lsp_session(workspace=tmp_path, env=env) as session:
        answer = _request(session, "downgrade-1", source.as_uri(), {"notify": False})
        await _wait_for_temp(tmp_path)
        written_at = time.monotonic()
        _cancel(session, "downgrade-1")
        with pytest.raises(JsonRpcException) as raised:
            await asyncio.wait_for(answer, 30)
        assert raised.value.code == -32800  # RequestCancelled
        # Answered only once the worker is gone: nothing can still write.
        assert one_shot_workers(session.server_pid) == []
        # Past the moment the paused worker would have gone on to write the output.
        await asyncio.sleep(max(0.0, written_at + 5 - time.monotonic()))
        names = sorted(p.name for p in tmp_path.iterdir())
        status = await session.command("torchls.status")
    assert names == ["big.pt"] and fingerprint(source) == before
    assert status["state"] != "error"


async def test_cancel_request_kills_a_frozen_worker(tmp_path: Path) -> None:
    """A SIGSTOPped worker never answered, and survived the cancellation."""
    source = _checkpoint(tmp_path)
    before = fingerprint(source)
    env = server_env(TORCHLS_TEST_DOWNGRADE_PAUSE="60")
    frozen: list[int] = []
    try:
        async with lsp_session(workspace=tmp_path, env=env) as session:
            answer = _request(session, "downgrade-2", source.as_uri(), {"notify": False})
            await _wait_for_temp(tmp_path)
            frozen = one_shot_workers(session.server_pid)
            assert len(frozen) == 1
            os.kill(frozen[0], signal.SIGSTOP)
            _cancel(session, "downgrade-2")
            with pytest.raises(JsonRpcException) as raised:
                await asyncio.wait_for(answer, 20)
            assert raised.value.code == -32800
            assert one_shot_workers(session.server_pid) == []
    finally:
        _kill(frozen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before


async def test_a_frozen_worker_is_stopped_at_the_job_timeout(tmp_path: Path) -> None:
    """With no one to cancel it, a frozen worker held the command (and its progress) forever;
    the editor's job timeout (worker.timeoutSeconds) now bounds it."""
    source = _checkpoint(tmp_path)
    before = fingerprint(source)
    env = server_env(TORCHLS_TEST_DOWNGRADE_PAUSE="120")
    frozen: list[int] = []
    try:
        async with lsp_session(
            workspace=tmp_path, env=env, initialization_options={"worker": {"timeoutSeconds": 8}}
        ) as session:
            started = time.monotonic()
            answer = asyncio.ensure_future(session.command(COMMAND, source.as_uri()))
            await _wait_for_temp(tmp_path)
            frozen = one_shot_workers(session.server_pid)
            assert len(frozen) == 1
            os.kill(frozen[0], signal.SIGSTOP)
            result = await asyncio.wait_for(answer, 60)
            took = time.monotonic() - started
            assert one_shot_workers(session.server_pid) == []
    finally:
        _kill(frozen)
    assert not result["ok"] and result["reason"] == "timeout", result
    assert "within 8 s" in result["message"] and "timeoutSeconds" in result["message"]
    assert "\n" not in result["message"] and took < 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before


def test_the_cli_stops_a_hanging_worker_at_its_timeout(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "server"),
        TORCHLS_WORKER_TEST_JOBS="1",
        TORCHLS_TEST_DOWNGRADE_PAUSE="120",
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "torchls", "downgrade", str(source), "--timeout", "6"],
        env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 60
    assert "did not finish within 6 s" in done.stderr and "--timeout" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]


# -- two downgrades, one output ------------------------------------------------------------------


@pytest.fixture
def paused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHLS_WORKER_TEST_JOBS", "1")
    monkeypatch.setenv("TORCHLS_TEST_DOWNGRADE_PAUSE", "3")


async def test_two_downgrades_to_one_output_the_second_refuses(
    tmp_path: Path, paused: None
) -> None:
    """Both reported success and the second silently replaced the first."""
    first_source = _checkpoint(tmp_path, "a.pt")
    second_source = tmp_path / "b.pt"
    torch.save({"other": torch.zeros(3)}, second_source)
    out = tmp_path / "out.pt"
    first = asyncio.ensure_future(run(first_source, output=out))
    await _wait_for_temp(tmp_path)
    second = await asyncio.wait_for(run(second_source, output=out), 30)
    assert not second.ok and second.reason == "busy"
    assert str(out) in second.message and "another downgrade" in second.message
    done = await asyncio.wait_for(first, 60)
    assert done.ok
    assert sorted(torch.load(out, weights_only=True)) == [f"layer{i}.weight" for i in range(4)]
    assert leftovers(tmp_path) == []
    # Once the first is done, the usual question: the output exists.
    again = await run(second_source, output=out)
    assert again.reason == "exists" and is_legacy(out)


def test_the_cli_refuses_an_output_the_editor_is_writing(tmp_path: Path, paused: None) -> None:
    source = _checkpoint(tmp_path)

    async def both() -> tuple[Any, subprocess.CompletedProcess[str]]:
        editor = asyncio.ensure_future(run(source))
        await _wait_for_temp(tmp_path)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "torchls", "downgrade", str(source), "--force"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return await asyncio.wait_for(editor, 60), cli

    outcome, cli = asyncio.run(both())
    assert cli.returncode == 1 and "another downgrade" in cli.stderr, cli.stderr
    assert outcome.ok and is_legacy(tmp_path / "big.legacy.pt") and leftovers(tmp_path) == []


async def test_an_output_made_during_the_run_is_never_replaced(
    tmp_path: Path, paused: None
) -> None:
    """Something else (not torchls) creates the output while the worker runs: it is kept."""
    source = _checkpoint(tmp_path)
    out = tmp_path / "big.legacy.pt"
    task = asyncio.ensure_future(run(source))
    await _wait_for_temp(tmp_path)
    out.write_text("written by someone else")
    outcome = await asyncio.wait_for(task, 60)
    assert not outcome.ok and outcome.reason == "exists" and str(out) in outcome.message
    assert out.read_text() == "written by someone else" and leftovers(tmp_path) == []


# -- bad output locations and option values ------------------------------------------------------


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process may not write in: as root (which ignores file modes), sysfs."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder


async def test_an_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    """It was reason "internal" with the worker's raw PermissionError."""
    source = _checkpoint(tmp_path, "m.pt")
    folder = _unwritable(tmp_path)
    outcome = await run(source, output=folder / "m.legacy.pt")
    assert not outcome.ok and outcome.reason == "error"
    assert str(folder) in outcome.message and "choose another output" in outcome.message
    assert "Errno" not in outcome.message and "\n" not in outcome.message
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    cli = subprocess.run(
        [sys.executable, "-m", "torchls", "downgrade", str(source), "-o", str(folder / "m.pt")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1
    assert str(folder) in cli.stderr and "Errno" not in cli.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.pt"]


BAD_OPTIONS = [
    ({"suffix": "leg\x00acy"}, "suffix"),
    ({"suffix": "a/b"}, "suffix"),
    ({"suffix": ".."}, "suffix"),
    ({"suffix": 5}, "suffix"),
    ({"suffix": "x" * 300}, "suffix"),
    ({"output": "/tmp/out\x00.pt"}, "output"),
    ({"output": "/no/such/folder/out.pt"}, "/no/such/folder"),
    ({"output": "relative.pt"}, "output"),
]


async def test_bad_options_are_refused_in_one_line_through_the_server(tmp_path: Path) -> None:
    """NUL in suffix or output was a traceback (pygls' internal error) instead of an answer."""
    source = _checkpoint(tmp_path, "m.pt")
    async with lsp_session(workspace=tmp_path) as session:
        results = [
            await session.command(COMMAND, source.as_uri(), {**options, "notify": False})
            for options, _named in BAD_OPTIONS
        ]
        nul_uri = await session.command(COMMAND, source.as_uri() + "%00", {"notify": False})
        logged = [m.message for m in session.log_messages]
    for result, (options, named) in zip(results, BAD_OPTIONS, strict=True):
        assert not result["ok"] and result["reason"] == "error", (options, result)
        assert named in result["message"] and "\n" not in result["message"], (options, result)
    assert not nul_uri["ok"] and "\n" not in nul_uri["message"]
    assert not any("Traceback" in m for m in logged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--suffix", "a/b"], "suffix"),
        (["--suffix", ".."], "suffix"),
        (["--suffix", "x" * 300], "suffix"),
        (["-o", "/no/such/folder/out.pt"], "/no/such/folder"),
    ],
    ids=["separator", "dotdot", "too-long", "missing-folder"],
)
def test_bad_options_are_refused_in_one_line_by_the_cli(
    tmp_path: Path, arguments: list[str], named: str
) -> None:
    source = _checkpoint(tmp_path, "m.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    cli = subprocess.run(
        [sys.executable, "-m", "torchls", "downgrade", str(source), *arguments],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 1 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert named in cli.stderr and "Traceback" not in cli.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
