"""Reading checkpoint files without torch and without running pickle code.

`read_checkpoint(path)` returns a `CheckpointSummary`: the format, the container tree, the
state-dict candidates, every tensor's dtype and shape, and the globals the file references.
Pickles are interpreted by `pickle_vm`, which never imports or calls anything a file names.

The names are imported lazily so that `torchls.checkpoint.isolated`, which only starts the
reader process, stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchls.checkpoint.errors import CheckpointError

if TYPE_CHECKING:
    from torchls.checkpoint.reader import read_checkpoint
    from torchls.checkpoint.summary import CheckpointSummary

__all__ = ["CheckpointError", "CheckpointSummary", "read_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "read_checkpoint":
        from torchls.checkpoint.reader import read_checkpoint

        return read_checkpoint
    if name == "CheckpointSummary":
        from torchls.checkpoint.summary import CheckpointSummary

        return CheckpointSummary
    raise AttributeError(name)
