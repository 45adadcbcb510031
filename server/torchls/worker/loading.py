"""Finding and loading the user's code for a worker job, and building the model.

The user's own files are executed as skeletons (source/skeleton.py: definitions only, never the
script), installed libraries are imported, and the model is built under `torch.device("meta")`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from torchls.source.skeleton import skeleton
from torchls.worker import protocol
from torchls.worker.jobs import JobContext, JobError

# -- finding and loading the user's code --------------------------------------------------------


class _SkeletonImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the workspace's own modules as skeletons too: `from helpers import Block` must
    not run helpers.py's script statements either."""

    owner: _Loader | None = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        owner = self.owner
        if owner is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = getattr(spec, "origin", None)
        if spec is None or not origin or not origin.endswith(".py"):
            return None
        if not owner.is_user_file(origin):
            return None
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        owner = self.owner
        assert owner is not None and module.__file__ is not None
        module.__dict__["__torchls_skeleton__"] = True
        exec(owner.skeleton_code(module.__file__), module.__dict__)


_IMPORTER = _SkeletonImporter()
_PREFIXES = tuple(
    {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
)


def _is_installed(real_path: str) -> bool:
    parts = Path(real_path).parts
    return "site-packages" in parts or "dist-packages" in parts or real_path.startswith(_PREFIXES)


class _Loader:
    """Resolves references to callables: installed modules by import, the user's files by
    executing their skeleton (definitions only), with the editor's unsaved text when given."""

    def __init__(self, context: JobContext, sources: dict[str, str]) -> None:
        self.context = context
        # the editor's unsaved text, by real path
        self.sources = {os.path.realpath(path): text for path, text in sources.items()}
        self.loaded: dict[str, types.ModuleType] = {}
        self.user_files: set[str] = set()
        self.user_roots: set[str] = set()
        if context.workspace:
            self.user_roots.add(os.path.realpath(context.workspace))
            # Only now, with torch imported: a `cuda.py` in the workspace would otherwise be
            # what torch's own `import cuda` finds, and torch would not import at all.
            if context.allow_user_code and context.workspace not in sys.path:
                sys.path.insert(0, context.workspace)
        _IMPORTER.owner = self
        if _IMPORTER not in sys.meta_path:
            sys.meta_path.insert(0, _IMPORTER)

    def is_user_file(self, filename: str) -> bool:
        real = os.path.realpath(filename)
        if real in self.user_files:
            return True
        if _is_installed(real):  # a .venv inside the workspace holds libraries, not user code
            return False
        return any(real.startswith(root + os.sep) for root in self.user_roots)

    def forget_workspace_modules(self) -> None:
        """Drop the workspace's modules from sys.modules, so that edits are seen."""
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if (file and self.is_user_file(file)) or getattr(module, "__torchls_skeleton__", False):
                del sys.modules[name]

    def resolve(self, ref: dict[str, Any]) -> Any:
        if "import" in ref:
            return _import_dotted(str(ref["import"]))
        return self._from_file(ref)

    def _from_file(self, ref: dict[str, Any]) -> Any:
        path = str(ref["file"])
        module = self.loaded.get(path)
        if module is None:
            module = self._load_skeleton(path, str(ref["module"]), str(ref.get("sys_path") or ""))
            self.loaded[path] = module
        value: Any = module
        for part in str(ref["qualname"]).split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                raise JobError(
                    protocol.ERROR_USER,
                    f"{Path(path).name} defines no {ref['qualname']} (at the top level)",
                ) from None
        return value

    def skeleton_code(self, path: str) -> Any:
        """The file's definitions, compiled with its own name and line numbers."""
        import ast

        self.user_files.add(os.path.realpath(path))
        text = self.sources.get(os.path.realpath(path))
        if text is None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise JobError(protocol.ERROR_USER, f"cannot read {path}: {exc.strerror}") from None
        try:
            tree = ast.parse(text, filename=path)
        except SyntaxError as exc:
            raise JobError(
                protocol.ERROR_USER,
                f"{Path(path).name} has a syntax error on line {exc.lineno}: {exc.msg}",
            ) from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise JobError(
                protocol.ERROR_USER, f"{Path(path).name} cannot be parsed: {type(exc).__name__}"
            ) from None
        body, _dropped = skeleton(tree)
        return compile(body, path, "exec")

    def _load_skeleton(self, path: str, name: str, sys_path: str) -> types.ModuleType:
        code = self.skeleton_code(path)
        if sys_path:
            self.user_roots.add(os.path.realpath(sys_path))
            if sys_path not in sys.path:
                sys.path.insert(0, sys_path)
        module = types.ModuleType(name)
        module.__file__ = path
        module.__package__ = name.rpartition(".")[0] if not path.endswith("__init__.py") else name
        module.__dict__["__torchls_skeleton__"] = True
        sys.modules[name] = module  # dataclasses, pickling and typing look classes up here
        self.user_files.add(os.path.realpath(path))
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise JobError(
                protocol.ERROR_USER,
                f"importing {Path(path).name} failed: {_describe(exc, self)}",
            ) from None
        return module


def _import_dotted(dotted: str) -> Any:
    parts = dotted.split(".")
    error: Exception | None = None
    for cut in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            error = exc
            if exc.name and not dotted.startswith(exc.name):
                break  # the module exists but imports something missing: say that
            continue
        except Exception as exc:
            raise JobError(
                protocol.ERROR_USER,
                f"importing {'.'.join(parts[:cut])} failed: {type(exc).__name__}: {exc}",
            ) from None
        for part in parts[cut:]:
            try:
                value = getattr(value, part)
            except AttributeError:
                raise JobError(
                    protocol.ERROR_USER, f"{'.'.join(parts[:cut])} has no {part!r}"
                ) from None
        return value
    missing = getattr(error, "name", None) or parts[0]
    raise JobError(
        protocol.ERROR_MISSING,
        f"{missing} is not installed in {sys.executable}; install it there, or point "
        "torchls.worker.interpreter at the environment that has it",
    )


def _describe(exc: BaseException, loader: _Loader) -> str:
    """`RuntimeError: mat1 and mat2 ... (model.py, line 27)`: the error and the user's line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if loader.is_user_file(frame.filename):
            return f"{text} ({Path(frame.filename).name}, line {frame.lineno})"
    return text
