"""Read a checkpoint in a child process with a memory limit and a time limit.

A hostile or broken file can at worst exhaust the child's budget: the caller gets a one-line
CheckpointError. The child is run by path with `-I -S` (no site-packages, no PYTHON* variables,
no current directory on sys.path): it needs only the standard library, so it starts in
milliseconds, and nothing in the user's workspace can be imported into it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from torchls.checkpoint.errors import CheckpointError

CHILD_SCRIPT = str(Path(__file__).with_name("child.py"))
DEFAULT_TIMEOUT = 20.0
DEFAULT_MEMORY_MB = 1024


def _command(path: str, memory_mb: int, python: str | None, mode: str = "message") -> list[str]:
    return [python or sys.executable, "-I", "-S", CHILD_SCRIPT, str(memory_mb), path, mode]


def _result(path: str, returncode: int | None, stdout: bytes, stderr: bytes, memory_mb: int) -> Any:
    try:
        message = json.loads(stdout) if stdout else None
    except ValueError:
        message = None
    if isinstance(message, dict) and "summary" in message:
        return message["summary"]
    if isinstance(message, dict) and "error" in message:
        raise CheckpointError(path, str(message["error"]))
    if b"MemoryError" in stderr or returncode == -signal.SIGKILL:
        raise CheckpointError(path, f"reading it needs more than {memory_mb} MB (limit)")
    if returncode is not None and returncode < 0:
        raise CheckpointError(path, f"the reader crashed ({_signal_name(returncode)})")
    detail = stderr.decode("utf-8", "replace").strip().splitlines()
    raise CheckpointError(path, f"the reader failed ({detail[-1] if detail else returncode})")


def read_isolated(
    path: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    python: str | None = None,
) -> dict[str, Any]:
    """The summary JSON (see CheckpointSummary.as_json) of `path`, read in a child process."""
    path = str(path)
    try:
        done = subprocess.run(
            _command(path, memory_mb, python), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise CheckpointError(path, f"reading it took longer than {timeout:g} s (limit)") from None
    result: dict[str, Any] = _result(path, done.returncode, done.stdout, done.stderr, memory_mb)
    return result


async def read_isolated_async(
    path: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    python: str | None = None,
) -> dict[str, Any]:
    """As read_isolated, for the language server's event loop."""
    path = str(path)
    returncode, stdout, stderr = await _run_async(path, timeout, memory_mb, python, "message")
    result: dict[str, Any] = _result(path, returncode, stdout, stderr, memory_mb)
    return result


async def read_viewer_async(
    path: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    python: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """The checkpoint viewer's read (child.py's mode "viewer": a sharded checkpoint's problems
    listed instead of refused): the summary with an empty tensor list, and the tensors as rows
    (summary.tensor_rows_json) in JSON text, which the language server sends on as it is."""
    path = str(path)
    returncode, stdout, stderr = await _run_async(path, timeout, memory_mb, python, "viewer")
    head, newline, tensors = stdout.partition(b"\n")
    summary: dict[str, Any] = _result(path, returncode, head, stderr, memory_mb)
    if not newline or not tensors.startswith(b"[") or not tensors.endswith(b"]"):
        raise CheckpointError(path, "the reader's answer ended early")
    return summary, tensors


async def _run_async(
    path: str, timeout: float, memory_mb: int, python: str | None, mode: str
) -> tuple[int | None, bytes, bytes]:
    import asyncio  # here, not at the top: the CLI imports this module and needs no asyncio

    proc = await asyncio.create_subprocess_exec(
        *_command(path, memory_mb, python, mode),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise CheckpointError(path, f"reading it took longer than {timeout:g} s (limit)") from None
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, stdout, stderr


def print_isolated(path: str, mode: str, *, timeout: float, memory_mb: int) -> int:
    """`torchls inspect`: the child prints the report (mode "json" or "text") straight to this
    process's stdout. Returns the exit code: 0 read, 1 not a readable checkpoint."""
    sys.stdout.flush()
    try:
        done = subprocess.run(
            _command(path, memory_mb, None, mode),
            timeout=timeout,
            check=False,
            stderr=subprocess.PIPE,
        )
    except subprocess.TimeoutExpired:
        print(
            f"torchls inspect: {path}: reading it took longer than {timeout:g} s (limit)",
            file=sys.stderr,
        )
        return 1
    if done.returncode == 0:
        return 0
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode == 1 and lines and lines[-1].startswith("torchls inspect: "):
        print(lines[-1], file=sys.stderr)
    elif done.returncode == -signal.SIGKILL or any("MemoryError" in line for line in lines):
        print(
            f"torchls inspect: {path}: reading it needs more than {memory_mb} MB (limit)",
            file=sys.stderr,
        )
    else:
        if done.returncode < 0:
            reason = f"crashed with {_signal_name(done.returncode)}"
        else:
            reason = lines[-1] if lines else f"exit code {done.returncode}"
        print(f"torchls inspect: {path}: the reader failed ({reason})", file=sys.stderr)
    return 1


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
