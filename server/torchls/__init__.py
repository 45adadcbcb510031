"""torchls: a language server that makes PyTorch code tell the truth about itself."""

import sys as _sys

__version__ = "0.1.0"

# This is the first torchls code any start form of the server (or of the CLI, run from a
# project's folder) runs: `-m torchls` imports the package before __main__, the console script
# imports torchls.cli. The place to take the workspace off sys.path before argparse, logging,
# pygls or packaging are imported.
from torchls.boundary import protect_server_start as _protect
from torchls.boundary import started_as_command as _started_as_command

if _started_as_command(getattr(_sys, "argv", None) or [""]):
    _protect()
