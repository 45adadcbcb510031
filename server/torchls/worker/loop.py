"""The worker's request loop: read a job, run it, answer, repeat.

Runs in the child process only. The protocol uses a private duplicate of the original stdout;
file descriptor 1 is pointed at stderr so that anything the user's code prints can never corrupt
the protocol stream.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
import traceback
from typing import IO, Any

from torchls.worker import protocol
from torchls.worker.jobs import JobContext, JobError, find_job


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchls-worker")
    parser.add_argument("--memory-limit-mb", type=int, default=0)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--allow-user-code", action="store_true")
    # Run one request and exit, sending progress events on the way: for long jobs (Downgrade)
    # that a user may cancel, which kills this process and not the long-lived worker.
    parser.add_argument("--one-shot", action="store_true")
    return parser.parse_args(argv)


def _limit_memory(megabytes: int) -> None:
    if megabytes <= 0:
        return
    limit = megabytes * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _take_protocol_stream() -> IO[bytes]:
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _send(channel: IO[bytes], message: dict[str, Any]) -> None:
    channel.write(protocol.encode(message))
    channel.flush()


def _exit_with_parent() -> None:
    """End the worker when the server goes away, even in the middle of a runaway job.

    The worker lives in its own session (so that a time-out can kill its whole group), so it
    would not get the terminal's signals: it watches its parent instead.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="torchls-parent-watch", daemon=True).start()


def _error(request_id: Any, kind: str, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"kind": kind, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": request_id, "ok": False, "error": error}


def _answer(channel: IO[bytes], token: Any, message: dict[str, Any]) -> None:
    _send(channel, {**message, "token": token})


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    channel = _take_protocol_stream()
    _exit_with_parent()
    _become_subreaper()
    _limit_memory(args.memory_limit_mb)
    # The running job's token, in a closure cell rather than a global: the user's code is
    # imported into this process and must not find it by name (protocol.py says why).
    running: list[Any] = [None]

    def emit(message: str, percentage: float | None) -> None:
        _send(
            channel,
            {
                "event": "progress",
                "token": running[0],
                "message": message,
                "percentage": percentage,
            },
        )

    context = JobContext(
        workspace=args.workspace,
        allow_user_code=args.allow_user_code,
        memory_limit_mb=args.memory_limit_mb,
        emit=emit if args.one_shot else None,
    )
    # The workspace goes on sys.path when a job first needs the user's modules (after torch
    # is imported): see profiling._Loader.
    _send(channel, {"event": "ready", "pid": os.getpid(), "python": sys.executable})

    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        try:
            request = protocol.decode(raw)
        except ValueError as exc:
            _send(channel, _error(None, protocol.ERROR_INTERNAL, f"unreadable request: {exc}"))
            continue
        request_id = request.get("id")
        token = request.pop("token", None)
        running[0] = token
        job = find_job(str(request.get("job")))
        if job is None:
            _answer(channel, token, _error(request_id, protocol.ERROR_UNKNOWN_JOB, "no such job"))
            continue
        params = request.get("params")
        params = dict(params) if isinstance(params, dict) else {}
        params.pop("token", None)
        del request
        started = time.perf_counter()
        try:
            result = job(context, params)
        except BaseException as exc:  # user code can raise anything, SystemExit included
            failure = _failure(exc, args.memory_limit_mb)
            del exc
            _answer(channel, token, {"id": request_id, "ok": False, "error": failure})
            if failure["kind"] == protocol.ERROR_MEMORY:
                # The heap may be in any state after a MemoryError, and what the job allocated
                # may still be held: start afresh.
                return 3
            if args.one_shot:
                return 0
            continue
        finally:
            running[0] = None
        elapsed = time.perf_counter() - started
        answer = {"id": request_id, "ok": True, "result": result, "seconds": elapsed}
        _answer(channel, token, answer)
        if args.one_shot:
            return 0
    return 0


def _memory_error_in(exc: BaseException) -> bool:
    """Whether a MemoryError is `exc` or what it was raised from or during: the user's code and
    the jobs turn exceptions into JobErrors, and a MemoryError must not pass as one of them."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _failure(exc: BaseException, memory_limit_mb: int) -> dict[str, Any]:
    if _memory_error_in(exc):
        limit = f" (limit {memory_limit_mb} MB)" if memory_limit_mb else ""
        where = f": {exc}" if isinstance(exc, JobError) else ""
        return {
            "kind": protocol.ERROR_MEMORY,
            "message": f"ran out of memory{limit}{where}",
        }
    if isinstance(exc, JobError):
        failure: dict[str, Any] = {"kind": exc.kind, "message": str(exc)}
        if exc.data is not None:
            failure["data"] = exc.data
        return failure
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    print("".join(traceback.format_exception(exc)), file=sys.stderr)
    return {"kind": protocol.ERROR_INTERNAL, "message": detail}


def _become_subreaper() -> None:
    """Make the worker the parent of every orphan among its descendants (Linux).

    The user's code may start processes in their own session (`setsid`, `start_new_session`)
    and let the parent exit, so that they leave the worker's process group and, normally,
    its family. As a subreaper the worker stays their ancestor, so the server can find and
    end all of them when it ends the worker.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
