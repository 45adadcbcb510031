"""The worker's limits as the user meets them (issue 14, should fix): memory errors inside the
user's code, processes the user's code hides from the time-out, the status after a kill storm,
and hovers after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from tests.conftest import Session, lsp_session, process_alive
from tests.profiling.test_hover import _hover, _number, _open, _position

HOG = """\
from torch import nn


# torchls: input=(1, 4)
class Hog(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = []
        while True:  # gradually, as a model that keeps a dataset in memory would
            self.blocks.append(bytearray(16 * 1024 * 1024))


# torchls: input=(1, 4)
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""

HIDER = """\
import os
import time

from torch import nn


# torchls: input=(1, 4)
class Hider(nn.Module):
    def __init__(self):
        super().__init__()
        child = os.fork()
        if child == 0:
            os.setsid()  # out of the worker's process group and session
            if os.fork() == 0:
                with open({pidfile!r}, "w") as out:
                    out.write(str(os.getpid()))
                time.sleep(300)
            os._exit(0)
        os.waitpid(child, 0)
        while True:  # and the job itself never ends
            pass
"""

SMALL = """\
from torch import nn


# torchls: input=(1, 4)
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""


async def test_memory_error_in_user_code_names_the_limit_and_restarts_the_worker(
    tmp_path: Path,
) -> None:
    model = tmp_path / "hog.py"
    model.write_text(HOG)
    async with lsp_session({"worker": {"memoryLimitMB": 1536}}, workspace=tmp_path) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        uri = _open(session, model, HOG)
        small = await _hover(session, uri, _position(HOG, "class Small"))
        assert small is not None and _number(small, "Parameters") == 10
        before = (await session.command("torchls.test.runWorkerJob", "environment"))["value"]
        markdown = await _hover(session, uri, _position(HOG, "class Hog"))
        assert markdown is not None
        assert "ran out of memory (limit 1536 mb)" in markdown.lower(), markdown
        assert "memoryLimitMB" in markdown
        after = (await session.command("torchls.test.runWorkerJob", "environment"))["value"]
        assert after["pid"] != before["pid"]  # the 1.5 GB worker was not kept
        assert not process_alive(before["pid"])


async def test_a_setsid_grandchild_ends_with_the_timed_out_job(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    text = HIDER.format(pidfile=str(pidfile))
    model = tmp_path / "hider.py"
    model.write_text(text)
    grandchild = None
    try:
        async with lsp_session({"worker": {"timeoutSeconds": 5}}, workspace=tmp_path) as session:
            await session.wait_for_status(lambda s: s["state"] == "ready")
            uri = _open(session, model, text)
            # Bounded: a worker whose grandchild keeps its pipes open must not hang the test
            # (nor the hover) until the grandchild's sleep ends.
            try:
                markdown = await asyncio.wait_for(
                    _hover(session, uri, _position(text, "class Hider")), 60
                )
            except asyncio.TimeoutError:
                markdown = "no hover within 60 s of a 5 s time-out"
            grandchild = int(pidfile.read_text()) if pidfile.exists() else None
            if markdown is None or "timed out after 5 s" not in markdown:
                if grandchild is not None:  # it holds the worker's pipes: the session would hang
                    os.kill(grandchild, signal.SIGKILL)
                raise AssertionError(markdown)
            assert grandchild is not None, "the grandchild never started"
            deadline = time.monotonic() + 5
            while process_alive(grandchild) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not process_alive(grandchild), "the setsid grandchild outlived the time-out"
    finally:
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


async def _kill_worker(session: Session) -> int:
    value = (await session.command("torchls.test.runWorkerJob", "environment"))["value"]
    os.kill(value["pid"], signal.SIGKILL)
    return int(value["pid"])


async def test_after_a_kill_storm_the_status_follows_the_worker_back(tmp_path: Path) -> None:
    async with lsp_session(workspace=tmp_path) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        for _ in range(3):
            after = len(session.statuses)
            await _kill_worker(session)
            await session.wait_for_status(
                lambda s: s["state"] in ("restarting", "error"), after=after
            )
        error = await session.wait_for_status(lambda s: s["state"] == "error")
        assert error["worker_pid"] is None
        after = len(session.statuses)
        # The next request starts a worker again: the status must say so.
        served = await session.command("torchls.test.runWorkerJob", "environment")
        assert served["ok"]
        ready = await session.wait_for_status(lambda s: s["state"] == "ready", after=after)
        assert ready["worker_pid"] == served["value"]["pid"]
        status = await session.command("torchls.status")
        assert status["state"] == "ready" and status["worker_pid"] == served["value"]["pid"]


async def test_a_restart_does_not_make_an_unchanged_file_look_edited(tmp_path: Path) -> None:
    model = tmp_path / "small.py"
    model.write_text(SMALL)
    async with lsp_session(workspace=tmp_path) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        uri = _open(session, model, SMALL)
        first = await _hover(session, uri, _position(SMALL, "class Small"))
        assert first is not None and _number(first, "Parameters") == 10
        after = len(session.statuses)
        await _kill_worker(session)
        await session.wait_for_status(lambda s: s["state"] == "restarting", after=after)
        again = await _hover(session, uri, _position(SMALL, "class Small"))
        assert again is not None and _number(again, "Parameters") == 10
        assert "earlier version" not in again, again
