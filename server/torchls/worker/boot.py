"""Entry point of the worker process, run as a script by the language server.

It is run by path (`python .../torchls/worker/boot.py`), not with `-m`, so that the current
directory -- the user's workspace, which may be untrusted -- is never put on `sys.path`: a
`torch.py` lying in the workspace must not be imported by `import torch`. Nor may the workspace
come in another way (a `.pth` of an editable install, PYTHONPATH, which the server already
filters): it is taken off the path here, before the worker imports anything, and added back
later, and only when the server says user code may run.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_package_root = os.path.dirname(os.path.dirname(_here))
sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != _here]
sys.path.insert(0, _package_root)


def _keep_the_workspace_out(argv: list[str]) -> None:
    from torchls.boundary import drop_editable_finders, drop_workspace_paths

    # Without a workspace (`torchls downgrade` in a shell), the folder it runs in is one.
    workspace = os.getcwd()
    if "--workspace" in argv[:-1]:
        workspace = argv[argv.index("--workspace") + 1]
    drop_workspace_paths(workspace)
    if "--allow-user-code" not in argv:
        drop_editable_finders(workspace)


_keep_the_workspace_out(sys.argv[1:])

from torchls.worker.loop import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
