"""Finding and loading the user's code for a worker job, and building the model.

The user's own files are executed as skeletons (source/skeleton.py: definitions only, never the
script), installed libraries are imported, and the model is built under `torch.device("meta")`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchls.source.models import is_model_factory
from torchls.source.skeleton import skeleton
from torchls.source.values import callable_allowed
from torchls.worker import protocol
from torchls.worker.jobs import JobContext, JobError, Params

# Keyword arguments of from_pretrained that load weights or code rather than describe the model.
_LOADING_KWARGS = {
    "torch_dtype",
    "dtype",
    "device_map",
    "low_cpu_mem_usage",
    "trust_remote_code",
    "cache_dir",
    "local_files_only",
    "revision",
    "token",
    "use_auth_token",
    "quantization_config",
    "load_in_8bit",
    "load_in_4bit",
    "attn_implementation",
    "use_safetensors",
    "variant",
    "force_download",
    "proxies",
    "subfolder",
    "state_dict",
    "ignore_mismatched_sizes",
    "output_loading_info",
    "tp_plan",
    "key_mapping",
}

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

    def value(self, value: dict[str, Any]) -> Any:
        if "literal" in value:
            return value["literal"]
        if "tuple" in value:
            return tuple(self.value(item) for item in value["tuple"])
        if "list" in value:
            return [self.value(item) for item in value["list"]]
        if "set" in value:
            return {self.value(item) for item in value["set"]}
        if "dict" in value:
            return {self.value(key): self.value(item) for key, item in value["dict"]}
        if "ref" in value:
            return self.resolve(value["ref"])
        if "call" in value:
            call = value["call"]
            if not callable_allowed(call["ref"]):  # the server checks too; never trust one side
                raise JobError(protocol.ERROR_USER, f"torchls does not call {call['ref']}")
            function = self.resolve(call["ref"])
            args = [self.value(item) for item in call["args"]]
            kwargs = {key: self.value(item) for key, item in call["kwargs"].items()}
            if getattr(function, "__name__", "") == "from_pretrained":
                kwargs = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
                kwargs.update(trust_remote_code=False, local_files_only=True)
                if args and isinstance(args[0], str):
                    args[0] = self.local_folder(args[0])
            return function(*args, **kwargs)
        raise JobError(protocol.ERROR_USER, f"cannot evaluate {value.get('unknown', value)!r}")

    def local_folder(self, name: str) -> str:
        """A from_pretrained path as a folder on disk, tried from the workspace and the file."""
        candidates = [Path(name).expanduser()]
        for base in [self.context.workspace, *{str(Path(p).parent) for p in self.user_files}]:
            if base and not Path(name).is_absolute():
                candidates.append(Path(base) / name)
        for candidate in candidates:
            if candidate.is_dir():
                return str(candidate)
        raise JobError(
            protocol.ERROR_USER,
            f"from_pretrained({name!r}) is not a local folder; torchls never downloads models. "
            "Point it at a folder with a config.json, or build the model with from_config",
        )


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


# -- building the model -------------------------------------------------------------------------


def _build_model(torch: Any, loader: _Loader, params: Params, notes: list[str]) -> tuple[Any, str]:
    ref = dict(params["ref"])
    method = ref.pop("method", "")
    if "import" in ref and not is_model_factory(str(ref["import"])):
        raise JobError(protocol.ERROR_USER, f"{ref['import']} is not a model constructor")
    function = loader.resolve(ref)
    try:
        args, kwargs = _arguments(loader, function, params, notes)
    except JobError:
        raise
    except Exception as exc:  # a config class or a function of yours raised
        raise JobError(
            protocol.ERROR_USER, f"evaluating the arguments failed: {_describe(exc, loader)}"
        ) from None
    hparams = params.get("hparams")
    if isinstance(hparams, dict) and hparams:
        # Lightning's load_from_checkpoint: the saved hyper-parameters, then the call's own.
        kwargs = {**_accepted(function, hparams), **kwargs}
    name = params.get("name") or getattr(function, "__name__", "the model")
    if method == "from_pretrained":
        function, args, kwargs = _from_pretrained_as_from_config(loader, function, args, kwargs)
    first_error: BaseException | None = None
    build = "meta"
    try:
        with torch.device("meta"):
            model = function(*args, **kwargs)
    except Exception as exc:
        # Some constructors need real values (`.item()`, numpy): build on the CPU instead, with
        # every parameter moved to meta as soon as it is registered.
        first_error = exc
        try:
            with _parameters_to_meta(torch):
                model = function(*args, **kwargs)
            model = model.to("meta")
            build = "empty"
        except Exception:
            raise JobError(
                protocol.ERROR_USER,
                f"{name}(...) failed: {_describe(first_error, loader)}",
            ) from None
    if not isinstance(model, torch.nn.Module):
        raise JobError(
            protocol.ERROR_USER,
            f"{name}(...) returned {type(model).__name__}, not a torch.nn.Module",
        )
    return model, build


def _accepted(function: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The values `function` takes by name (all of them if it takes **kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(values)
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    return {k: v for k, v in values.items() if k in names}


def _arguments(
    loader: _Loader, function: Any, params: Params, notes: list[str]
) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments, with values torchls could not see replaced by the defaults."""
    raw_args: list[dict[str, Any]] = list(params.get("args") or [])
    raw_kwargs: dict[str, dict[str, Any]] = dict(params.get("kwargs") or {})
    try:
        signature: inspect.Signature | None = inspect.signature(function)
    except (TypeError, ValueError):
        signature = None
    positional_names: list[str] = []
    if signature is not None:
        positional_names = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    unseen: dict[str, str] = {}
    for index, raw in enumerate(raw_args):
        param_name = positional_names[index] if index < len(positional_names) else f"#{index + 1}"
        if "unknown" in raw:
            unseen[param_name] = raw["unknown"]
            continue
        if unseen:  # after a skipped positional, pass the rest by name
            kwargs[param_name] = loader.value(raw)
        else:
            args.append(loader.value(raw))
    for key, raw in raw_kwargs.items():
        if "unknown" in raw:
            unseen[key] = raw["unknown"]
        else:
            kwargs[key] = loader.value(raw)
    required = _required(signature, len(args), kwargs)
    for param_name, expression in unseen.items():
        if param_name in required:
            raise JobError(
                protocol.ERROR_USER,
                f"the constructor needs `{param_name}`, and the call passes `{expression}`, "
                "which torchls cannot see without running your script; add "
                "`# torchls: args=(...)` on the line above with literal values",
            )
        notes.append(f"used the default for `{param_name}` (the call passes `{expression}`)")
    missing = _required(signature, len(args), kwargs) - set(unseen)
    if missing:
        names = " and ".join(f"`{name}`" for name in sorted(missing))
        raise JobError(
            protocol.ERROR_USER,
            f"the constructor needs {names}; add `# torchls: args=(...)` above the class "
            "or the call, with literal values",
        )
    return args, kwargs


