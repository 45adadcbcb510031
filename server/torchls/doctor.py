"""`torchls doctor`: what the worker finds in an interpreter, without an editor."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from torchls import status
from torchls.worker.client import WorkerClient, WorkerSettings


def run_doctor(python: str | None, as_json: bool) -> int:
    settings = WorkerSettings(
        command=(python or sys.executable,), workspace=str(Path.cwd()), allow_user_code=False
    )

    async def probe() -> int:
        worker = WorkerClient(settings)
        try:
            result = await worker.run("environment")
        finally:
            await worker.stop()
        if not result.ok:
            print(f"torchls doctor: {result.message}", file=sys.stderr)
            return 1
        env = result.value
        state, message, _ = status.status_from_environment(env)
        if as_json:
            print(json.dumps({"state": state, "message": message, **env}, indent=2))
        else:
            print(f"python        {env['python']} ({env['python_version']})")
            for name, info in env["libraries"].items():
                version = info.get("version") or "not installed"
                extra = f"  ({info['error']})" if info.get("error") else ""
                print(f"{name:<13} {version}{extra}")
            print(f"worker        {message}; memory limit {env['memory_limit_mb']} MB")
        return 0 if state == status.READY else 1

    return asyncio.run(probe())
