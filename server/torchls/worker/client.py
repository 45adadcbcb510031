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
    # what a failed job gives the caller to act on (JobError.data: a profile's shape_error)
    data: Any = None

    def as_json(self) -> dict[str, Any]:
        answer = {
            "ok": self.ok,
            "value": self.value,
            "error_kind": self.error_kind,
            "message": self.message,
            "seconds": round(self.seconds, 4),
        }
        if self.data is not None:
            answer["data"] = self.data
        return answer


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
    reader: asyncio.Task[None] | None = field(default=None, repr=False)
    # What the worker wrote while a job was running, line by line; b"" at the end of output.
    lines: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue, repr=False)
    # A job is waiting for an answer: anything written at another time is a forgery.
    expecting: bool = False
    # Why the worker was killed for what it wrote, for the status and the log.
    violation: str | None = None


def descendants(pid: int) -> list[int]:
    """Every living process below `pid`, from /proc (Linux; elsewhere none are found).

    The worker is a child subreaper (worker/loop.py), so processes whose parent exited are
    still below it, in whatever session or process group they put themselves."""
    children: dict[int, list[int]] = {}
    try:
        entries = [entry.name for entry in Path("/proc").iterdir()]
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop()
        if child in found:
            continue
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the process `pid`, its process group and every descendant.

    Descendants are stopped first, then killed, and looked for again until none is left, so
    that one forking while it is being killed does not leave a child behind."""
    for _ in range(20):
        found = descendants(pid)
        if not found:
            break
        for child in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGSTOP)
        for child in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class WorkerClient:
    """Runs jobs in the worker, one at a time, each under a time limit.

    `on_exit` is called with a one-line description whenever the worker ends without being
    asked to (crash, `os._exit`, out of memory, killed from outside).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        on_exit: Callable[[str], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_exit = on_exit
        # Called with the pid of every worker that started: after a crash the status must
        # follow the worker back, whoever's job started it.
        self._on_start = on_start
        self._lock = _TurnLock()
        self._current: _Process | None = None
        # A worker between its start and its "ready": stop() must be able to end it too.
        self._starting: asyncio.subprocess.Process | None = None
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
            kill_tree(current.proc.pid)
        starting = self._starting
        if starting is not None and starting.returncode is None:
            kill_tree(starting.pid)
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
            token = protocol.new_token()
            proc = current.proc
            assert proc.stdin is not None
            current.expecting = True
            try:
                request = {"id": request_id, "token": token, "job": job, "params": params}
                proc.stdin.write(protocol.encode(request))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                current.expecting = False
                return await self._crashed(current, job, started)
            try:
                line = await asyncio.wait_for(
                    current.lines.get(), max(limit - (time.monotonic() - started), 0.001)
                )
            except asyncio.TimeoutError:
                await self._kill()
                return JobResult(
                    False,
                    error_kind=protocol.ERROR_TIMEOUT,
                    message=f"{job} timed out after {limit:g} s; the worker was restarted",
                    seconds=time.monotonic() - started,
                )
            finally:
                current.expecting = False
            if not line:
                if current.violation is not None:
                    return self._forged(job, current.violation)
                return await self._crashed(current, job, started)
            try:
                message = protocol.decode(line)
            except ValueError:
                return await self._reject(current, job, "an unreadable line")
            problem = protocol.answer_problem(message, request_id, token)
            if problem is not None:
                return await self._reject(current, job, problem)
            if not current.lines.empty():
                # More than the one answer: the genuine one came first (it has the token), but
                # whatever wrote the rest is still in there.
                await self._reject(current, job, "more than one answer")
            seconds = time.monotonic() - started
            if message["ok"]:
                return JobResult(True, value=message["result"], seconds=seconds)
            error = message["error"]
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
                data=error.get("data"),
            )

    async def _reject(self, current: _Process, job: str, problem: str) -> JobResult:
        """The worker wrote something other than the job's answer: none of it is believed."""
        current.violation = problem
        pid = current.proc.pid
        log.warning("worker (pid %s) sent %s while running %s; it was killed", pid, problem, job)
        if self._current is current:
            await self._kill()
        return self._forged(job, problem)

    @staticmethod
    def _forged(job: str, problem: str) -> JobResult:
        return JobResult(
            False,
            error_kind=protocol.ERROR_PROTOCOL,
            message=f"the worker sent {problem} while running {job}, so none of its answer "
            "was used; it was restarted (code in the workspace may be writing to torchls's "
            "channel)",
        )

    async def _read(self, current: _Process) -> None:
        """Pass on the worker's lines while a job waits for them; a line at any other time
        means something besides the loop writes to the channel: end the worker."""
        stdout = current.proc.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line, current.violation = b"", "a line longer than any answer"
            if line and not current.expecting:
                current.violation = "a line while no job was running"
                log.warning(
                    "worker (pid %s) wrote %s; it was killed", current.proc.pid, current.violation
                )
                if current.proc.returncode is None:
                    kill_tree(current.proc.pid)
                current.lines.put_nowait(b"")
                return
            current.lines.put_nowait(line)
            if not line:
                if current.violation is not None and current.proc.returncode is None:
                    kill_tree(current.proc.pid)
                return

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
            proc = self._starting = await asyncio.create_subprocess_exec(
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
        finally:
            self._starting = None
        if self._closed:
            kill_tree(proc.pid)
            await proc.wait()
            raise WorkerStartError("the worker was stopped")
        if not ready:
            returncode = await proc.wait()
            raise WorkerStartError(
                f"the worker exited while starting ({describe_exit(returncode)}); "
                f"is {settings.command[0]} Python 3.10 or newer? See the log for its error."
            )
        self.starts += 1
        self._current = current
        current.reader = asyncio.ensure_future(self._read(current))
        current.watcher = asyncio.ensure_future(self._watch(current))
        if self._on_start is not None:
            self._on_start(proc.pid)
        return current

    async def _watch(self, current: _Process) -> None:
        returncode = await current.proc.wait()
        if current.intentional_exit:
            return
        description = describe_exit(returncode)
        if current.violation is not None:
            description = f"killed: it wrote {current.violation}"
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
        kill_tree(current.proc.pid)
        await current.proc.wait()
