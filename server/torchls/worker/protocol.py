"""The wire format between the language server and the worker: one JSON object per line.

Requests:  {"id": 1, "job": "environment", "params": {...}}
Responses: {"id": 1, "ok": true, "result": {...}}
           {"id": 1, "ok": false, "error": {"kind": "...", "message": "..."}}
Events:    {"event": "ready", "pid": 123, "python": "/usr/bin/python3"}

This module is imported by both sides, so it uses the standard library only.
"""

from __future__ import annotations

import json
import os
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
