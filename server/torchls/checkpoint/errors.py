"""The one exception a checkpoint reader raises: a file, and one sentence saying what is wrong."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
