# ruff: noqa: PTH100, PTH120
import os
import sys

if not __package__:
    # Run by path (`python .../torchls/__main__.py serve`): Python put this folder first on
    # sys.path, where the package's own modules would be importable under wrong names; the
    # folder above it is the one that holds the package.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

from torchls.cli import main

raise SystemExit(main())
