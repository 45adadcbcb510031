# ruff: noqa: PTH100, PTH109, PTH117, PTH118, PTH119, PTH120
"""Keeping the user's workspace out of torchls's own processes.

A workspace may hold `uuid.py`, `argparse.py` or `packaging.py`; any directory of it that ends
up on `sys.path` (the current directory that `python -m` puts first, a `PYTHONPATH=.`, a `.pth`
of an editable install) would have the server import them as if they were the real modules, in
a trusted workspace or not. The language server, the checkpoint reader and the worker (until the
server lets user code run) import nothing from the workspace; this module holds the rules they
share. Standard library only: the worker's boot script imports it before anything else.

What stays on the path however deep inside the workspace it lies: torchls's own package root
(an editable install of torchls in the repository being edited) and anything under the
interpreter's prefixes or the user site directory (a `.venv` inside the workspace is normal).
"""

# No `from __future__`, typing, collections or pathlib (hence os.path): this module runs while
# the current directory may still be first on sys.path, so it imports only what the interpreter
# has already loaded (os, sys).
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# The folder that holds the `torchls` package: site-packages, VS Code's bundled/libs, or the
# repository's server/ for an editable install.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real(entry: str) -> str:
    # '' on sys.path means the current directory, at import time.
    return os.path.realpath(entry or os.curdir)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _installed_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    try:
        import site  # absent under `python -S`, which has no user site to keep anyway

        user_site = getattr(site, "USER_SITE", None)
        if user_site:
            roots.add(user_site)
    except ImportError:
        pass
    return sorted(os.path.realpath(root) for root in roots if root)


def _kept(real: str) -> bool:
    if real == os.path.realpath(PACKAGE_ROOT):
        return True
    return any(_inside(real, root) for root in _installed_roots())


def is_workspace_path(entry: str, workspace: str) -> bool:
    """Whether a sys.path entry (or PYTHONPATH part) lets the workspace's modules be imported."""
    real = _real(entry)
    return _inside(real, os.path.realpath(workspace)) and not _kept(real)


def drop_workspace_paths(workspace: str) -> list[str]:
    """Take every entry at or under `workspace` off sys.path; returns those removed."""
    removed = [entry for entry in sys.path if is_workspace_path(entry, workspace)]
    if removed:
        sys.path[:] = [entry for entry in sys.path if entry not in removed]
    return removed


def modules_from(workspace: str) -> list[str]:
    """Names of the modules already imported from files of the workspace (not its venv)."""
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and is_workspace_path(os.path.dirname(file), workspace):
            names.append(name)
    return sorted(names)


def _stdlib_paths() -> list[str]:
    stdlib = os.path.dirname(os.path.abspath(os.__file__))
    return [stdlib, os.path.join(stdlib, "lib-dynload")]


def stdlib_first() -> None:
    """Put the standard library ahead of every other sys.path entry.

    The server needs no entry of PYTHONPATH, a `.pth` or the current directory to shadow a
    standard module; with the standard library first, a workspace `uuid.py` that reached the
    path anyway is never what `import uuid` finds.
    """
    wanted = [os.path.realpath(path) for path in _stdlib_paths()]
    first = [entry for entry in sys.path if entry and os.path.realpath(entry) in wanted]
    rest = [entry for entry in sys.path if entry not in first]
    zipped = [entry for entry in rest if entry.endswith(".zip") and "python" in entry]
    rest = [entry for entry in rest if entry not in zipped]
    sys.path[:] = zipped + first + rest


def _trusted_entry(entry: str) -> bool:
    return bool(entry) and _kept(_real(entry))


def protect_server_start() -> list[str]:
    """At the language server's entry, before it imports anything but the standard library's
    core: keep on sys.path only the standard library, torchls's own folder and installed
    packages; returns the entries taken off.

    The server needs nothing else, and before `initialize` it cannot know which folder is the
    workspace: the current directory (`python -m` puts it first, and an editor's project root
    is often it), PYTHONPATH and folders a `.pth` adds all may be. The worker still gets the
    user's PYTHONPATH (without the workspace's parts), since their torch may need it.
    """
    removed = [entry for entry in sys.path if not _trusted_entry(entry)]
    sys.path[:] = [entry for entry in sys.path if _trusted_entry(entry)]
    drop_editable_finders(None)
    stdlib_first()
    return removed


def started_as_command(argv: list[str]) -> bool:
    """`python -m torchls ...`, the `torchls` console script or `python .../__main__.py ...`:
    torchls's own process, not a program (or a test) importing it."""
    if len(argv) < 2:
        return False
    program = os.path.basename(argv[0]).removesuffix(".exe")
    return program in ("-m", "torchls", "__main__.py")


def worker_environment(
    workspace: str | None, base: "Mapping[str, str] | None" = None
) -> dict[str, str]:
    """The environment of a worker: the server's, with no PYTHONPATH part inside the workspace.

    The worker starts in the workspace, so a relative part (`.`, or an empty one) is the
    workspace too. Python would import a `sitecustomize.py` found there before the worker's
    first line, so it cannot be left to the worker to remove. Without a workspace (the CLI),
    the current folder is taken for it.
    """
    env = dict(os.environ if base is None else base)
    raw = env.get("PYTHONPATH")
    if raw is None:
        return env
    workspace = workspace or os.getcwd()
    kept = [
        part
        for part in raw.split(os.pathsep)
        if part and os.path.isabs(part) and not is_workspace_path(part, workspace)
    ]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        del env["PYTHONPATH"]
    return env


def drop_editable_finders(workspace: "str | None") -> list[str]:
    """Take off sys.meta_path the finders of editable installs whose code is in the workspace
    (None: anywhere but torchls's own folder and installed packages).

    setuptools' editable installs put a finder on sys.meta_path (from a `.pth`) that maps the
    project's package names to its folders, sys.path or not.
    """
    removed = []
    for finder in list(sys.meta_path):
        module = sys.modules.get(getattr(finder, "__module__", "") or "")
        mapping = getattr(module, "MAPPING", None)
        if not (module and module.__name__.startswith("__editable__") and mapping):
            continue
        if isinstance(mapping, dict) and any(
            isinstance(path, str)
            and (
                not _trusted_entry(path)
                if workspace is None
                else is_workspace_path(path, workspace)
            )
            for path in mapping.values()
        ):
            sys.meta_path.remove(finder)
            removed.append(module.__name__)
    return removed
