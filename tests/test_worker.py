"""The worker's safety nets, each proven by a job that really hangs, crashes or over-allocates."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from conftest import process_alive
from torchls.worker import protocol
from torchls.worker.client import WorkerClient, WorkerSettings


@pytest.fixture(autouse=True)
def _test_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHLS_WORKER_TEST_JOBS", "1")


def make_worker(tmp_path: Path, **overrides: object) -> WorkerClient:
    settings = {
        "command": (sys.executable,),
        "workspace": str(tmp_path),
        "allow_user_code": False,
        "timeout_seconds": 60.0,
        "memory_limit_mb": 4096,
        **overrides,
    }
    return WorkerClient(WorkerSettings(**settings))  # type: ignore[arg-type]


async def test_environment_reports_torch_and_friends(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    try:
        result = await worker.run("environment")
    finally:
        await worker.stop()
    assert result.ok, result.message
    env = result.value
    assert env["python"] == sys.executable
    assert env["libraries"]["torch"]["version"].startswith("2.13.0")
    assert "error" not in env["libraries"]["torch"]
    for name in ("thop", "transformers", "sklearn"):
        assert env["libraries"][name]["version"], f"{name} should be installed in the test env"
    assert env["memory_limit_mb"] == 4096


async def test_missing_torch_is_reported_not_fatal(tmp_path: Path, bare_python: str) -> None:
    worker = make_worker(tmp_path, command=(bare_python,))
    try:
        result = await worker.run("environment")
    finally:
        await worker.stop()
    assert result.ok, result.message
    assert result.value["libraries"]["torch"]["version"] is None
    assert result.value["python"].startswith(str(Path(bare_python).parent.parent))


async def test_hanging_job_is_killed_and_worker_restarts(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    try:
        first = await worker.run("test.echo", {"n": 1})
        assert first.ok
        hung_pid = worker.pid
        assert hung_pid is not None
        result = await worker.run("test.sleep", {"seconds": 3600}, timeout=1.5)
        assert not result.ok
        assert result.error_kind == protocol.ERROR_TIMEOUT
        assert result.message == "test.sleep timed out after 1.5 s; the worker was restarted"
        assert 1.4 < result.seconds < 10
        assert not process_alive(hung_pid)
        again = await worker.run("test.echo", {"n": 2})
        assert again.ok and again.value == {"n": 2}
        assert worker.pid not in (None, hung_pid)
    finally:
        await worker.stop()


async def test_timeout_kills_the_jobs_child_processes_too(tmp_path: Path) -> None:
    """A time-out kills the worker's whole process group (DataLoader workers, subprocesses)."""
    marker = tmp_path / "child.pid"
    worker = make_worker(tmp_path)
    try:
        await worker.run("test.echo")
        worker_pid = worker.pid
        assert worker_pid is not None
        # A grandchild in the worker's process group, as a user's DataLoader would start.
        child = await _spawn_in_group(worker_pid, marker)
        result = await worker.run("test.sleep", {"seconds": 3600}, timeout=1.0)
        assert result.error_kind == protocol.ERROR_TIMEOUT
        assert not process_alive(child)
    finally:
        await worker.stop()


async def _spawn_in_group(group_leader: int, marker: Path) -> int:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import os, time; os.setpgid(0, {group_leader}); "
        f"open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(600)",
    )
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.05)
    return proc.pid


@pytest.mark.parametrize(
    ("how", "expected"),
    [("segfault", "killed by SIGSEGV"), ("exit", "exit code 17")],
)
async def test_crash_is_reported_and_worker_restarts(
    tmp_path: Path, how: str, expected: str
) -> None:
    exits: list[str] = []
    worker = WorkerClient(make_worker(tmp_path).settings, on_exit=exits.append)
    try:
        result = await worker.run("test.crash", {"how": how})
        assert not result.ok
        assert result.error_kind == protocol.ERROR_CRASH
        assert (
            result.message
            == f"the worker crashed ({expected}) while running test.crash; it will be restarted"
        )
        again = await worker.run("environment")
        assert again.ok
        assert worker.starts == 2
        assert exits == [expected]
    finally:
        await worker.stop()


async def test_memory_limit_stops_an_over_allocating_job(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, memory_limit_mb=1024)
    try:
        small = await worker.run("test.allocate", {"megabytes": 64})
        assert small.ok and small.value == {"allocated_mb": 64}
        huge = await worker.run("test.allocate", {"megabytes": 4096})
        assert not huge.ok
        assert huge.error_kind == protocol.ERROR_MEMORY
        assert huge.message == "ran out of memory (limit 1024 MB)"
        again = await worker.run("test.allocate", {"megabytes": 64})
        assert again.ok, again.message
        assert worker.starts == 2  # the worker started afresh after the MemoryError
    finally:
        await worker.stop()


