"""Finding and loading the user's code for a worker job, and building the model.

The user's own files are executed as skeletons (source/skeleton.py: definitions only, never the
script), installed libraries are imported, and the model is built under `torch.device("meta")`.
Workspace modules are imported by their module name from their root, as `python -c "from pkg
import X"` would, so packages, their `__init__` re-exports and import cycles resolve as in Python.
A skeleton runs with `sys.argv = [its file]`, so a script's argparse gives its defaults; which of
them the model read becomes a note of the job.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchls.source.skeleton import optional_import_lines, skeleton
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
        owner.run_skeleton(module)


_IMPORTER = _SkeletonImporter()
_PREFIXES = tuple(
    {os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
)


# torchls's own package: never the user's code, even in a workspace that holds it (a checkout
# of torchls), or its tracer's frames would be named as the failing line and its modules dropped
_OWN = os.path.realpath(Path(__file__).resolve().parents[1]) + os.sep


def _is_installed(real_path: str) -> bool:
    parts = Path(real_path).parts
    return (
        "site-packages" in parts
        or "dist-packages" in parts
        or real_path.startswith(_PREFIXES)
        or real_path.startswith(_OWN)
    )


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
        # argparse: each option's flag by dest, and the defaults the user's code read, in order
        self.argparse_flags: dict[str, str] = {}
        self.argparse_read: dict[str, Any] = {}
        # by real path: the names the file's top-level statements left out of its skeleton bind,
        # with the line of the first, to say why a model reading one meets a NameError
        self.not_run: dict[str, dict[str, int]] = {}
        self._scripts_running = 0
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

    def notes(self) -> list[str]:
        """One line naming the script's argparse defaults the model was built with."""
        if not self.argparse_read:
            return []
        shown = [
            f"{self.argparse_flags.get(dest, '--' + dest)} {value!r}"
            if isinstance(value, str)
            else f"{self.argparse_flags.get(dest, '--' + dest)} {value}"
            for dest, value in list(self.argparse_read.items())[:8]
        ]
        more = len(self.argparse_read) - len(shown)
        tail = f" and {more} more" if more > 0 else ""
        return [f"built with the script's argparse defaults: {', '.join(shown)}{tail}"]

    def _from_file(self, ref: dict[str, Any]) -> Any:
        path = str(ref["file"])
        module = self.loaded.get(path)
        if module is None:
            module = self._import_file(path, str(ref["module"]), str(ref.get("sys_path") or ""))
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

    def run_skeleton(self, module: types.ModuleType) -> None:
        """Executes the skeleton of the module's file in it, as a script run with no arguments:
        the user's argparse gives its defaults, and a top-level import of a library that is
        not installed binds a stand-in that fails only if the model uses it."""
        assert module.__file__ is not None
        code, optional = self._skeleton(module.__file__)
        namespace = module.__dict__
        namespace["__torchls_skeleton__"] = True
        namespace["__builtins__"] = {
            **builtins.__dict__,
            "__import__": _tolerant_import(code, optional, Path(module.__file__).name),
        }
        with self._as_script(module.__file__):
            exec(code, namespace)

    @contextlib.contextmanager
    def _as_script(self, path: str) -> Iterator[None]:
        if self._scripts_running:  # a module the script imports: the outer run patched already
            yield
            return
        loader = self
        parse = argparse.ArgumentParser.parse_known_args
        error = argparse.ArgumentParser.error

        def parse_known_args(parser: Any, args: Any = None, namespace: Any = None) -> Any:
            parsed, extras = parse(parser, args, namespace)
            if args is None and type(parsed) is argparse.Namespace:
                for action in parser._actions:
                    flags = [o for o in action.option_strings if o.startswith("--")]
                    if flags or action.option_strings:
                        loader.argparse_flags[action.dest] = (flags or action.option_strings)[0]
                parsed.__class__ = _RecordingNamespace
            return parsed, extras

        def refuse(parser: Any, message: str) -> Any:
            raise _ScriptArgumentsNeeded(message)

        saved_argv = sys.argv
        sys.argv = [path]
        argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign,assignment]
        argparse.ArgumentParser.error = refuse  # type: ignore[method-assign,assignment]
        self._scripts_running += 1
        try:
            yield
        finally:
            self._scripts_running -= 1
            sys.argv = saved_argv
            argparse.ArgumentParser.parse_known_args = parse  # type: ignore[method-assign]
            argparse.ArgumentParser.error = error  # type: ignore[method-assign]

    def skeleton_code(self, path: str) -> Any:
        """The file's definitions, compiled with its own name and line numbers."""
        return self._skeleton(path)[0]

    def _skeleton(self, path: str) -> tuple[Any, set[int]]:
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
        body, dropped = skeleton(tree)
        left_out = set(dropped)
        names: dict[str, int] = {}
        for statement in tree.body:
            if statement.lineno in left_out:
                for node in ast.walk(statement):
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                        names.setdefault(node.id, statement.lineno)
        self.not_run[os.path.realpath(path)] = names
        return compile(body, path, "exec"), optional_import_lines(tree)

    def _import_file(self, path: str, name: str, sys_path: str) -> types.ModuleType:
        """The file's module, imported by its name from its root as Python would (its package's
        `__init__` first), or, when that name finds another file, executed on its own."""
        if sys_path:
            self.user_roots.add(os.path.realpath(sys_path))
            if sys_path not in sys.path:
                sys.path.insert(0, sys_path)
        self.user_files.add(os.path.realpath(path))
        known = sys.modules.get(name)
        if known is None or getattr(known, "__torchls_skeleton__", False):
            try:
                with self._as_script(path):
                    module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is None or not (name + ".").startswith(exc.name + "."):
                    raise self._import_failed(path, exc) from None
            except JobError:
                raise
            except Exception as exc:
                raise self._import_failed(path, exc) from None
            else:
                file = getattr(module, "__file__", None)
                if file and os.path.realpath(file) == os.path.realpath(path):
                    return module
        return self._load_skeleton(path, name)

    def _import_failed(self, path: str, exc: BaseException) -> JobError:
        if isinstance(exc, _ScriptArgumentsNeeded):
            where = _user_line(exc, self)
            return JobError(
                protocol.ERROR_USER,
                f"{Path(path).name}'s argparse stops with no command-line arguments: {exc}"
                f"{f' ({where})' if where else ''}; torchls runs the script with none, so give "
                "those options defaults, or pass the model's arguments with --args",
            )
        return JobError(
            protocol.ERROR_USER, f"importing {Path(path).name} failed: {_describe(exc, self)}"
        )

    def _load_skeleton(self, path: str, name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__file__ = path
        module.__package__ = name.rpartition(".")[0] if not path.endswith("__init__.py") else name
        sys.modules[name] = module  # dataclasses, pickling and typing look classes up here
        self.user_files.add(os.path.realpath(path))
        try:
            self.run_skeleton(module)
        except JobError:
            sys.modules.pop(name, None)
            raise
        except Exception as exc:
            sys.modules.pop(name, None)
            raise self._import_failed(path, exc) from None
        return module


class _ScriptArgumentsNeeded(Exception):
    """The user's argparse refused to run without command-line arguments."""


class _RecordingNamespace(argparse.Namespace):
    """The script's parsed options; notes which ones the user's code reads."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        owner = _IMPORTER.owner
        if owner is not None and not name.startswith("_") and name in owner.argparse_flags:
            owner.argparse_read.setdefault(name, value)
        return value


class _Missing:
    """What `import torchvision.transforms as transforms` binds in a skeleton when torchvision
    is not installed: nothing fails until the model really uses it."""

    def __init__(self, name: str, missing: str, where: str) -> None:
        self._torchls = (name, missing, where)

    def _error(self) -> ModuleNotFoundError:
        name, missing, where = self._torchls
        return ModuleNotFoundError(
            f"{missing} is not installed in {sys.executable}, and {name} (imported at {where}) "
            "needs it",
            name=missing,
        )

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        name, missing, where = self._torchls
        return _Missing(f"{name}.{attribute}", missing, where)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error()

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[Any, ...]:
        raise self._error()


def _tolerant_import(code: Any, lines: set[int], filename: str) -> Any:
    real = builtins.__import__

    def tolerant(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        try:
            return real(name, globals, locals, fromlist, level)
        except ModuleNotFoundError as exc:
            frame = sys._getframe(1)
            if level or frame.f_code is not code or frame.f_lineno not in lines:
                raise
            missing = exc.name or name
            if not (name + ".").startswith(missing + "."):
                raise  # the module exists and imports something missing: say so
            top = name if fromlist else name.split(".")[0]
            return _Missing(top, missing, f"{filename}, line {frame.f_lineno}")

    return tolerant


def _import_dotted(dotted: str) -> Any:
    """`a.b.c` as Python's attribute lookup finds it: `import torchvision.models as tvm;
    tvm.alexnet` is the function the package binds, not its submodule `alexnet.py`. A submodule
    is imported only where the attribute is missing; a name no walk finds is imported as the
    longest module prefix (`from a.b.c import D` names the module `a.b.c`)."""
    found = _walk_attributes(dotted)
    if found is not None:
        return found[0]
    return _import_longest_prefix(dotted)


def _walk_attributes(dotted: str) -> tuple[Any] | None:
    parts = dotted.split(".")
    try:
        value: Any = importlib.import_module(parts[0])
    except Exception:
        return None  # the prefix walk says why
    for index in range(1, len(parts)):
        part = parts[index]
        try:
            value = getattr(value, part)
            continue
        except AttributeError:
            pass
        if not isinstance(value, types.ModuleType) or not hasattr(value, "__path__"):
            return None
        try:
            value = importlib.import_module(".".join(parts[: index + 1]))
        except Exception:
            return None
    return (value,)


def _import_longest_prefix(dotted: str) -> Any:
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
    where = _user_line(exc, loader)
    described = f"{text} ({where})" if where else text
    name = getattr(exc, "name", None) if isinstance(exc, NameError) else None
    if name:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            line = loader.not_run.get(os.path.realpath(frame.filename), {}).get(name)
            if line is not None:
                return (
                    f"{described}; `{name}` is set on line {line} of "
                    f"{Path(frame.filename).name} by script code torchls does not run to build a "
                    "model (it reads data or files, trains, or builds another model)"
                )
    return described


def _user_line(exc: BaseException, loader: _Loader) -> str:
    """`model.py, line 27`: the innermost line of the user's own code in the traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if loader.is_user_file(frame.filename):
            return f"{Path(frame.filename).name}, line {frame.lineno}"
    return ""
