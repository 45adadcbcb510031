"""A torchls server started the way a given editor starts it: command, working directory and
environment of the test's choosing, initialized over stdio as VS Code would."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Session, lsp_session

VENV_BIN = Path(sys.executable).parent


def recording_module(name: str, mark: Path, delegate: bool = True) -> str:
    """The source of a module that notes in `mark` that it was imported (and by which
    process), then, if `delegate`, hands over to the real module of that name."""
    text = (
        "import os as _os, sys as _sys\n"
        f"with open({str(mark)!r}, 'a') as _f:\n"
        f"    _f.write('{name} ' + str(_os.getpid()) + ' ' + _sys.argv[0] + '\\n')\n"
    )
    if delegate:
        text += (
            "_here = _os.path.dirname(_os.path.abspath(__file__))\n"
            "del _sys.modules[__name__]\n"
            "_saved = _sys.path[:]\n"
            "_sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or '.') != _here]\n"
            "try:\n"
            "    __import__(__name__)\n"
            "finally:\n"
            "    _sys.path[:] = _saved\n"
        )
    return text


def hostile_workspace(folder: Path, names: Sequence[str], killers: Sequence[str] = ()) -> Path:
    """A workspace whose modules shadow `names` (recording, then the real module) and
    `killers` (recording only: a server that imports them breaks). Returns the mark file."""
    mark = folder / "IMPORTED"
    for name in names:
        (folder / f"{name}.py").write_text(recording_module(name, mark))
    for name in killers:
        (folder / f"{name}.py").write_text(recording_module(name, mark, delegate=False))
    return mark


def hostile_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["TORCHLS_WORKER_TEST_JOBS"] = "1"
    env.update(extra)
    return env


@asynccontextmanager
async def started_session(
    command: Sequence[str],
    workspace: Path,
    *,
    cwd: Path,
    env: dict[str, str],
    initialization_options: Any = None,
) -> AsyncIterator[Session]:
    async with lsp_session(
        initialization_options, workspace, env=env, command=command, cwd=cwd
    ) as session:
        yield session


SERVER_ROOT = str(ROOT / "server")
