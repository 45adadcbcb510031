"""Shared by the downgrade tests: run a downgrade as the CLI and the server do, and fingerprint
files so a test can prove an input was not touched."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from torchls.downgrade.run import Environment, Options, Outcome, downgrade


async def run(
    source: Path,
    *,
    trusted: bool = True,
    progress: list[tuple[str, float | None]] | None = None,
    **options: Any,
) -> Outcome:
    environment = Environment(command=(sys.executable,), trusted=trusted)
    report = (lambda m, p: progress.append((m, p))) if progress is not None else None
    return await downgrade(source, Options(**options), environment, report)


def fingerprint(path: Path) -> tuple[int, int, str]:
    """(size, mtime, sha256) of a file, or of every file in a folder."""
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(path.rglob("*")):
            if child.is_file():
                digest.update(child.name.encode() + hashlib.sha256(child.read_bytes()).digest())
        return (0, 0, digest.hexdigest())
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())


def leftovers(folder: Path) -> list[str]:
    """Temporary files a downgrade may leave behind if it does not clean up."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def is_legacy(path: Path) -> bool:
    """torch's legacy format starts with a pickle (protocol 2: 0x80 0x02), not a zip header."""
    return path.read_bytes()[:2] == b"\x80\x02"
