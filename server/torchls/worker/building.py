"""Building the model of a profile or state-dict job: the constructor's arguments made real
(source/values.py's values: literals, references, allowed calls), matched to the signature,
and the model built with parameters on the meta device."""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchls.source.models import is_model_factory
from torchls.source.values import callable_allowed, settable
from torchls.worker import protocol
from torchls.worker.inputs import STATED_SIDES, advice
from torchls.worker.jobs import JobError, Params
from torchls.worker.loading import _describe, _Loader

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


def evaluate(loader: _Loader, value: dict[str, Any]) -> Any:
    """A value the server read from the source (source/values.py), made real."""
    if "literal" in value:
        return value["literal"]
    if "tuple" in value:
        return tuple(evaluate(loader, item) for item in value["tuple"])
    if "list" in value:
        return [evaluate(loader, item) for item in value["list"]]
    if "set" in value:
        return {evaluate(loader, item) for item in value["set"]}
    if "dict" in value:
        return {evaluate(loader, key): evaluate(loader, item) for key, item in value["dict"]}
    if "ref" in value:
        return loader.resolve(value["ref"])
    if "call" in value:
        call = value["call"]
        if not callable_allowed(call["ref"]):  # the server checks too; never trust one side
            raise JobError(protocol.ERROR_USER, f"torchls does not call {call['ref']}")
        function = loader.resolve(call["ref"])
        args = [evaluate(loader, item) for item in call["args"]]
        kwargs = {key: evaluate(loader, item) for key, item in call["kwargs"].items()}
        if getattr(function, "__name__", "") == "from_pretrained":
            kwargs = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS}
            kwargs.update(trust_remote_code=False, local_files_only=True)
            if args and isinstance(args[0], str):
                args[0] = local_folder(loader, args[0])
        made = function(*args, **kwargs)
        assigned = value.get("setattr") or {}
        if assigned and not settable(call["ref"]):
            raise JobError(protocol.ERROR_USER, f"torchls does not change {call['ref']}")
        for key, item in assigned.items():  # config.vocab_size = 50257 after the call
            setattr(made, str(key), evaluate(loader, item))
        return made
    raise JobError(protocol.ERROR_USER, f"cannot evaluate {value.get('unknown', value)!r}")


def _local_candidates(loader: _Loader, name: str) -> list[Path]:
    candidates = [Path(name).expanduser()]
    for base in [loader.context.workspace, *{str(Path(p).parent) for p in loader.user_files}]:
        if base and not Path(name).is_absolute():
            candidates.append(Path(base) / name)
    return candidates


def local_path(loader: _Loader, name: str) -> str:
    """A config path (a folder or a config.json) on disk, tried from the workspace and the file."""
    for candidate in _local_candidates(loader, name):
        if candidate.exists():
            return str(candidate)
    raise JobError(
        protocol.ERROR_USER,
        f"the config {name!r} is not a local folder or file; torchls never downloads models",
    )


def local_folder(loader: _Loader, name: str) -> str:
    """A from_pretrained path as a folder on disk, tried from the workspace and the file."""
    for candidate in _local_candidates(loader, name):
        if candidate.is_dir():
            return str(candidate)
    raise JobError(
        protocol.ERROR_USER,
        f"from_pretrained({name!r}) is not a local folder; torchls never downloads models. "
        "Point it at a folder with a config.json, or build the model with from_config",
    )


# -- building the model -------------------------------------------------------------------------


def _build_model(torch: Any, loader: _Loader, params: Params, notes: list[str]) -> tuple[Any, str]:
    with _no_weight_downloads(torch, notes):
        return _build(torch, loader, params, notes)


class _SkippedWeights(dict[str, Any]):
    """What `load_state_dict_from_url` gives while a model is built: no weights."""


@contextlib.contextmanager
def _no_weight_downloads(torch: Any, notes: list[str]) -> Iterator[None]:
    """Constructors that fetch pretrained weights (`resnet18(pretrained=True)` inside a
    LightningModule) build the same architecture without them: torchls never downloads, and the
    counts do not depend on the weights. While the model is built, torch.hub's
    `load_state_dict_from_url` (wherever a library bound it by name) returns no weights, and
    loading a state dict after that is skipped."""
    original = torch.hub.load_state_dict_from_url
    skipped: list[str] = []

    def no_download(url: Any, *args: Any, **kwargs: Any) -> _SkippedWeights:
        skipped.append(str(url))
        return _SkippedWeights()

    bound = [
        module
        for module in list(sys.modules.values())
        if module is not None
        and isinstance(getattr(module, "__dict__", None), dict)
        and vars(module).get("load_state_dict_from_url") is original
    ]
    module_class = torch.nn.Module
    load = module_class.load_state_dict

    def load_state_dict(self: Any, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        if skipped:  # the weights a skipped download would have given, or made from them
            return torch.nn.modules.module._IncompatibleKeys([], [])
        return load(self, state_dict, *args, **kwargs)

    for module in bound:
        setattr(module, "load_state_dict_from_url", no_download)  # noqa: B010
    module_class.load_state_dict = load_state_dict
    try:
        yield
    finally:
        for module in bound:
            setattr(module, "load_state_dict_from_url", original)  # noqa: B010
        module_class.load_state_dict = load
        if skipped:
            urls = list(dict.fromkeys(skipped))  # each way of building asks again
            name = urls[0].rsplit("/", 1)[-1]
            more = f" and {len(urls) - 1} more" if len(urls) > 1 else ""
            notes.append(
                f"pretrained weights not downloaded ({name}{more}): torchls never downloads, "
                "and the counts do not depend on the weights"
            )


def _build(torch: Any, loader: _Loader, params: Params, notes: list[str]) -> tuple[Any, str]:
    ref = dict(params["ref"])
    method = ref.pop("method", "")
    if "import" in ref and not is_model_factory(str(ref["import"])):
        raise JobError(protocol.ERROR_USER, f"{ref['import']} is not a model constructor")
    function = loader.resolve(ref)
    given = params.get("args") or params.get("kwargs") or params.get("hparams")
    defaults = [] if method or given else _default_config(function, notes)
    try:
        args, kwargs = _arguments_on_meta(torch, loader, function, params, notes, defaults)
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
        with torch.device("meta"), _devices_kept(torch):
            model = function(*args, **kwargs)
    except Exception as exc:
        # Some constructors need real values (`.item()`, numpy): build on the CPU instead, with
        # every parameter moved to meta as soon as it is registered.
        first_error = exc
        try:
            with _parameters_to_meta(torch), _devices_kept(torch):
                model = function(*args, **kwargs)
            model = model.to("meta")
            build = "empty"
        except Exception:
            model = None
        if model is None:
            # Some read their own parameters back for values (augmentation layers that take a
            # device from a parameter, then `.item()`, and refuse to move to meta): built for
            # real on the CPU, within the worker's memory limit; the forward then runs the way
            # that can (fake tensors, or the CPU).
            try:
                model = function(*args, **kwargs)
                build = "cpu"
                notes.append(
                    f"built on the CPU: the constructor cannot run on the meta device "
                    f"({_describe(first_error, loader)})"
                )
            except Exception:
                model = None
        if model is None:
            given = str(params.get("args_source") or "defaults")
            fix = "check them" if given == "--args" else f"check them, or {advice(params, 'args')}"
            raise JobError(
                protocol.ERROR_USER,
                f"{name}(...) failed: {_describe(first_error, loader)}; the arguments came "
                f"from {given}: {fix}",
            ) from None
    if not isinstance(model, torch.nn.Module):
        raise JobError(
            protocol.ERROR_USER,
            f"{name}(...) returned {type(model).__name__}, not a torch.nn.Module",
        )
    side = _stated_side(function, args, kwargs)
    if side is not None:
        STATED_SIDES[model] = side
    return model, build


_SIDE_NAMES = re.compile(r"(image|img|input|in)_?(size|side|res|resolution|hw)|resolution")


def _arguments_on_meta(
    torch: Any, loader: _Loader, function: Any, params: Params, notes: list[str], defaults: Any
) -> tuple[list[Any], dict[str, Any]]:
    """The arguments made under the meta device, as the model is: a model given as an argument
    (`Experiment(VanillaVAE(3, 128), {})`) then costs no memory and runs its forward on meta.
    Arguments whose making needs real values (`.item()`, numpy) are made again on the CPU."""
    if defaults:
        return defaults, {}
    kept = len(notes)
    try:
        with torch.device("meta"), _devices_kept(torch):
            return _arguments(loader, function, params, notes)
    except JobError:
        raise
    except Exception:
        del notes[kept:]
        return _arguments(loader, function, params, notes)


def _stated_side(function: Any, args: list[Any], kwargs: dict[str, Any]) -> int | None:
    """The image side the constructor was given (or defaults to) by a parameter whose name says
    so: `ViT(image_size=256, ...)`, `img_size=(64, 64)`."""
    try:
        bound = inspect.signature(function).bind_partial(*args, **kwargs)
        bound.apply_defaults()
    except (TypeError, ValueError):
        return None
    named = dict(bound.arguments)
    for value in list(named.values()):
        if isinstance(value, dict):  # **kwargs
            named.update({str(k): v for k, v in value.items()})
    for key, value in named.items():
        if not _SIDE_NAMES.fullmatch(key.lower()):
            continue
        if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 4096:
            return value
    return None


def _default_config(function: Any, notes: list[str]) -> list[Any]:
    """`GPT2LMHeadModel` with no arguments: a Hugging Face model takes a config, and its
    `config_class()` is the architecture's documented default, so build it from that."""
    config_class = getattr(function, "config_class", None)
    module = str(getattr(function, "__module__", ""))
    if not (isinstance(function, type) and module.startswith("transformers.")):
        return []
    if not isinstance(config_class, type) or not callable_allowed(
        {"import": f"transformers.{config_class.__name__}"}
    ):
        return []
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    first = next(iter(signature.parameters.values()), None)
    if first is None or first.default is not first.empty:
        return []
    notes.append(f"built from {config_class.__name__}() defaults (no arguments were given)")
    return [config_class()]


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
            kwargs[param_name] = evaluate(loader, raw)
        else:
            args.append(evaluate(loader, raw))
    for key, raw in raw_kwargs.items():
        if "unknown" in raw:
            unseen[key] = raw["unknown"]
        else:
            kwargs[key] = evaluate(loader, raw)
    required = _required(signature, len(args), kwargs)
    for param_name, expression in unseen.items():
        if param_name in required:
            raise JobError(
                protocol.ERROR_USER,
                f"the constructor needs `{param_name}`, and {_source(params)} passes "
                f"`{expression}`, which torchls cannot see without running your script; "
                f"{advice(params, 'args')}",
            )
        notes.append(f"used the default for `{param_name}` (the call passes `{expression}`)")
    missing = _required(signature, len(args), kwargs) - set(unseen)
    if missing:
        names = " and ".join(f"`{name}`" for name in sorted(missing))
        raise JobError(
            protocol.ERROR_USER,
            f"the constructor needs {names}; {advice(params, 'args')}",
        )
    return args, kwargs


def _source(params: Params) -> str:
    given = str(params.get("args_source") or "")
    return given if given and given != "defaults" else "the call"


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
    from transformers import AutoConfig, PretrainedConfig

    given = kwargs.get("config")
    rest = {k: v for k, v in kwargs.items() if k not in _LOADING_KWARGS and k != "config"}
    if isinstance(given, PretrainedConfig):
        # transformers builds the model from the config it is given, and the path, a folder or
        # the weights file itself (`./pytorch_model.bin`), only gives the weights; the other
        # keywords go to the model's constructor.
        config = given
        if hasattr(owner, "from_config"):
            return owner.from_config, [config], rest
        return owner, [config], rest
    if isinstance(given, str) and not owner.__name__.startswith("Auto"):
        # A concrete class reads a config given as a path (a folder or its config.json).
        config_class = getattr(owner, "config_class", None) or AutoConfig
        path = local_path(loader, given)
        try:
            config = config_class.from_pretrained(
                path, trust_remote_code=False, local_files_only=True
            )
        except Exception as exc:
            raise JobError(
                protocol.ERROR_USER,
                f"reading the config {given} failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
            ) from None
        return owner, [config], rest
    if not any(c.is_dir() for c in _local_candidates(loader, args[0])) and any(
        c.is_file() for c in _local_candidates(loader, args[0])
    ):
        raise JobError(
            protocol.ERROR_USER,
            f"{args[0]} is a weights file, and torchls cannot see the config object it is "
            "given (config=...), which says the architecture",
        )
    folder = local_folder(loader, args[0])
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
def _devices_kept(torch: Any) -> Iterator[None]:
    """Constructors place their layers: `nn.Conv2d(1, 32, 3).to(device)`, `.cuda()`, a buffer
    `.to(self.device)`. Copying a meta tensor to a real device raises ("Cannot copy out of meta
    tensor"), and on a machine without the GPU the user meant, the copy would fail anyway: while
    the model is built, a meta tensor stays where it is (a dtype asked for is still applied)."""
    tensor = torch.Tensor
    moves = {tensor.to, tensor.cuda, tensor.cpu}
    parse_to = torch._C._nn._parse_to

    class DevicesKept(torch.overrides.TorchFunctionMode):  # type: ignore[misc]
        def __torch_function__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            if func in moves and args and isinstance(args[0], tensor) and args[0].is_meta:
                if func is not tensor.to:
                    return args[0]
                device, dtype, _blocking, _format = parse_to(*args[1:], **kwargs)
                if device is not None and device.type != "meta":
                    return args[0] if dtype is None else func(args[0], dtype=dtype)
            return func(*args, **kwargs)

    with DevicesKept():
        yield


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