def _required(signature: inspect.Signature | None, given: int, kwargs: dict[str, Any]) -> set[str]:
    if signature is None:
        return set()
    required = set()
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is not parameter.empty or parameter.name in kwargs:
            continue
        if parameter.kind != parameter.KEYWORD_ONLY and index < given:
            continue
        required.add(parameter.name)
    return required


def _from_pretrained_as_from_config(
    loader: _Loader, function: Any, args: list[Any], kwargs: dict[str, Any]
) -> tuple[Any, list[Any], dict[str, Any]]:
    """`X.from_pretrained('./dir')` -> `X.from_config(config of ./dir)`: the architecture,
    never the weights, and never code from the folder (trust_remote_code=False)."""
    owner = getattr(function, "__self__", None)
    if owner is None or not args or not isinstance(args[0], str):
        raise JobError(protocol.ERROR_USER, "from_pretrained needs a folder as its first argument")
    folder = loader.local_folder(args[0])
    from transformers import AutoConfig

    config_kwargs = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
    try:
        config = AutoConfig.from_pretrained(
            folder, trust_remote_code=False, local_files_only=True, **config_kwargs
        )
    except Exception as exc:
        raise JobError(
            protocol.ERROR_USER,
            f"reading the config of {folder} failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
        ) from None
    if hasattr(owner, "from_config"):
        return owner.from_config, [config], {}
    return owner, [config], {}


@contextlib.contextmanager
def _parameters_to_meta(torch: Any) -> Iterator[None]:
    module_class = torch.nn.Module
    original = module_class.register_parameter

    def register_parameter(self: Any, name: str, param: Any) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = torch.nn.Parameter(
                param.detach().to("meta"), requires_grad=param.requires_grad
            )

    module_class.register_parameter = register_parameter
    try:
        yield
    finally:
        module_class.register_parameter = original


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
