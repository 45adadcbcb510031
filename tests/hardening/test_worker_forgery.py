"""Answers are bound to their job: lines the user's code writes to the worker's answer channel
are never taken for results (issue 14, must fix 6).

User code in a trusted workspace that wrote well-formed answers to the inherited pipes had them
accepted as later jobs' results (a KeyError logged, an empty hover cached).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from tests.conftest import lsp_session, process_alive
from tests.profiling.test_hover import _hover, _number, _open, _position

from torchls.worker import protocol
from torchls.worker.client import WorkerClient, WorkerSettings

FORGER = """\
import os

from torch import nn


def _forge():
    # What hostile code does: find the pipes in /proc/self/fd and write answers to all of
    # them, for this request and every later one.
    lines = "".join('{"id": %d, "ok": true, "result": {}}\\n' % n for n in range(1, 300))
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name).startswith("pipe:"):
                os.write(int(name), lines.encode())
        except OSError:
            pass


# torchls: input=(1, 4)
class Forger(nn.Module):
    def __init__(self):
        super().__init__()
        _forge()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


# torchls: input=(1, 8)
class Honest(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x)
"""


async def test_answers_forged_by_user_code_are_never_results(tmp_path: Path) -> None:
    model = tmp_path / "forger.py"
    model.write_text(FORGER)
    text = FORGER
    async with lsp_session(workspace=tmp_path) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        uri = _open(session, model, text)
        forged = await _hover(session, uri, _position(text, "class Forger"))
        assert forged is not None
        assert "Parameters" not in forged
        assert "none of its answer was used" in forged
        # The next jobs run in a fresh worker: the real count, not a forged empty result.
        honest = await _hover(session, uri, _position(text, "class Honest"))
        assert honest is not None and _number(honest, "Parameters") == 8 * 3 + 3
        # Nothing of the forged exchange was cached: asking again asks the worker again.
        again = await _hover(session, uri, _position(text, "class Forger"))
        assert again is not None and "none of its answer was used" in again
        status = await session.command("torchls.status")
        assert status["worker_pid"] is not None


@pytest.fixture(autouse=True)
def _test_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHLS_WORKER_TEST_JOBS", "1")


def _worker(tmp_path: Path, exits: list[str]) -> WorkerClient:
    settings = WorkerSettings(
        command=(sys.executable,), workspace=str(tmp_path), timeout_seconds=60
    )
    return WorkerClient(settings, on_exit=exits.append)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (json.dumps({"id": 1, "ok": True, "result": {}}), "without this job's token"),
        (json.dumps({"id": 1, "token": "guess", "ok": True, "result": {}}), "token"),
        ('{"id": 1, "ok": tru', "unreadable"),
        ("[1, 2, 3]", "unreadable"),
        (json.dumps({"event": "progress", "message": "50%"}), "token"),
    ],
    ids=["no token", "wrong token", "truncated", "not an object", "an event"],
)
async def test_a_forged_line_during_a_job_fails_it_and_restarts_the_worker(
    tmp_path: Path, line: str, problem: str
) -> None:
    exits: list[str] = []
    worker = _worker(tmp_path, exits)
    try:
        assert (await worker.run("environment")).ok
        first_pid = worker.pid
        assert first_pid is not None
        # The forging job gets id 2; its line arrives before its genuine answer.
        result = await worker.run("test.forge", {"lines": [line.replace('"id": 1', '"id": 2')]})
        assert not result.ok
        assert result.error_kind == protocol.ERROR_PROTOCOL
        assert problem in result.message and "\n" not in result.message
        assert "it was restarted" in result.message
        await asyncio.sleep(0.2)
        assert not process_alive(first_pid)
        after = await worker.run("test.echo", {"x": 1})
        assert after.ok and after.value == {"x": 1}
        assert worker.pid not in (None, first_pid)
    finally:
        await worker.stop()


async def test_an_answer_written_between_jobs_kills_the_worker(tmp_path: Path) -> None:
    exits: list[str] = []
    worker = _worker(tmp_path, exits)
    try:
        forged = [json.dumps({"id": n, "ok": True, "result": {"forged": True}}) for n in range(9)]
        result = await worker.run("test.forge", {"lines": forged, "delay": 0.3})
        assert result.ok  # its own answer came first, with the token
        first_pid = worker.pid
        assert first_pid is not None
        for _ in range(50):
            if exits:
                break
            await asyncio.sleep(0.1)
        assert exits == ["killed: it wrote a line while no job was running"]
        assert not process_alive(first_pid)
        later = await worker.run("test.echo", {"x": 2})
        assert later.ok and later.value == {"x": 2}  # not {"forged": True}
    finally:
        await worker.stop()


async def test_the_token_is_not_in_what_a_job_is_given(tmp_path: Path) -> None:
    worker = _worker(tmp_path, [])
    try:
        echoed = await worker.run("test.echo", {"x": 3, "token": "mine"})
    finally:
        await worker.stop()
    assert echoed.ok and echoed.value == {"x": 3}
