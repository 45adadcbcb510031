"""Shared by the convert tests: run a conversion as the CLI and the server do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from torchls.convert.run import Options, Outcome, convert
from torchls.downgrade.run import Environment

ROOT = Path(__file__).resolve().parents[2]


async def run(
    source: Path,
    kind: str,
    *,
    command: tuple[str, ...] = (sys.executable,),
    progress: list[tuple[str, float | None]] | None = None,
    **options: Any,
) -> Outcome:
    environment = Environment(command=command)
    report = (lambda m, p: progress.append((m, p))) if progress is not None else None
    return await convert(source, Options(kind=kind, **options), environment, report)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    return subprocess.run(
        [sys.executable, "-m", "torchls", "convert", *args],
        env=env, capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip
