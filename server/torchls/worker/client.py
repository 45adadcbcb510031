"""The language server's handle on the worker process.

Imported by the server, so it must not import torch (or anything heavy). It starts the worker
lazily, sends it one job at a time, enforces each job's time limit by killing the worker's whole
process group, and notices when the worker dies so that the server can say so and restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.boundary import worker_environment
from torchls.worker import protocol

log = logging.getLogger(__name__)

BOOT_SCRIPT = str(Path(__file__).with_name("boot.py"))


def worker_argv(
    command: tuple[str, ...],
    memory_limit_mb: int,
    workspace: str | None,
    allow_user_code: bool,
    *extra: str,
) -> list[str]:
    """The command line of a worker process (the long-lived one, or a one-shot with
    `--one-shot` in `extra`)."""
    argv = [*command, BOOT_SCRIPT, *extra, "--memory-limit-mb", str(memory_limit_mb)]
    if workspace:
        argv += ["--workspace", workspace]
    if allow_user_code:
        argv.append("--allow-user-code")
    return argv


# Job results (per-layer tables, key lists) can be large; asyncio's default line limit is 64 KiB.
_LINE_LIMIT = 256 * 1024 * 1024


@dataclass(frozen=True)
class WorkerSettings:
    """How to start the worker. `command` is the interpreter, with any leading arguments."""

    command: tuple[str, ...]
    workspace: str | None = None
    allow_user_code: bool = True
    timeout_seconds: float = 30.0
    startup_timeout_seconds: float = 60.0
    memory_limit_mb: int = 8192
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class JobResult:
    ok: bool
    value: Any = None
    error_kind: str | None = None
    message: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "value": self.value,
            "error_kind": self.error_kind,
            "message": self.message,
            "seconds": round(self.seconds, 4),
        }


class WorkerStartError(Exception):
    pass


class _TurnLock:
    """A lock whose waiters go by priority (0 first), then in arrival order."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = 0

    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, waiter in self._waiters if not waiter.done())

    @contextlib.asynccontextmanager
    async def turn(self, priority: int = 0) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def __aenter__(self) -> None:
        await self._acquire(0)

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._held and not self._waiters:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        heapq.heappush(self._waiters, (priority, self._arrivals, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed the lock just as we were cancelled: pass it on
            else:
                self._waiters = [w for w in self._waiters if w[2] is not waiter]
                heapq.heapify(self._waiters)
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the lock passes on, still held
                return
        self._held = False


def describe_exit(returncode: int | None) -> str:
    """'killed by SIGSEGV' or 'exit code 3': how a process ended, in words."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Process:
    proc: asyncio.subprocess.Process
    intentional_exit: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class WorkerClient:
    """Runs jobs in the worker, one at a time, each under a time limit.

    `on_exit` is called with a one-line description whenever the worker ends without being
    asked to (crash, `os._exit`, out of memory, killed from outside).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_exit = on_exit
        self._lock = _TurnLock()
        self._current: _Process | None = None
        self._next_id = 0
        self.starts = 0
        self.last_exit: str | None = None
        self._closed = False

    @property
    def jobs_waiting(self) -> int:
        """Jobs queued behind the one running: bounded by the callers (one per document)."""
        return self._lock.waiting

    @property
    def pid(self) -> int | None:
        current = self._current
        if current is None or current.proc.returncode is not None:
            return None
        return current.proc.pid

    async def run(
        self,
        job: str,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> JobResult:
        """Run `job` and return its result; never raises for the worker's failures.

        The job itself is shielded from the caller's cancellation: a cancelled LSP request must
        not leave the worker half-way through a job with nobody reading its answer. A
        `background` job (a hover warm-up) waits until no other job is waiting: what the user
        is looking at (a hover, the diagnostics of the file just opened) goes first.
        """
        task = asyncio.ensure_future(
            self._run_locked(job, dict(params or {}), timeout, 1 if background else 0)
        )
        return await asyncio.shield(task)

    async def restart(self) -> None:
        async with self._lock:
            await self._kill()

    async def stop(self) -> None:
        """End the worker now, even in the middle of a job (which then fails as cancelled);
        jobs asked for afterwards fail at once instead of starting a new worker."""
        self._closed = True
        current = self._current
        if self._lock.locked() and current is not None and current.proc.returncode is None:
            current.intentional_exit = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(current.proc.pid, signal.SIGKILL)
        async with self._lock:
            current = self._current
            if current is None:
                return
            current.intentional_exit = True
            if current.proc.stdin is not None:
                with contextlib.suppress(Exception):
                    current.proc.stdin.close()
            try:
                await asyncio.wait_for(current.proc.wait(), 2.0)
            except asyncio.TimeoutError:
                await self._kill()
            self._current = None

    async def _run_locked(
        self, job: str, params: dict[str, Any], timeout: float | None, priority: int = 0
    ) -> JobResult:
        async with self._lock.turn(priority):
            started = time.monotonic()
            if self._closed:
                return JobResult(
                    False, error_kind=protocol.ERROR_CANCELLED, message="the worker was stopped"
                )
            try:
                current = await self._ensure_started()
            except WorkerStartError as exc:
                return JobResult(False, error_kind=protocol.ERROR_START, message=str(exc))
            limit = self.settings.timeout_seconds if timeout is None else timeout
            self._next_id += 1
            request_id = self._next_id
            proc = current.proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(protocol.encode({"id": request_id, "job": job, "params": params}))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return await self._crashed(current, job, started)
            try:
                while True:
                    remaining = limit - (time.monotonic() - started)
                    line = await asyncio.wait_for(proc.stdout.readline(), max(remaining, 0.001))
                    if not line:
                        return await self._crashed(current, job, started)
                    message = protocol.decode(line)
                    if message.get("id") == request_id:
                        break
            except asyncio.TimeoutError:
                await self._kill()
                return JobResult(
                    False,
                    error_kind=protocol.ERROR_TIMEOUT,
                    message=f"{job} timed out after {limit:g} s; the worker was restarted",
                    seconds=time.monotonic() - started,
                )
            except ValueError as exc:  # an unreadable line: the worker is not speaking our protocol
                await self._kill()
                return JobResult(
                    False,
                    error_kind=protocol.ERROR_INTERNAL,
                    message=f"the worker sent an unreadable answer ({exc}); it was restarted",
                )
            seconds = time.monotonic() - started
            if message.get("ok"):
                return JobResult(True, value=message.get("result"), seconds=seconds)
            error = message.get("error") or {}
            if error.get("kind") == protocol.ERROR_MEMORY:
                # The worker exits after a MemoryError to start afresh; wait for it, so the next
                # job does not race the exit.
                current.intentional_exit = True
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except asyncio.TimeoutError:
                    await self._kill()
            return JobResult(
                False,
                error_kind=str(error.get("kind", protocol.ERROR_INTERNAL)),
                message=str(error.get("message", "unknown error")),
                seconds=seconds,
            )

    async def _ensure_started(self) -> _Process:
        current = self._current
        if current is not None and current.proc.returncode is None:
            return current
        settings = self.settings
        argv = worker_argv(
            settings.command, settings.memory_limit_mb, settings.workspace, settings.allow_user_code
        )
        env = worker_environment(settings.workspace, settings.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = (
            settings.workspace if settings.workspace and Path(settings.workspace).is_dir() else None
        )
        log.info("starting worker: %s", " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the user's prints and tracebacks go to the server's log
                cwd=cwd,
                env=env,
                start_new_session=True,  # so a time-out can kill the user's child processes too
                limit=_LINE_LIMIT,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise WorkerStartError(
                f"cannot start the worker: {settings.command[0]} is not a runnable Python "
                f"({exc.strerror})"
            ) from exc
        current = _Process(proc)
        assert proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), settings.startup_timeout_seconds)
        except asyncio.TimeoutError:
            self._current = current
            await self._kill()
            raise WorkerStartError(
                f"the worker did not start within {settings.startup_timeout_seconds:g} s"
            ) from None
        if not ready:
            returncode = await proc.wait()
            raise WorkerStartError(
                f"the worker exited while starting ({describe_exit(returncode)}); "
                f"is {settings.command[0]} Python 3.10 or newer? See the log for its error."
            )
        self.starts += 1
        self._current = current
        current.watcher = asyncio.ensure_future(self._watch(current))
        return current

    async def _watch(self, current: _Process) -> None:
        returncode = await current.proc.wait()
        if current.intentional_exit:
            return
        description = describe_exit(returncode)
        self.last_exit = description
        log.warning("worker (pid %s) ended: %s", current.proc.pid, description)
        if self._current is current:
            self._current = None
        if self._on_exit is not None:
            self._on_exit(description)

    async def _crashed(self, current: _Process, job: str, started: float) -> JobResult:
        if self._closed:
            return JobResult(
                False, error_kind=protocol.ERROR_CANCELLED, message="the worker was stopped"
            )
        returncode: int | None
        try:
            returncode = await asyncio.wait_for(current.proc.wait(), 5.0)
        except asyncio.TimeoutError:
            await self._kill()
            returncode = current.proc.returncode
        return JobResult(
            False,
            error_kind=protocol.ERROR_CRASH,
            message=f"the worker crashed ({describe_exit(returncode)}) while running {job}; "
            "it will be restarted",
            seconds=time.monotonic() - started,
        )

    async def _kill(self) -> None:
        current = self._current
        self._current = None
        if current is None or current.proc.returncode is not None:
            return
        current.intentional_exit = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(current.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            current.proc.kill()
        await current.proc.wait()
