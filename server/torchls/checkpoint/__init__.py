"""Reading checkpoint files without torch and without running pickle code.

`read_checkpoint(path)` returns a `CheckpointSummary`: the format, the container tree, the
state-dict candidates, every tensor's dtype and shape, and the globals the file references.
Pickles are interpreted by `pickle_vm`, which never imports or calls anything a file names.
"""

from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.reader import read_checkpoint
from torchls.checkpoint.summary import CheckpointSummary

__all__ = ["CheckpointError", "CheckpointSummary", "read_checkpoint"]
