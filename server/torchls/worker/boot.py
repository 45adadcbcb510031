"""Entry point of the worker process, run as a script by the language server.

It is run by path (`python .../torchls/worker/boot.py`), not with `-m`, so that the current
directory -- the user's workspace, which may be untrusted -- is never put on `sys.path`: a
`torch.py` lying in the workspace must not be imported by `import torch`. The workspace is added
to the path later, and only when the server says user code may run.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_package_root = os.path.dirname(os.path.dirname(_here))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _here]
sys.path.insert(0, _package_root)

from torchls.worker.loop import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
