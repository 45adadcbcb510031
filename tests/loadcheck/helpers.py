"""What the load-check tests share: checking one file with a real worker, and asking real
torch / transformers / Lightning what each statement does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from torchls.checkpoint.isolated import read_isolated_async
from torchls.loadcheck.analysis import Environment
from torchls.loadcheck.checker import LoadChecker, SiteReport
from torchls.loadcheck.fixes import Fix
from torchls.source.models import FileModels
from torchls.source.project import Project
from torchls.worker.client import WorkerClient, WorkerSettings

THIS_MACHINE = Environment("2.13.0", False)  # torch 2.13, no CUDA


def start_worker(workspace: Path) -> WorkerClient:
    return WorkerClient(
        WorkerSettings(
            command=(sys.executable,),
            workspace=str(workspace),
            allow_user_code=True,
            timeout_seconds=120,
            memory_limit_mb=4096,
        )
    )


async def check_file(
    workspace: Path, file: str, worker: WorkerClient | None = None
) -> list[tuple[SiteReport, list[Fix]]]:
    """Every load site of `file` with its report and fixes (a worker of its own unless given)."""
    own = worker is None
    client = worker or start_worker(workspace)
    checker = LoadChecker(
        read_isolated_async,
        lambda params: client.run("state_dict", params),
        lambda: THIS_MACHINE,
    )
    try:
        project = Project(str(workspace))
        module = project.module_file(str(workspace / file))
        assert module is not None
        models = FileModels(project, module)
        reports = await checker.check(models, str(workspace))
        return [(report, checker.fixes(models, report)) for report in reports]
    finally:
        if own:
            await client.stop()


RUNNER = """
import json, logging, sys
logging.disable(logging.WARNING)
exec(sys.argv[1])
outcomes = []
for statement in json.loads(sys.argv[2]):
    try:
        exec(statement)
        outcomes.append("")
    except Exception as exc:
        outcomes.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(outcomes))
"""


def what_raises(workspace: Path, prelude: str, statements: list[str]) -> list[str]:
    """What each statement raises for real ("" if nothing), after `prelude`, in one process."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, prelude, json.dumps(statements)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    outcome: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome
