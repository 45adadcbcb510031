"""Reading workspace files in the server process: bounded by size first, regular files only.

The server reads what the user's workspace holds (Python sources, `config.json` beside a
`from_pretrained("./dir")`, requirement files). Any of them can be huge (a 2 GB sparse
`config.json`), or not a file at all (a FIFO named `model.py` would block a plain read for ever).
Every such read goes through `read_bounded`, which never reads more than it was asked to keep.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_bounded(path: str | Path, limit: int) -> bytes | None:
    """The bytes of the regular file at `path` if it holds at most `limit` bytes, else None.

    None also for a missing file, a folder, a FIFO or device, or any OS error. The size is
    checked on the open file and the read stops after `limit + 1` bytes, so a file that grows
    between the check and the read is refused too, never read whole.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > limit else data
    except OSError:
        return None
    finally:
        os.close(fd)
