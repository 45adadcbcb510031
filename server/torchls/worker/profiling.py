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
import resource
import sys
import time
from pathlib import Path
from typing import Any

from torchls.source.spec import symbol_of_json
from torchls.worker import protocol, submodule
from torchls.worker.building import _build_model
from torchls.worker.inputs import _guess_inputs
from torchls.worker.jobs import JobContext, JobError, Params
from torchls.worker.loading import _describe, _Loader
from torchls.worker.measure import (  # noqa: F401 (_measure: the tests call it)
    Counted,
    _copy,
    _count_parameters,
    _measure,
    _thop,
    count_forward,
)
from torchls.worker.shapes import PinnedLoader
from torchls.worker.sweep import concrete, nominal_value, run_sweep
from torchls.worker.training import empty_result, measure_training


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

    # pinned: the text each workspace file ran with is the text its shape hints are keyed to
    loader = PinnedLoader(context, params.get("sources") or {})
    loader.forget_workspace_modules()
    notes: list[str] = []
    step = time.perf_counter()
    model, build = _build_model(torch, loader, params, notes)
    timings["build"] = time.perf_counter() - step

    _refuse_abstract(torch, model, loader)
    step = time.perf_counter()
    spec = params.get("inputs") or _guess_inputs(torch, model, params)
    # A named dimension (`(1, L):long`): the profile runs at its written value (else the
    # sweep's first), the sweep on a copy of the model as built, before any forward touched it
    symbolic = spec if symbol_of_json(spec) else None
    sweep_params = params.get("sweep") if isinstance(params.get("sweep"), dict) else None
    sweep_model = None
    if symbolic is not None:
        symbol = str(symbol_of_json(symbolic))
        nominal = nominal_value(symbolic, sweep_params)
        if nominal is None:
            raise JobError(
                protocol.ERROR_USER,
                f"the input names a dimension {symbol} without a value: write one, e.g. "
                f"({symbol}=512), or list sizes to sweep",
            )
        spec = concrete(symbolic, symbol, nominal)
        if sweep_params is not None:
            sweep_model = _copy(model)  # the model as built, before any forward touched it
    # `self.x = ...` hovers: x's share, watched on whichever model the forward runs on
    watches: list[submodule.SubmoduleWatch | None] = []
    counted = count_forward(
        torch,
        model,
        spec,
        loader,
        context.memory_limit_mb,
        prepare=lambda running: watches.append(submodule.watch(torch, running, params)),
        trace_shapes=bool(params.get("trace_shapes", True)),
    )
    watched = watches[-1] if watches else None
    measured = counted.measured
    try:  # after the forward: lazy modules (nn.LazyLinear) have their shapes only then
        counts = _count_parameters(torch, counted.model)
    except Exception as exc:
        raise JobError(
            protocol.ERROR_USER, f"counting the parameters failed: {_describe(exc, loader)}"
        ) from None
    timings["count"] = time.perf_counter() - step
    share = watched.result(measured, counts) if watched else None  # unhooked before thop

    step = time.perf_counter()
    thop = None
    if params.get("thop", True):
        # fake weights need their mode; thop's own counters must not land on meta
        with counted.device() if counted.mode == "fake" else contextlib.nullcontext():
            thop = _thop(torch, counted.model, counted.inputs, measured)
        if thop and "error" in thop and not counted.plain:
            thop["error"] = (
                "it needs real tensors for this forward, which torchls counted without "
                f"them ({thop['error']})"
            )
    timings["thop"] = time.perf_counter() - step

    step = time.perf_counter()
    training = (
        measure_training(torch, counted, spec, loader)
        if params.get("training", True)
        else empty_result()
    )
    timings["training"] = time.perf_counter() - step
    sweep = None
    if symbolic is not None and sweep_params is not None:
        step = time.perf_counter()
        sweep = run_sweep(
            torch,
            sweep_model if sweep_model is not None else model,
            symbolic,
            sweep_params,
            loader,
            context.memory_limit_mb,
        )
        timings["sweep"] = time.perf_counter() - step

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
        "tree": measured["tree"],
        "tree_truncated": measured["tree_truncated"],
        "shapes": counted.shapes,
        "modules": measured["modules"],
        "thop": thop,
        "training": training,
        "sweep": sweep,
        # how the forward ran: "meta", "fake" (fake tensors) or "cpu" (random weights), and
        # why the ways before it could not
        "mode": counted.mode,
        "mode_reason": counted.why or None,
        "variation": _variation(counted),
        "submodule": share,
        "notes": [*notes, *loader.notes()],
        "torch": str(torch.__version__),
        "seconds": {key: round(value, 4) for key, value in timings.items()},
        # the worker's high-water mark so far (Linux reports KiB)
        "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _refuse_abstract(torch: Any, model: Any, loader: _Loader) -> None:
    """A base class whose forward() is left to subclasses (no forward, `@abstractmethod`, or a
    body that only raises NotImplementedError) has nothing to count: say so, and name the
    subclasses that implement it, instead of failing on a guessed input."""
    model_type = type(model)
    forward = getattr(model_type, "forward", None)
    name = model_type.__name__
    if forward is None or forward is torch.nn.Module.forward:
        why = f"{name} defines no forward() (nor does a base class of it)"
    elif getattr(forward, "__isabstractmethod__", False) or _body_of(forward) == "raises":
        where = _where_defined(forward)
        why = f"{name}.forward(){where} is abstract: it leaves the work to subclasses"
    elif _body_of(forward) == "empty":
        where = _where_defined(forward)
        why = f"{name}.forward(){where} is empty (only `pass`): it computes nothing"
    else:
        return
    implementing = [
        sub
        for sub in _subclasses(model_type)
        if getattr(sub, "forward", None) not in (None, forward, torch.nn.Module.forward)
    ]
    if implementing:
        shown = ", ".join(_target_text(sub, loader) for sub in implementing[:3]) + (
            f" and {len(implementing) - 3} more" if len(implementing) > 3 else ""
        )
        hint = f"profile a subclass that implements it: {shown}"
    elif "is empty" in why:
        hint = "write its forward() first"
    else:
        hint = "profile a subclass that implements it"
    raise JobError(protocol.ERROR_USER, f"{why}; there is nothing to count; {hint}")


