"""Run a downgrade: check the input without torch, re-save it in a one-shot worker, check the
result again without torch, and only then put it in place.

The order is what makes it safe:
1. the input is read with torchls's own reader (a restricted unpickler in a child process):
   globals that `weights_only=True` refuses, dtypes the legacy format cannot hold, and inputs
   that are already legacy are reported before torch ever opens the file;
2. a one-shot worker (the user's interpreter, so their torch) loads with `weights_only=True`,
   writes a temporary file next to the output, reads it back with `torch.load` and compares
   every tensor with a fresh read of the input;
3. the temporary file is read again by torchls's reader: it must be in the legacy format,
   reference only globals `weights_only=True` allows (plus any the user allowed), and hold the
   tensors the worker reported;
4. it is renamed into place (atomic on one file system), never over a file that appeared
   meanwhile unless replacing was asked for. A model folder is built in a temporary folder and
   renamed as a whole.
For the whole run the output is claimed (a locked file beside it), so a second downgrade to the
same output, from another editor or `torchls downgrade`, refuses instead of racing the first.
Cancelling, the time limit (or any failure) kills the worker and its process group and removes
the temporary files; the input is only ever read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchls.boundary import worker_environment
from torchls.checkpoint.errors import CheckpointError
from torchls.cost import report
from torchls.downgrade.targets import DEFAULT_SUFFIX, Target, TargetError, plan
from torchls.worker import protocol
from torchls.worker.client import worker_argv
from torchls.worker.downgrade import CAST_TO, NO_LEGACY

Progress = Callable[[str, float | None], None]
ReadSummary = Callable[[Path], Awaitable[dict[str, Any]]]


@dataclass
class Options:
    output: Path | None = None
    suffix: str = DEFAULT_SUFFIX
    overwrite: bool = False
    cast: bool = False
    allow_globals: tuple[str, ...] = ()


@dataclass
class Environment:
    """How to start the one-shot worker."""

    command: tuple[str, ...]
    workspace: str | None = None
    trusted: bool = False  # may the user's allowed globals be imported
    memory_limit_mb: int = 0
    # The job time limit (the editor's worker.timeoutSeconds, the CLI's --timeout); it grows
    # with the input like the memory limit. 0: none.
    timeout_seconds: float = 0.0
    # torchls's reader, injected by the language server (its cache); else read in a child.
    read_summary: ReadSummary | None = None


@dataclass
class Outcome:
    ok: bool
    reason: str  # "" when ok; exists | refused-globals | unsupported-dtypes | cancelled | ...
    message: str
    input: Path
    output: Path | None = None
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cast: list[str] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    torch: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ok": self.ok,
            "message": self.message,
            "input": str(self.input),
        }
        if self.output is not None:
            data["output"] = str(self.output)
            data["outputUri"] = self.output.absolute().as_uri()
        if self.ok:
            data.update(
                verified=True,
                tensors=self.tensors,
                bytes=self.bytes,
                seconds=round(self.seconds, 3),
                cast=self.cast,
                skipped=self.skipped,
                torch=self.torch,
            )
        else:
            data["reason"] = self.reason
            if self.globals:
                data["globals"] = self.globals
            if self.dtypes:
                data["dtypes"] = self.dtypes
        return data


class _Refused(Exception):
    def __init__(self, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.extra = extra


async def downgrade(
    source: Path, options: Options, environment: Environment, progress: Progress | None = None
) -> Outcome:
    """Never raises for anything a user can cause: the outcome says what happened."""
    started = time.perf_counter()
    say = progress or (lambda message, percentage: None)
    temps: list[Path] = []
    claim: _Claim | None = None
    try:
        target = plan(source, options.output, options.suffix)
        claim = _Claim(target.output)
        if os.path.lexists(target.output) and not options.overwrite:
            kind = "folder" if target.output.is_dir() else "file"
            raise _Refused("exists", f"{target.output} exists; the {kind} was left as it is")
        say("checking the input", 0.0)
        read = environment.read_summary or _read_in_child
        summaries = {s: await read(s) for o in target.outputs for s in o.sources}
        _preflight(target, summaries, options, environment)
        # The format the reader found, not the one the name suggests (safetensors in a .pt).
        target.outputs = [
            replace(
                o,
                format="safetensors"
                if all(summaries[s].get("format") == "safetensors" for s in o.sources)
                else "torch",
            )
            for o in target.outputs
        ]
        sizes = sum(s.stat().st_size for o in target.outputs for s in o.sources)
        if environment.memory_limit_mb:
            # The input is mapped (address space) and read back once: room for both, above the
            # limit set for building models.
            environment = replace(
                environment, memory_limit_mb=environment.memory_limit_mb + 3 * (sizes >> 20)
            )
        if environment.timeout_seconds:
            # Reading, writing and reading back a big file takes its time: a minute per GiB
            # (about 6 s per GiB measured, bench/downgrade.py) on top of the job time limit.
            environment = replace(
                environment,
                timeout_seconds=environment.timeout_seconds + 60 * sizes / 2**30,
            )
        outcome = await _convert(target, options, environment, say, temps)
        outcome.seconds = time.perf_counter() - started
        return outcome
    except TargetError as exc:
        return Outcome(False, exc.reason, str(exc), source)
    except _Refused as exc:
        refused = Outcome(False, exc.reason, str(exc), source, **exc.extra)
        if exc.reason == "exists":
            refused.output = plan(source, options.output, options.suffix).output
        return refused
    except CheckpointError as exc:
        return Outcome(False, "not-a-checkpoint", str(exc), source)
    except asyncio.CancelledError:
        _remove(temps)
        raise
    except OSError as exc:
        return Outcome(False, "error", _os_error(exc, source), source)
    finally:
        _remove(temps)
        if claim is not None:
            claim.release()


async def _read_in_child(path: Path) -> dict[str, Any]:
    from torchls.checkpoint.isolated import read_isolated_async

    # Big files have many tensors; the reader's cost grows with their number, not their bytes.
    return await read_isolated_async(path, timeout=120.0, memory_mb=2048)


def _preflight(
    target: Target, summaries: dict[Path, dict[str, Any]], options: Options, env: Environment
) -> None:
    if options.allow_globals and not env.trusted:
        raise _Refused(
            "untrusted",
            "allowing more globals imports and runs code the file names: only in a trusted "
            "workspace",
        )
    refused: set[str] = set()
    dtypes: Counter[str] = Counter()
    legacy = []
    for path, summary in summaries.items():
        fmt = summary.get("format")
        if fmt == "torch-legacy":
            legacy.append(path)
        elif fmt not in {"torch-zip", "safetensors"}:
            raise _Refused(
                "not-a-checkpoint",
                f"{path.name} is not a torch checkpoint or safetensors file (it reads as {fmt})",
            )
        verdict = summary.get("weights_only") or {}
        if verdict.get("unsupported_opcodes"):
            raise _Refused(
                "refused-globals",
                f"{path.name}: {verdict.get('reason') or 'weights_only=True refuses it'}",
            )
        refused |= set(verdict.get("refused_globals") or []) - set(options.allow_globals)
        for tensor in summary.get("tensors") or []:
            dtype = str(tensor.get("dtype"))
            if dtype in NO_LEGACY or (dtype in CAST_TO and not options.cast):
                dtypes[dtype] += 1
    if legacy and len(legacy) == len(summaries):
        raise _Refused(
            "already-legacy",
            f"{target.input.name} is already in torch's legacy format: torch < 1.6 loads it as it "
            "is",
        )
    if refused:
        names = sorted(refused)
        raise _Refused(
            "refused-globals",
            f"{target.input.name} needs globals that torch.load(weights_only=True) does not allow: "
            f"{', '.join(names)}. Allowing them runs the file's code; do it only for a file you "
            "trust (and only in a trusted workspace).",
            globals=names,
        )
    if dtypes:
        listed = ", ".join(f"{n} x {d}" for d, n in sorted(dtypes.items()))
        castable = all(d in CAST_TO for d in dtypes)
        advice = (
            " Ask for a cast (float8 -> float32, uint16/32/64 -> int32/int64, complex32 -> "
            "complex64, all exact) to go on."
            if castable
            else " They cannot be cast without loss."
        )
        raise _Refused(
            "unsupported-dtypes",
            f"{target.input.name} has tensors in dtypes torch's legacy format cannot load back: "
            f"{listed}.{advice}",
            dtypes=sorted(dtypes),
        )


async def _convert(
    target: Target,
    options: Options,
    env: Environment,
    say: Progress,
    temps: list[Path],
) -> Outcome:
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    if target.folder:
        staging = target.output.with_name(f".{target.output.name}.tmp-{tag}")
        staging.mkdir()
        temps.append(staging)
        files = [staging / o.name for o in target.outputs]
    else:
        staging = None
        files = [target.output.with_name(f".{target.output.name}.tmp-{tag}")]
        temps.extend(files)
    params = {
        "outputs": [
            {"temp": str(f), "sources": [str(s) for s in o.sources], "format": o.format}
            for f, o in zip(files, target.outputs, strict=True)
        ],
        "cast": options.cast,
        "allow_globals": list(options.allow_globals),
    }
    result = await _run_worker(params, env, say)
    say("checking the written file", 97.0)
    read = env.read_summary or _read_in_child
    for written in result["outputs"]:
        summary = await read(Path(written["temp"]))
        _check_written(Path(written["temp"]), summary, written, options)
    if staging is not None:
        for copy in target.copies:
            if copy.is_dir() and not copy.is_symlink():
                shutil.copytree(copy, staging / copy.name, symlinks=True)
            else:
                shutil.copy2(copy, staging / copy.name, follow_symlinks=False)
        _fsync_dir(staging)
    final = target.output
    placed = _place(staging or files[0], final, options.overwrite, tag, temps)
    if not placed:
        # Made by something else while the worker ran (torchls's own runs refuse on the claim).
        raise _Refused("exists", f"{final} appeared while the downgrade ran; it was left as it is")
    temps[:] = [t for t in temps if ".old-" in t.name]  # the replaced folder: removed below
    _remove(temps)
    _fsync_dir(final.parent)
    tensors = sum(len(w["tensors"]) for w in result["outputs"])
    size = sum(int(w["bytes"]) for w in result["outputs"])
    casts = [c for w in result["outputs"] for c in w["cast"]]
    what = f"{tensors} tensors, {report.size(size)}"
    if casts:
        what += f", {len(casts)} cast"
    message = (
        f"Downgraded {target.input.name} -> {final.name} ({what}; verified: torch "
        f"{result.get('torch')} and torchls read it back, every tensor equal)"
    )
    return Outcome(
        True,
        "",
        message,
        target.input,
        final,
        tensors=tensors,
        bytes=size,
        cast=casts,
        skipped=target.skipped,
        torch=result.get("torch"),
    )


def _place(built: Path, final: Path, overwrite: bool, tag: str, temps: list[Path]) -> bool:
    """Move the verified file or folder into place; False when something else took the name
    meanwhile (and replacing was not asked for)."""
    if overwrite and final.is_dir() and not final.is_symlink():
        # The earlier folder the user chose to replace: set aside, removed by the caller.
        trash = final.with_name(f".{final.name}.old-{tag}")
        final.rename(trash)
        temps.append(trash)
        return _rename_no_replace(built, final)
    if overwrite:
        built.replace(final)  # atomic: the old file or the new one is there, never neither
        return True
    return _rename_no_replace(built, final)


def _check_written(
    path: Path, summary: dict[str, Any], written: dict[str, Any], options: Options
) -> None:
    """The worker said it wrote these tensors in the legacy format; torchls's own reader must
    agree, and see no global beyond what weights_only allows and the user allowed."""
    if summary.get("format") != "torch-legacy":
        raise _Refused("verify", f"the written file reads as {summary.get('format')}, not legacy")
    allowed = set(options.allow_globals)
    odd = [
        g["name"]
        for g in summary.get("globals") or []
        if not g.get("weights_only_allowed") and g["name"] not in allowed
    ]
    if odd:
        raise _Refused("verify", f"the written file references unexpected globals: {odd}")
    seen = Counter((t["dtype"], tuple(t["shape"])) for t in summary.get("tensors") or [])
    said = Counter((d, tuple(s)) for d, s in written["tensors"])
    if seen != said:
        raise _Refused(
            "verify",
            f"torchls reads {sum(seen.values())} tensors in the written file where torch wrote "
            f"{sum(said.values())}; it was not kept",
        )


async def _run_worker(
    params: dict[str, Any], env: Environment, say: Progress, job: str = "downgrade"
) -> dict[str, Any]:
    argv = worker_argv(env.command, env.memory_limit_mb, env.workspace, env.trusted, "--one-shot")
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # cancelling kills its whole group
        limit=64 * 1024 * 1024,
        env=worker_environment(env.workspace),  # no PYTHONPATH into the workspace
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    try:
        try:
            return await asyncio.wait_for(
                _exchange(proc, stderr_task, params, env, say, job), env.timeout_seconds or None
            )
        except asyncio.TimeoutError:
            # A frozen (stopped, deadlocked, endlessly looping) worker would hold the command
            # and its progress forever.
            raise _Refused(
                "timeout",
                f"the worker did not finish within {env.timeout_seconds:.0f} s (the job time "
                "limit); it was stopped and nothing was written",
            ) from None
    finally:
        # The whole group, also when the worker itself has exited: nothing it started may go
        # on writing.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
        stderr_task.cancel()


async def _exchange(
    proc: asyncio.subprocess.Process,
    stderr_task: asyncio.Future[bytes],
    params: dict[str, Any],
    env: Environment,
    say: Progress,
    job: str = "downgrade",
) -> dict[str, Any]:
    """The one-shot worker's request and answer (and its progress events in between)."""
    assert proc.stdin is not None and proc.stdout is not None
    token = protocol.new_token()  # what the worker's answers must carry (worker/protocol.py)
    request = {"id": 1, "token": token, "job": job, "params": params}
    proc.stdin.write((json.dumps(request) + "\n").encode())
    await proc.stdin.drain()
    proc.stdin.close()
    while True:
        line = await proc.stdout.readline()
        if not line:
            break
        try:
            message = protocol.decode(line)
        except ValueError:
            message = {"event": "unreadable line"}
        problem = protocol.one_shot_problem(message, 1, token)
        if problem is not None:
            raise _Refused("error", f"the worker sent {problem}, so nothing it did was kept")
        if message.get("event") == "progress":
            percentage = message.get("percentage")
            scaled = None if percentage is None else 95 * float(percentage) / 100
            say(str(message.get("message")), scaled)
        elif "ok" in message:
            if message["ok"]:
                result: dict[str, Any] = message["result"]
                return result
            error = message.get("error") or {}
            data = error.get("data") or {}
            raise _Refused(
                str(error.get("kind") or "error"),
                str(error.get("message") or f"the {job} failed"),
                **{k: v for k, v in data.items() if k in {"globals", "dtypes"}},
            )
    returncode = await proc.wait()
    detail = (await stderr_task).decode("utf-8", "replace").strip().splitlines()
    if returncode == 3 or any("MemoryError" in line for line in detail):
        raise _Refused("error", f"the worker ran out of memory (limit {env.memory_limit_mb} MB)")
    last = detail[-1] if detail else f"exit code {returncode}"
    raise _Refused("error", f"the worker stopped before it finished ({last})")


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    paths.clear()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Errors that mean "this place cannot take the output", not "the downgrade went wrong".
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _os_error(exc: OSError, source: Path) -> str:
    """One line naming the path and what to do, never the raw exception."""
    where = Path(os.fsdecode(exc.filename)) if exc.filename else source
    why = (exc.strerror or type(exc).__name__).lower()
    if exc.errno in _UNWRITABLE:
        folder = where if where.is_dir() else where.parent
        return f"cannot write in {folder} ({why}): choose another output"
    return f"{where}: {why}"


