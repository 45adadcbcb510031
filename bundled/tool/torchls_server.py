# ruff: noqa: PTH100, PTH118, PTH120
"""How the VS Code client starts the torchls language server: `python -I <this file> serve`.

Isolated mode (`-I`) is the only way to keep the user's and the workspace's code out of the
server's process: without it Python imports a `sitecustomize` or `usercustomize` found on
PYTHONPATH or in the user site directory, and runs the `.pth` files there, before the first
line of torchls. Under `-I` Python reads no PYTHON* variable, skips the user site directory and
puts neither this folder nor the current one on sys.path (Python 3.10 as well as later ones).
PYTHONPATH stays in os.environ, so the worker, which runs the user's code, still gets it.

The extension's bundled libraries (torchls, pygls, lsprotocol, ...) go first on sys.path,
ahead of the interpreter's own packages, as PYTHONPATH used to put them.
"""

import os
import sys

_bundled = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_bundled, "libs"))

# torchls protects itself when started as `python -m torchls` or as its console script; this
# file is neither, so it asks for the same protection before anything but the standard
# library's core is imported: the interpreter's `.pth` files (an editable install of a
# workspace project) may still have put the workspace on sys.path.
from torchls.boundary import protect_server_start  # noqa: E402

protect_server_start()

from torchls.cli import main  # noqa: E402

raise SystemExit(main())
