"""The language server end to end, over stdio, with VS Code's client capabilities."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import INITIALIZE_REQUEST, ROOT, lsp_frame, lsp_session, process_alive, server_env
from torchls import __version__


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def test_initialize_answers_and_the_worker_reports_torch() -> None:
    async with lsp_session() as session:
        info = session.init_result.server_info
        assert info is not None and info.name == "torchls" and info.version == __version__
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        assert ready["torch"].startswith("2.13.0")
        assert ready["message"] == f"torch {ready['torch']} ({sys.executable})"
        assert ready["trusted"] is True and ready["user_code_allowed"] is True
        status = await session.command("torchls.status")
        assert status["worker_pid"] is not None and status["worker_pid"] != session.server_pid


async def test_the_server_process_never_imports_torch() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        status = await session.command("torchls.status")
        assert status["heavy_modules_loaded"] == []
        # Independently of what the server says: no torch shared library in its address space,
        # while the worker, which did import torch, has one.
        assert "libtorch" not in mapped_libraries(session.server_pid)
        assert "libtorch" in mapped_libraries(status["worker_pid"])


async def test_server_keeps_answering_while_a_job_hangs() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        before = await session.command("torchls.status")
        hang = asyncio.ensure_future(
            session.command("torchls.test.runWorkerJob", "test.sleep", {"seconds": 3600}, 3)
        )
        await asyncio.sleep(0.5)
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            status = await session.command("torchls.status")
            latencies.append(time.perf_counter() - started)
            assert status["state"] == "ready"
        assert max(latencies) < 0.5, latencies
        assert not hang.done()
        result = await hang
        assert result["ok"] is False and result["error_kind"] == "timeout"
        assert result["message"] == "test.sleep timed out after 3 s; the worker was restarted"
        assert not process_alive(before["worker_pid"])
        echo = await session.command("torchls.test.runWorkerJob", "test.echo", {"a": 1})
        assert echo["ok"] and echo["value"] == {"a": 1}


async def test_a_crash_is_shown_then_the_worker_restarts() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        seen = len(session.statuses)
        result = await session.command(
            "torchls.test.runWorkerJob", "test.crash", {"how": "segfault"}
        )
        assert result["error_kind"] == "crash"
        assert "killed by SIGSEGV" in result["message"]
        restarting = await session.wait_for_status(lambda s: s["state"] == "restarting", after=seen)
        assert restarting["message"] == "the worker ended (killed by SIGSEGV); restarting it"
        ready = await session.wait_for_status(lambda s: s["state"] == "ready", after=seen)
        assert ready["last_worker_exit"] == "killed by SIGSEGV"
        assert ready["worker_starts"] == 2


async def test_killing_the_worker_by_hand_is_survived() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        first = (await session.command("torchls.status"))["worker_pid"]
        seen = len(session.statuses)
        os.kill(first, signal.SIGKILL)
        restarting = await session.wait_for_status(lambda s: s["state"] == "restarting", after=seen)
        assert "killed by SIGKILL" in restarting["message"]
        ready = await session.wait_for_status(lambda s: s["state"] == "ready", after=seen)
        assert ready["worker_pid"] not in (None, first)
        echo = await session.command("torchls.test.runWorkerJob", "test.echo", {"b": 2})
        assert echo["ok"]


async def test_memory_hog_fails_cleanly_and_the_server_carries_on() -> None:
    options = {"worker": {"memoryLimitMB": 1536}}
    async with lsp_session(options) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        result = await session.command(
            "torchls.test.runWorkerJob", "test.allocate", {"megabytes": 8192}
        )
        assert result["error_kind"] == "memory"
        assert result["message"] == "ran out of memory (limit 1536 MB)"
        status = await session.command("torchls.status")
        assert status["state"] == "ready"
        env = await session.command("torchls.test.runWorkerJob", "environment")
        assert env["ok"] and env["value"]["memory_limit_mb"] == 1536


async def test_untrusted_workspace_runs_no_user_code() -> None:
    async with lsp_session({"trusted": False}) as session:
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        assert ready["trusted"] is False and ready["user_code_allowed"] is False
        env = await session.command("torchls.test.runWorkerJob", "environment")
        assert env["value"]["user_code_allowed"] is False


async def test_allow_user_code_setting_turns_user_code_off_in_a_trusted_workspace() -> None:
    async with lsp_session({"trusted": True, "allowUserCode": False}) as session:
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        assert ready["trusted"] is True and ready["user_code_allowed"] is False


async def test_bad_initialization_options_are_logged_and_replaced() -> None:
    options = {
        "trusted": "yes",
        "worker": {"timeoutSeconds": -4, "memoryLimitMB": "lots"},
        "colour": 1,
    }
    async with lsp_session(options) as session:
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        assert ready["trusted"] is False  # not a boolean: no workspace code runs
        messages = [m.message for m in session.log_messages]
        assert any("trusted must be true or false" in m for m in messages), messages
        assert any("worker.timeoutSeconds must be a number" in m for m in messages), messages
        assert any("worker.memoryLimitMB must be a number" in m for m in messages), messages
        assert any("colour is not a torchls option" in m for m in messages), messages


async def test_initialization_options_that_are_not_an_object() -> None:
    async with lsp_session(["not", "an", "object"]) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        assert any("must be an object" in m.message for m in session.log_messages)


async def test_missing_torch_is_a_clear_state(bare_python: str) -> None:
    async with lsp_session({"worker": {"interpreter": [bare_python]}}) as session:
        missing = await session.wait_for_status(lambda s: s["state"] == "missing-torch")
        assert missing["message"] == f"torch not found in {bare_python}"
        assert missing["torch"] is None


async def test_unrunnable_worker_interpreter_is_an_error_state() -> None:
    async with lsp_session({"worker": {"interpreter": "/nonexistent/python"}}) as session:
        error = await session.wait_for_status(lambda s: s["state"] == "error")
        assert error["message"].startswith("cannot start the worker: /nonexistent/python")


async def test_restart_worker_command() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        first = (await session.command("torchls.status"))["worker_pid"]
        status = await session.command("torchls.restartWorker")
        assert status["state"] == "ready"
        assert status["worker_pid"] not in (None, first)
        assert not process_alive(first)


async def test_shutdown_stops_the_worker() -> None:
    async with lsp_session() as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        worker = (await session.command("torchls.status"))["worker_pid"]
        server = session.client._server
        assert server is not None
        await session.client.shutdown_session()
        assert server.returncode == 0
        for _ in range(50):
            if not process_alive(worker):
                break
            await asyncio.sleep(0.1)
        assert not process_alive(worker)
        session.client.capabilities = None  # already shut down; the context manager skips it


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tcp_transport_for_debugging() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "torchls", "serve", "--tcp", f"127.0.0.1:{port}"],
        env=server_env(),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with connection:
            connection.sendall(lsp_frame(INITIALIZE_REQUEST))
            connection.settimeout(30)
            received = b""
            while b'"serverInfo"' not in received:
                chunk = connection.recv(65536)
                assert chunk, received
                received += chunk
            assert b'"name":"torchls"' in received.replace(b" ", b"")
    finally:
        server.terminate()
        server.wait(10)