class _Claim:
    """This run's hold on its output: an exclusive lock on a file beside it, kept until the
    run ends, so that a second downgrade to the same output (this server, another editor's, or
    `torchls downgrade`) sees the first and refuses. The kernel releases the lock when a process
    dies, so a crashed run leaves at most an unlocked file, which the next run takes over."""

    def __init__(self, output: Path, what: str = "downgrade") -> None:
        self.path = output.with_name(f".{output.name}.torchls-lock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as exc:
                if exc.errno in _UNWRITABLE:
                    raise _Refused(
                        "error",
                        f"cannot write in {output.parent} ({(exc.strerror or '').lower()}): "
                        "choose another output",
                    ) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _Refused(
                    "busy",
                    f"{output} is being written by another {what}; try again when it has "
                    "finished, or choose another output",
                ) from None
            # The previous holder may have removed the file between our open and our lock:
            # then the lock is on a file nobody else will see; take the current one instead.
            try:
                current = self.path.lstat()
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (
                mine.st_dev,
                mine.st_ino,
            ):
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        # Removed while still locked: a run that opened it meanwhile sees it is stale.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_no_replace(source: Path, destination: Path) -> bool:
    """Move `source` to `destination` unless something is there (False then), atomically:
    renameat2(RENAME_NOREPLACE) on Linux, else a hard link for a file; a file system with
    neither gets a check just before the rename (the claim still keeps torchls's own runs
    apart)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            done = renameat2(
                _AT_FDCWD,
                os.fsencode(source),
                _AT_FDCWD,
                os.fsencode(destination),
                ctypes.c_uint(_RENAME_NOREPLACE),
            )
            if done == 0:
                return True
            code = ctypes.get_errno()
            if code == errno.EEXIST:
                return False
            if code not in {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}:
                raise OSError(code, os.strerror(code), os.fsdecode(destination))
    if not source.is_dir():
        try:
            os.link(source, destination, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in {errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}:
                raise
        else:
            source.unlink()
            return True
    if os.path.lexists(destination):
        return False
    source.rename(destination)
    return True
