"""Counting a built model: parameters, one forward pass under FlopCounterMode with hooks per
module (output shapes, the heaviest layers), and thop's figure beside ours."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
from typing import Any

from torchls.source.spec import describe_json
from torchls.worker import protocol
from torchls.worker.inputs import forward
from torchls.worker.jobs import JobError
from torchls.worker.loading import _describe, _Loader

TOP_LAYERS = 8
_ATTENTION_OPS = ("attention", "sdpa")
_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_int_mm")


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
            output = forward(model, inputs)
    except Exception as exc:
        where = "with the guessed input " if spec.get("guess") else "with the input "
        shape = describe_json(spec)
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
    if getattr(inputs, "kwargs", None):
        return {"version": version, "error": "thop passes no inputs by name"}
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
