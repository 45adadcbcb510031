"""The `profile` job: build a model on the meta device and count what it costs.

Runs in the worker only (it imports torch and runs the user's code). The model is built under
`torch.device("meta")`, so parameters take no memory and a 7-billion-parameter model builds in
milliseconds; one forward pass with meta inputs runs under `FlopCounterMode` with gradients
enabled (PyTorch's fused inference fast paths hide work from the counter under `no_grad`).
Forward hooks attribute the count to modules and record output shapes. Where thop is installed,
it counts a throwaway deep copy, and the difference is explained per module type.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import io
import os
import resource
import sys
import time
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

TOP_LAYERS = 8
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
_ATTENTION_OPS = ("attention", "sdpa")
_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_int_mm")


def _import_torch(context: JobContext) -> Any:
    if not context.allow_user_code:
        raise JobError(
            protocol.ERROR_UNTRUSTED,
            "torchls runs no code from this workspace (it is not trusted, or "
            "torchls.allowUserCode is off)",
        )
    try:
        import torch
    except Exception as exc:
        raise JobError(
            protocol.ERROR_USER,
            f"torch is not usable in {sys.executable}: {type(exc).__name__}: {exc}",
        ) from None
    return torch


def state_dict_shapes(context: JobContext, params: Params) -> dict[str, Any]:
    """The model's `state_dict()` keys with shapes and dtypes, built on meta: what a checkpoint
    must provide (persistent buffers included, non-persistent ones not, as torch saves them)."""
    torch = _import_torch(context)
    loader = _Loader(context, params.get("sources") or {})
    loader.forget_workspace_modules()
    notes: list[str] = []
    model, build = _build_model(torch, loader, params, notes)
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    # Keys that share one tensor (a tied lm_head): loading either fills both.
    first_of: dict[int, str] = {}
    tied: dict[str, str] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        if tensor is None:
            continue
        owner = first_of.setdefault(id(tensor), name)
        if owner != name:
            tied[name] = owner
            tied.setdefault(owner, name)
    keys = {key: _entry(torch, key, value, parameters) for key, value in model.state_dict().items()}
    model_type = type(model)
    prefix = getattr(model, "base_model_prefix", None)
    return {
        "class": f"{model_type.__module__}.{model_type.__qualname__}",
        "build": build,
        "base_model_prefix": prefix if isinstance(prefix, str) and prefix else None,
        "keys": keys,
        "tied": {key: other for key, other in tied.items() if key in keys and other in keys},
        "notes": notes,
    }


def _entry(torch: Any, key: str, value: Any, parameters: set[str]) -> dict[str, Any]:
    """A state-dict entry; shape None when it has none yet (a lazy module's uninitialized
    parameter, which load_state_dict materializes) or is no tensor (get_extra_state)."""
    lazy = isinstance(value, torch.nn.parameter.UninitializedTensorMixin)
    if lazy or not isinstance(value, torch.Tensor):
        return {"shape": None, "dtype": None, "parameter": key in parameters}
    return {
        "shape": list(value.shape),
        "dtype": str(value.dtype).removeprefix("torch."),
        "parameter": key in parameters,
    }


def profile(context: JobContext, params: Params) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    torch = _import_torch(context)
    timings["import"] = time.perf_counter() - started

    loader = _Loader(context, params.get("sources") or {})
    loader.forget_workspace_modules()
    notes: list[str] = []
    step = time.perf_counter()
    model, build = _build_model(torch, loader, params, notes)
    timings["build"] = time.perf_counter() - step

    step = time.perf_counter()
    spec = params.get("inputs") or _guess_inputs(torch, model)
    inputs = _make_inputs(torch, spec)
    measured = _measure(torch, model, inputs, spec, loader)
    try:  # after the forward: lazy modules (nn.LazyLinear) have their shapes only then
        counts = _count_parameters(torch, model)
    except Exception as exc:
        raise JobError(
            protocol.ERROR_USER, f"counting the parameters failed: {_describe(exc, loader)}"
        ) from None
    timings["count"] = time.perf_counter() - step

    step = time.perf_counter()
    thop = _thop(torch, model, inputs, measured) if params.get("thop", True) else None
    timings["thop"] = time.perf_counter() - step

    model_type = type(model)
    return {
        "name": params.get("name") or model_type.__name__,
        "class": f"{model_type.__module__}.{model_type.__qualname__}",
        "build": build,
        "parameters": counts["parameters"],
        "buffers": counts["buffers"],
        "macs": measured["flops"] // 2,
        "flops": measured["flops"],
        "ops": measured["ops"],
        "inputs": spec,
        "output": measured["output"],
        "layers": measured["layers"],
        "modules": measured["modules"],
        "thop": thop,
        "notes": notes,
        "torch": str(torch.__version__),
        "seconds": {key: round(value, 4) for key, value in timings.items()},
        # the worker's high-water mark so far (Linux reports KiB)
        "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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


# -- counting -----------------------------------------------------------------------------------


def _count_parameters(torch: Any, model: Any) -> dict[str, Any]:
    total = trainable = parameter_bytes = 0
    dtypes: dict[str, int] = {}
    seen: set[int] = set()
    for _name, parameter in model.named_parameters(remove_duplicate=True):
        seen.add(id(parameter))
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
        parameter_bytes += count * parameter.element_size()
        key = str(parameter.dtype).removeprefix("torch.")
        dtypes[key] = dtypes.get(key, 0) + count
    shared = sum(1 for _ in model.named_parameters(remove_duplicate=False)) - len(seen)
    buffer_count = buffer_bytes = buffer_tensors = 0
    for _name, buffer in model.named_buffers(remove_duplicate=True):
        buffer_tensors += 1
        buffer_count += buffer.numel()
        buffer_bytes += buffer.numel() * buffer.element_size()
    return {
        "parameters": {
            "total": total,
            "trainable": trainable,
            "frozen": total - trainable,
            "bytes": parameter_bytes,
            "dtypes": dtypes,
            "shared": shared,
        },
        "buffers": {"total": buffer_count, "bytes": buffer_bytes, "tensors": buffer_tensors},
    }


def _guess_inputs(torch: Any, model: Any) -> dict[str, Any]:
    """An input shape read off the model when none is written anywhere: labelled a guess."""
    config = getattr(model, "config", None)
    main_input = getattr(model, "main_input_name", None)
    if config is not None and main_input:
        if main_input == "input_ids":
            length = min(128, int(getattr(config, "max_position_embeddings", 128) or 128))
            return _guess([[1, length]], "int64", f"{type(model).__name__} takes token ids")
        if main_input == "pixel_values":
            size = getattr(config, "image_size", 224)
            size = size[0] if isinstance(size, (list, tuple)) else size
            channels = getattr(config, "num_channels", 3)
            return _guess([[1, channels, size, size]], "float32", f"the config's image_size {size}")
    nn = torch.nn
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            continue  # its input size is what the forward pass decides
        where = f"the first layer, `{path}` {type(module).__name__}"
        if isinstance(module, nn.Conv2d):
            return _guess([[1, module.in_channels, 224, 224]], "float32", where)
        if isinstance(module, nn.Conv1d):
            return _guess([[1, module.in_channels, 1024]], "float32", where)
        if isinstance(module, nn.Conv3d):
            return _guess([[1, module.in_channels, 16, 112, 112]], "float32", where)
        if isinstance(module, nn.Linear):
            return _guess([[1, module.in_features]], "float32", where)
        if isinstance(module, nn.Embedding):
            return _guess([[1, 128]], "int64", where)
        if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
            shape = [1, 32, module.input_size] if module.batch_first else [32, 1, module.input_size]
            return _guess([shape], "float32", where)
    raise JobError(
        protocol.ERROR_USER,
        "torchls cannot tell this model's input shape; add `# torchls: input=(1, 3, 224, 224)` "
        "(your shape) above the class or the call",
    )


def _guess(shapes: list[list[int]], dtype: str, why: str) -> dict[str, Any]:
    return {
        "tensors": [{"shape": shape, "dtype": dtype} for shape in shapes],
        "source": f"a guess from {why}",
        "guess": True,
    }


def _make_inputs(torch: Any, spec: dict[str, Any]) -> list[Any]:
    tensors = []
    for item in spec["tensors"]:
        dtype = getattr(torch, str(item.get("dtype", "float32")))
        tensors.append(torch.empty(tuple(item["shape"]), dtype=dtype, device="meta"))
    return tensors


def _first_tensor(value: Any, torch: Any, depth: int = 0) -> Any:
    if isinstance(value, torch.Tensor):
        return value
    if depth > 3:
        return None
    if isinstance(value, dict) or (hasattr(value, "values") and callable(value.values)):
        with contextlib.suppress(Exception):
            value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item, torch, depth + 1)
            if found is not None:
                return found
    return None


def _measure(
    torch: Any, model: Any, inputs: list[Any], spec: dict[str, Any], loader: _Loader
) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    names: dict[int, str] = {}
    modules: dict[str, Any] = {}
    for path, module in model.named_modules():
        names[id(module)] = path
        modules[path] = module
    inclusive: dict[str, int] = dict.fromkeys(modules, 0)
    shapes: dict[str, list[int]] = {}
    started: dict[int, list[int]] = {}
    counter = FlopCounterMode(display=False)

    def total() -> int:
        return int(sum(counter.flop_counts["Global"].values()))

    # Each op is counted for the module running when it happens (the top of the call stack),
    # so a module called from outside its parent, or functional calls in a forward(), land on
    # the module that made them.
    own_flops: dict[str, int] = dict.fromkeys(modules, 0)
    running: list[str] = []
    mark = [0]

    def settle() -> int:
        now = total()
        if running:
            own_flops[running[-1]] += now - mark[0]
        mark[0] = now
        return now

    def before(module: Any, args: Any) -> None:
        now = settle()
        running.append(names[id(module)])
        started.setdefault(id(module), []).append(now)

    called: set[str] = set()

    def after(module: Any, args: Any, output: Any) -> None:
        stack = started.get(id(module))
        if not stack:
            return
        now = settle()
        path = names[id(module)]
        if running and running[-1] == path:
            running.pop()
        called.add(path)
        inclusive[path] += now - stack.pop()
        tensor = _first_tensor(output, torch)
        if tensor is not None and path not in shapes:
            shapes[path] = list(tensor.shape)

    handles = []
    for module in modules.values():
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    model.eval()
    try:
        with torch.enable_grad(), counter:
            output = model(*inputs)
    except Exception as exc:
        where = "with the guessed input " if spec.get("guess") else "with the input "
        shape = ", ".join(str(tuple(t["shape"])) for t in spec["tensors"])
        raise JobError(
            protocol.ERROR_USER,
            f"forward() failed {where}{shape}: {_describe(exc, loader)}",
        ) from None
    finally:
        for handle in handles:
            handle.remove()

    flops = total()
    ops: dict[str, int] = {"convolution": 0, "matmul": 0, "attention": 0, "other": 0}
    for op, count in counter.flop_counts["Global"].items():
        name = str(op).removeprefix("aten.").split(".")[0]
        if "conv" in name:
            ops["convolution"] += int(count) // 2
        elif any(key in name for key in _ATTENTION_OPS):
            ops["attention"] += int(count) // 2
        elif name in _MATMUL_OPS:
            ops["matmul"] += int(count) // 2
        else:
            ops["other"] += int(count) // 2
    _fill_containers(modules, inclusive, called)
    own = {path: count // 2 for path, count in own_flops.items()}
    layers = []
    for path, macs in sorted(own.items(), key=lambda item: -item[1])[:TOP_LAYERS]:
        if macs <= 0:
            break
        module = modules[path]
        layers.append(
            {
                "path": path or f"({type(module).__name__}.forward)",
                "type": type(module).__name__,
                "output": shapes.get(path),
                "params": sum(p.numel() for p in module.parameters()),
                "macs": macs,
                "share": macs / (flops // 2) if flops else 0.0,
            }
        )
    result = _first_tensor(output, torch)
    return {
        "flops": flops,
        "ops": ops,
        "layers": layers,
        "output": list(result.shape) if result is not None else None,
        "modules": len(modules),
        "own": own,
        "inclusive": {path: count // 2 for path, count in inclusive.items()},
    }


def _fill_containers(modules: dict[str, Any], inclusive: dict[str, int], called: set[str]) -> None:
    """A module that is never called itself (a ModuleList, a ModuleDict, a holder of layers that
    its parent iterates) costs what its children cost."""
    ids = {id(module): path for path, module in modules.items()}

    def total(path: str) -> int:
        if path in called:
            return inclusive[path]
        children = {ids[id(c)] for c in modules[path].children() if id(c) in ids}
        inclusive[path] = sum(total(child) for child in children)
        called.add(path)
        return inclusive[path]

    for path in sorted(modules, key=lambda p: -p.count(".")):
        total(path)


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


# -- thop, for comparison -----------------------------------------------------------------------


def _thop(torch: Any, model: Any, inputs: list[Any], measured: dict[str, Any]) -> Any:
    if importlib.util.find_spec("thop") is None:
        return None
    from importlib import metadata

    version = None
    for distribution in ("thop", "ultralytics-thop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = metadata.version(distribution).split("-")[0]
            break
    try:
        import thop

        throwaway = copy.deepcopy(model)  # thop leaves total_ops/total_params buffers behind
        with contextlib.redirect_stdout(io.StringIO()):
            result = thop.profile(
                throwaway, inputs=tuple(inputs), verbose=False, ret_layer_info=True
            )
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"version": version, "error": f"{type(exc).__name__}: {message}"[:200]}
    macs, params, layers = float(result[0]), float(result[1]), result[2]
    ours = measured["flops"] // 2
    difference = (macs - ours) / ours if ours else (0.0 if macs == 0 else 1.0)
    return {
        "version": version,
        "macs": round(macs),
        "params": round(params),
        "difference": difference,
        "by_type": _thop_differences(model, layers, measured),
    }


def _thop_differences(
    model: Any, layers: dict[str, Any], measured: dict[str, Any]
) -> list[dict[str, Any]]:
    """Where thop's count and ours part, summed per module type: positive = thop counts more."""
    own: dict[str, int] = measured["own"]
    inclusive: dict[str, int] = measured["inclusive"]
    by_type: dict[str, int] = {}

    def add(type_name: str, amount: float) -> None:
        if amount:
            by_type[type_name] = by_type.get(type_name, 0) + round(amount)

    def walk(module: Any, path: str, thop_node: tuple[float, float, dict[str, Any]] | None) -> None:
        children = dict(module.named_children())
        thop_total = thop_node[0] if thop_node else 0.0
        thop_children: dict[str, Any] = thop_node[2] if thop_node else {}
        if not children or (thop_node is not None and not thop_children):
            # thop's figure for this module covers everything below it
            add(type(module).__name__, thop_total - inclusive.get(path, 0))
            return
        thop_own = thop_total - sum(child[0] for child in thop_children.values())
        add(type(module).__name__, thop_own - own.get(path, 0))
        for name, child in children.items():
            walk(child, f"{path}.{name}" if path else name, thop_children.get(name))

    root = (sum(node[0] for node in layers.values()), 0.0, layers)
    walk(model, "", root)
    # layers only holds the root's children: the root's own thop count is zero by construction
    ranked = sorted(by_type.items(), key=lambda item: -abs(item[1]))
    return [{"type": name, "difference": amount} for name, amount in ranked if amount][:8]