def _subclasses(model_type: type) -> list[type]:
    found: list[type] = []
    queue: list[type] = list(model_type.__subclasses__())
    while queue and len(found) < 100:
        sub = queue.pop(0)
        if sub not in found:
            found.append(sub)
            queue += sub.__subclasses__()
    return found


def _target_text(model_type: type, loader: _Loader) -> str:
    """`models/vanilla_vae.py::VanillaVAE`, as `torchls profile` takes it, for a class of the
    workspace; the class's dotted name for one elsewhere."""
    module = sys.modules.get(model_type.__module__)
    path = getattr(module, "__file__", None)
    workspace = loader.context.workspace
    if path and workspace:
        with contextlib.suppress(ValueError):
            relative = Path(path).resolve().relative_to(Path(workspace).resolve())
            return f"{relative.as_posix()}::{model_type.__name__}"
    return f"{model_type.__module__}.{model_type.__qualname__}"


def _where_defined(function: Any) -> str:
    """` (base.py, line 23)`: the `def` line, after any decorators."""
    import inspect

    try:
        lines, first = inspect.getsourcelines(function)
        path = inspect.getsourcefile(function) or ""
    except (OSError, TypeError):
        return ""
    for offset, text in enumerate(lines):
        if text.lstrip().startswith(("def ", "async def ")):
            return f" ({Path(path).name}, line {first + offset})"
    return f" ({Path(path).name}, line {first})"


def _body_of(function: Any) -> str:
    """ "raises" when a function's body, read from its source, only raises NotImplementedError
    (after an optional docstring), "empty" when it is only `pass` or `...`, else ""."""
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return ""
    definition = tree.body[0] if tree.body else None
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return ""
    body = list(definition.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body or all(
        isinstance(s, ast.Pass)
        or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s.value.value is ...)
        for s in body
    ):
        return "empty"
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return ""
    raised = body[0].exc
    if isinstance(raised, ast.Call):
        raised = raised.func
    named = isinstance(raised, ast.Name) and raised.id == "NotImplementedError"
    return "raises" if named else ""


def _variation(counted: Counted) -> dict[str, Any] | None:
    """Counts that differ between forwards (stochastic depth, layers dropped at random even in
    eval mode): the range, so that no one figure passes for exact."""
    if not counted.varies:
        return None
    low, high = min(counted.runs), max(counted.runs)
    return {
        "runs": len(counted.runs),
        "macs": {"min": low // 2, "max": high // 2},
        "flops": {"min": low, "max": high},
        "module": counted.varying or None,
    }
