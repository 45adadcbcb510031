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
    timeout_seconds: float = 0.0,
    **options: Any,
) -> Outcome:
    environment = Environment(
        command=(sys.executable,), trusted=trusted, timeout_seconds=timeout_seconds
    )
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
    """Temporary files (and the claim on an output) a downgrade may leave behind if it does not
    clean up."""
    return sorted(
        p.name for p in folder.iterdir() if any(m in p.name for m in (".tmp-", ".old-", "-lock"))
    )


def is_legacy(path: Path) -> bool:
    """torch's legacy format starts with a pickle (protocol 2: 0x80 0x02), not a zip header."""
    return path.read_bytes()[:2] == b"\x80\x02"


def one_shot_workers(parent: int) -> list[int]:
    """The live (not zombie) one-shot downgrade workers started by process `parent`; other
    engineers' tests may run workers of their own at the same time, so only its children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"--one-shot" in command:
            found.append(int(entry.name))
    return found