async def test_printing_to_stdout_does_not_corrupt_the_protocol(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    try:
        result = await worker.run("test.echo", {"text": "x" * 100_000})
    finally:
        await worker.stop()
    assert result.ok and result.value == {"text": "x" * 100_000}


async def test_workspace_modules_cannot_shadow_torch(tmp_path: Path) -> None:
    """The worker is started in the workspace folder, but a `torch.py` there is never imported."""
    sentinel = tmp_path / "pwned"
    (tmp_path / "torch.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    worker = make_worker(tmp_path, allow_user_code=False)
    try:
        result = await worker.run("environment")
    finally:
        await worker.stop()
    assert result.ok
    assert result.value["libraries"]["torch"]["version"].startswith("2.13.0")
    assert not sentinel.exists()


async def test_a_trusted_workspace_with_a_cuda_py_still_imports_torch(tmp_path: Path) -> None:
    """torch's own `import cuda` (for cuda-python) must not find the user's cuda.py."""
    (tmp_path / "cuda.py").write_text("raise SystemExit('the workspace cuda.py was imported')\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(2, 3)\n"
    )
    worker = make_worker(tmp_path, allow_user_code=True)
    try:
        environment = await worker.run("environment")
        ref = {"file": str(tmp_path / "net.py"), "module": "net", "sys_path": str(tmp_path)}
        keys = await worker.run(
            "state_dict", {"ref": {**ref, "qualname": "Net"}, "args": [], "kwargs": {}}
        )
    finally:
        await worker.stop()
    assert environment.ok and "error" not in environment.value["libraries"]["torch"]
    assert keys.ok, keys.message
    assert {k: v["shape"] for k, v in keys.value["keys"].items()} == {
        "fc.weight": [3, 2],
        "fc.bias": [3],
    }


async def test_unknown_job_and_bad_interpreter_are_one_line_errors(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    try:
        unknown = await worker.run("no.such.job")
    finally:
        await worker.stop()
    assert unknown.error_kind == protocol.ERROR_UNKNOWN_JOB

    missing = make_worker(tmp_path, command=("/nonexistent/python3",))
    result = await missing.run("environment")
    assert result.error_kind == protocol.ERROR_START
    assert result.message.startswith(
        "cannot start the worker: /nonexistent/python3 is not a runnable Python"
    )


async def test_test_jobs_are_off_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHLS_WORKER_TEST_JOBS")
    worker = make_worker(tmp_path)
    try:
        result = await worker.run("test.crash", {"how": "exit"})
    finally:
        await worker.stop()
    assert result.error_kind == protocol.ERROR_UNKNOWN_JOB


async def test_worker_exits_when_the_server_dies(tmp_path: Path) -> None:
    """A server killed with SIGKILL must not leave a busy worker behind."""
    import asyncio

    script = (
        "import asyncio, sys\n"
        "from torchls.worker.client import WorkerClient, WorkerSettings\n"
        "async def main():\n"
        "    w = WorkerClient(WorkerSettings(command=(sys.executable,),\n"
        f"                                    workspace={str(tmp_path)!r}))\n"
        "    await w.run('test.echo')\n"
        "    print(w.pid, flush=True)\n"
        "    await w.run('test.sleep', {'seconds': 3600}, timeout=3600)\n"
        "asyncio.run(main())\n"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    worker_pid = int((await asyncio.wait_for(server.stdout.readline(), 60)).decode())
    assert process_alive(worker_pid)
    server.send_signal(signal.SIGKILL)
    await server.wait()
    for _ in range(50):
        if not process_alive(worker_pid):
            break
        await asyncio.sleep(0.1)
    assert not process_alive(worker_pid)


async def test_background_jobs_yield_the_worker_to_waiting_ones(tmp_path: Path) -> None:
    # A hover warm-up queued first must not hold up the diagnostics of the file just opened.
    worker = make_worker(tmp_path)
    try:
        await worker.run("test.echo", {})  # started
        finished: list[str] = []

        async def job(name: str, background: bool) -> None:
            await worker.run("test.sleep", {"seconds": 0.3}, background=background)
            finished.append(name)

        running = asyncio.ensure_future(job("running", False))
        await asyncio.sleep(0.05)
        warm = asyncio.ensure_future(job("warm-up", True))
        await asyncio.sleep(0.05)
        diagnostics = asyncio.ensure_future(job("diagnostics", False))
        await asyncio.gather(running, warm, diagnostics)
        assert finished == ["running", "diagnostics", "warm-up"]
    finally:
        await worker.stop()
