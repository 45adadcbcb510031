"""The wire format between the language server and the worker: one JSON object per line.

Requests:  {"id": 1, "token": "9f0c...", "job": "environment", "params": {...}}
Responses: {"id": 1, "token": "9f0c...", "ok": true, "result": {...}}
           {"id": 1, "token": "9f0c...", "ok": false, "error": {"kind": "...", "message": "..."}}
Events:    {"event": "ready", "pid": 123, "python": "/usr/bin/python3"}
           {"event": "progress", "token": "9f0c...", "message": "...", "percentage": 50}

The user's code runs inside the worker and can write to any file descriptor it inherits, the
answer channel included: a line shaped like an answer proves nothing. Each request carries a
fresh random token that the worker's loop keeps to itself (never in a job's params, never in a
module global) and echoes; an answer without it, or one nobody asked for, means the worker
cannot be believed any more, and the server kills it.

This module is imported by both sides, so it uses the standard library only.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

# Error kinds a job result can carry. The server turns each into one sentence for the user.
ERROR_TIMEOUT = "timeout"
ERROR_CRASH = "crash"
ERROR_MEMORY = "memory"
ERROR_START = "start"
ERROR_USER = "user-code"
ERROR_INTERNAL = "internal"
ERROR_UNKNOWN_JOB = "unknown-job"
ERROR_UNTRUSTED = "untrusted"
ERROR_CANCELLED = "cancelled"
# A library the job needs is not installed: not cached, so installing it fixes the next hover.
ERROR_MISSING = "missing-module"
# The worker wrote something that is not the answer to the job (forged by user code, or
# garbage): the worker was killed, and nothing it said is kept.
ERROR_PROTOCOL = "protocol"


def new_token() -> str:
    return secrets.token_hex(16)


def answer_problem(message: dict[str, Any], request_id: int, token: str) -> str | None:
    """Why `message` is not a well-formed answer to request `request_id`, or None."""
    if message.get("token") != token:
        return "an answer without this job's token"
    if message.get("id") != request_id:
        return f"an answer to request {message.get('id')!r} while {request_id} was running"
    if "event" in message:
        return f"an unexpected {message.get('event')!r} event"
    ok = message.get("ok")
    if ok is True:
        return None if "result" in message else "an answer without a result"
    if ok is False:
        error = message.get("error")
        if isinstance(error, dict) and isinstance(error.get("kind"), str):
            return None
        return "a failure without an error kind"
    return "an answer that is neither a result nor a failure"


def one_shot_problem(message: dict[str, Any], request_id: int, token: str) -> str | None:
    """Why `message` is neither a progress event nor the answer of the one-shot worker's job."""
    if message.get("event") == "progress":
        return None if message.get("token") == token else "a progress event without the token"
    if message.get("event") == "ready":
        return None  # the worker's first line, before it reads the job; it changes nothing
    return answer_problem(message, request_id, token)


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def decode(line: bytes) -> dict[str, Any]:
    value = json.loads(line.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("worker message is not a JSON object")
    return value


def test_jobs_enabled() -> bool:
    """Jobs that hang, crash and over-allocate on purpose exist only for the test suite."""
    return os.environ.get("TORCHLS_WORKER_TEST_JOBS") == "1"
