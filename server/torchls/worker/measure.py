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
import logging
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.source.spec import describe_json
from torchls.worker import mismatch, protocol
from torchls.worker.inputs import _make_inputs, forward
from torchls.worker.jobs import JobError
from torchls.worker.loading import _describe, _Loader
from torchls.worker.shapes import ShapeTracer
from torchls.worker.tree import grouped_layers, module_tree

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
    torch: Any,
    model: Any,
    inputs: list[Any],
    spec: dict[str, Any],
    loader: _Loader,
    device: Any = contextlib.nullcontext,
    tracer: ShapeTracer | None = None,
) -> dict[str, Any]:
    """One forward pass counted; `device` makes the context it runs in (the default device,
    a fake tensor mode); `tracer`, when given, records the shapes the workspace's lines bind.
    An exception of the forward propagates, for the caller to try the next way of running it;
    a shape error carries its analysis (mismatch.ATTRIBUTE)."""
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

    inputs_of: dict[str, Any] = {}  # each module's latest positional inputs
    finished: list[list[int]] = []  # output shapes in the order modules finished (last few)
    calls: dict[str, int] = dict.fromkeys(modules, 0)

    def before(module: Any, args: Any) -> None:
        now = settle()
        path = names[id(module)]
        running.append(path)
        inputs_of[path] = args
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
        calls[path] += 1
        inclusive[path] += now - stack.pop()
        tensor = _first_tensor(output, torch)
        if tensor is not None:
            shape = list(tensor.shape)
            shapes.setdefault(path, shape)
            finished.append(shape)
            if len(finished) > 16:
                del finished[0]

    handles = []
    for module in modules.values():
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    model.eval()
    try:
        watching = tracer if tracer is not None else contextlib.nullcontext()
        with torch.enable_grad(), device(), counter, watching:
            output = forward(model, inputs)
    except Exception as exc:
        with contextlib.suppress(Exception):
            found = mismatch.analyze(
                torch,
                exc,
                loader,
                model,
                names,
                running,
                inputs_of,
                finished,
                describe_json(spec),
            )
            if found is not None:
                setattr(exc, mismatch.ATTRIBUTE, found)
        raise
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
    ran = set(called)
    _fill_containers(modules, inclusive, called)
    own = {path: count // 2 for path, count in own_flops.items()}
    macs = flops // 2
    inclusive_macs = {path: count // 2 for path, count in inclusive.items()}
    tree, truncated = module_tree(modules, inclusive_macs, own, shapes, calls, macs)
    result = _first_tensor(output, torch)
    return {
        "flops": flops,
        "ops": ops,
        "layers": grouped_layers(modules, own, shapes, macs),
        "tree": tree,
        "tree_truncated": truncated,
        "output": list(result.shape) if result is not None else None,
        "modules": len(modules),
        "ran": ran,  # the modules whose forward ran
        "own": own,
        "inclusive": inclusive_macs,
    }


# -- ways of running the forward ---------------------------------------------------------------

RUNS = 3  # forwards per count while they are quick: more show whether the count varies
QUICK_SECONDS = 0.5
MAX_RUNS = 8  # when it varies, more runs widen the range
RUN_BUDGET = 20.0  # seconds of forwards after the second, however many that is


@dataclass
class Counted:
    """The forward that counted: how it ran, the model and inputs it ran on, its counts."""

    mode: str
    model: Any
    inputs: list[Any]
    measured: dict[str, Any]
    device: Any  # the context it ran in, for thop
    why: str = ""  # why the ways before this one did not run
    runs: list[int] = field(default_factory=list)  # FLOPs of each run
    varies: bool = False  # the runs did not all do the same work
    varying: str = ""  # the module whose forward decides which layers run, when they vary
    plain: bool = False  # ran as thop would run it: on meta as it is, or on real tensors
    shapes: list[dict[str, Any]] | None = None  # what the workspace's lines bound (first run)


def count_forward(
    torch: Any,
    model: Any,
    spec: dict[str, Any],
    loader: _Loader,
    memory_limit_mb: int,
    prepare: Callable[[Any], None] = lambda model: None,
    trace_shapes: bool = False,
) -> Counted:
    """Count one forward on the meta device, with tensors made in forward() landing there too;
    where that cannot run (values read with `.item()`, `.numpy()`, tensors put on the CPU),
    with fake tensors (shapes and devices without storage), and last, when the weights fit the
    worker's memory, for real on the CPU with random weights. Each way counts the same ops,
    so the count is exact whichever ran; the result says which. `prepare` sees each model
    before its forward (to hook it); what it raises is not a failed forward. With
    `trace_shapes`, the first forward of each way records the shapes its workspace lines bind;
    the way that ran keeps them (`Counted.shapes`)."""
    trace = trace_shapes
    # Each way starts from the model as built: a failed forward may leave state behind (a
    # mask cached on the meta device) and the next way converts the tensors.
    pristine = _copy(model)
    prepare(model)
    try:
        return _run(
            torch, "meta", model, _make_inputs(torch, spec), spec, loader, _meta(torch), "", trace
        )
    except Exception as exc:
        first = exc
    why = f"the meta device could not run {_where(first, loader)}"
    # Tensors made in forward() on the CPU can also be what makes it work: a mask made there
    # lets torch read its values (nn.TransformerEncoder checks whether it is causal).
    again = _copy(pristine)
    prepare(again)
    with contextlib.suppress(Exception):
        inputs = _make_inputs(torch, spec)
        counted = _run(
            torch, "meta", again, inputs, spec, loader, contextlib.nullcontext, "", trace
        )
        counted.plain = True
        return counted

    try:
        mode, fake_model, fake_inputs = _fake_model(torch, _copy(pristine), spec)
    except Exception:
        fake_model = None
    if fake_model is not None:
        prepare(fake_model)
        with contextlib.suppress(Exception), _quiet_fake_tensors():
            context = _counting_attention(torch, mode)
            return _run(torch, "fake", fake_model, fake_inputs, spec, loader, context, why, trace)

    need = 3 * _weight_bytes(pristine)  # the weights, their initialisation, activations
    room = _memory_room(memory_limit_mb)
    if need > room:
        raise _failed(
            spec,
            loader,
            first,
            f"; a CPU forward with random weights would need about {need >> 20:,} MB, more "
            f"than the worker's {room >> 20:,} MB free",
        )
    try:
        cpu_model = _on_cpu(torch, _copy(pristine))
        cpu_inputs = _cpu_inputs(torch, cpu_model, spec)
    except Exception:
        raise _failed(spec, loader, first, "") from None
    prepare(cpu_model)
    try:
        context = _counting_attention(torch, contextlib.nullcontext())
        counted = _run(torch, "cpu", cpu_model, cpu_inputs, spec, loader, context, why, trace)
        counted.plain = True
        return counted
    except Exception as exc:
        # A real forward's error is the user's own, where the meta device's may be torchls's.
        raise _failed(spec, loader, exc, "") from None


def _run(
    torch: Any,
    mode: str,
    model: Any,
    inputs: list[Any],
    spec: dict[str, Any],
    loader: _Loader,
    device: Any,
    why: str = "",
    trace_shapes: bool = False,
) -> Counted:
    runs: list[dict[str, Any]] = []
    first = time.perf_counter()
    draws = False
    tracer = ShapeTracer(torch, loader) if trace_shapes else None
    while True:
        started = time.perf_counter()
        state = _random_state(torch)
        watching = tracer if not runs else None  # the first forward only
        runs.append(_measure(torch, model, inputs, spec, loader, device, watching))
        # A forward that draws random numbers in eval mode may skip layers at random: worth
        # more runs than a second one, which agrees with the first more often than not.
        draws = draws or _random_state(torch) != state
        quick = time.perf_counter() - started < QUICK_SECONDS
        varies = len({_which_ran(run) for run in runs}) > 1
        enough = MAX_RUNS if varies or draws else RUNS if quick else 2
        if len(runs) >= enough or (len(runs) >= 2 and time.perf_counter() - first > RUN_BUDGET):
            break
    # The largest count, with its own layers, so the figures of one run agree with each other.
    measured = max(runs, key=lambda run: int(run["flops"]))
    counted = Counted(mode, model, inputs, measured, device, why, [run["flops"] for run in runs])
    if tracer is not None:
        counted.shapes = tracer.result()
    if len({_which_ran(run) for run in runs}) > 1:
        counted.varies = True
        counted.varying = _deciding_module(model, runs)
    return counted


def _random_state(torch: Any) -> tuple[Any, ...]:
    """The state of the random generators a forward may draw from: Python's, torch's CPU
    generator (meta tensors draw from none), numpy's when the user's code imported it."""
    numpy = sys.modules.get("numpy")
    numpy_state: Any = None
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy_state = bytes(numpy.random.get_state()[1].tobytes())
    return (random.getstate(), bytes(torch.random.get_rng_state().numpy()), numpy_state)


def _which_ran(measured: dict[str, Any]) -> tuple[Any, ...]:
    """What a run did: its count, and each module's own share (which layers ran)."""
    return (measured["flops"], *sorted(measured["own"].items()))


def _deciding_module(model: Any, runs: list[dict[str, Any]]) -> str:
    """`transformer` (Transformer): the innermost module whose forward holds every difference
    between the runs; "" when it is the model's own forward."""
    changed = [
        path
        for path in runs[0]["own"]
        if len({run["own"].get(path, 0) for run in runs}) > 1 and path
    ]
    if not changed:
        return ""
    parts = changed[0].split(".")
    for path in changed[1:]:
        other = path.split(".")
        common = 0
        while common < min(len(parts), len(other)) and parts[common] == other[common]:
            common += 1
        parts = parts[:common]
    modules = dict(model.named_modules())
    # A changed module's own work varies because its parent skipped or repeated it.
    if ".".join(parts) in changed:
        parts = parts[:-1]
    while parts and ".".join(parts) not in runs[0]["ran"]:
        parts = parts[:-1]
    path = ".".join(parts)
    if not path or path not in modules:
        return ""
    return f"`{path}` ({type(modules[path]).__name__})"


def _failed(spec: dict[str, Any], loader: _Loader, exc: BaseException, tail: str) -> JobError:
    """The job's error; a shape error says the shapes and carries them as `shape_error` data."""
    where = "with the guessed input " if spec.get("guess") else "with the input "
    shape = describe_json(spec)
    found = getattr(exc, mismatch.ATTRIBUTE, None)
    summary = f"; {found['summary']}" if found and found.get("summary") else ""
    return JobError(
        protocol.ERROR_USER,
        f"forward() failed {where}{shape}: {_describe(exc, loader)}{summary}{tail}",
        data={"shape_error": found} if found else None,
    )


def _where(exc: BaseException, loader: _Loader) -> str:
    """ "`mask.item()` on line 12 of model.py (Tensor.item() cannot be called on meta tensors)"."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(message) > 120:
        message = message[:117] + "..."
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if loader is not None and loader.is_user_file(frame.filename):
            code = (frame.line or "").strip()
            if len(code) > 60:
                code = code[:57] + "..."
            line = f"line {frame.lineno} of {Path(frame.filename).name}"
            return f"`{code}` on {line} ({message})" if code else f"{line} ({message})"
    return f"the forward ({message})"


def _copy(model: Any) -> Any:
    try:
        return copy.deepcopy(model)
    except Exception:
        return model  # not copyable: the next way runs on the model as the last one left it


def _meta(torch: Any) -> Any:
    # tensors made in forward() without a device (torch.zeros(n, 51)) then meet meta ones
    return lambda: torch.device("meta")


def _counting_attention(torch: Any, inner: Any) -> Callable[[], Any]:
    """`inner`, with scaled_dot_product_attention on its math backend: on the CPU (fake CPU
    tensors too) it runs a fused kernel that FlopCounterMode counts as nothing, where on meta
    it is the matmuls the math backend does."""

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(ImportError):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            stack.enter_context(inner)
            yield

    return context


@contextlib.contextmanager
def _quiet_fake_tensors() -> Iterator[None]:
    """A forward that fails with fake tensors is one of torchls's tries, not the user's error:
    torch logs each such failure with a traceback (at ERROR level) on the worker's stderr, which
    `torchls profile` shows. The reason torchls gives is its own one line."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _fake_model(torch: Any, model: Any, spec: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """The model with fake CPU tensors for weights: devices and shapes as on a CPU, no storage,
    so `.cpu()`, `.to(device)` and tensors made on the CPU meet the weights."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.to_empty(device="cpu")
        _replace_tensor_attributes(torch, model, lambda t: torch.empty_like(t, device="cpu"))
        inputs = _make_inputs(torch, spec, lambda shape, dtype: torch.empty(shape, dtype=dtype))
    return mode, model, inputs


def _replace_tensor_attributes(torch: Any, model: Any, make: Any) -> None:
    """Tensors kept as plain attributes (`self.mask = torch.tril(...)`, neither parameter nor
    buffer) were built on meta too; `to_empty` leaves them there."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.device.type == "meta":
                setattr(module, name, make(value))


def _weight_bytes(model: Any) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _memory_room(limit_mb: int) -> int:
    """Bytes the worker may still map: its address-space limit less what it maps already."""
    page = os.sysconf("SC_PAGE_SIZE")
    if limit_mb > 0:
        try:
            with open("/proc/self/statm") as statm:
                mapped = int(statm.read().split()[0]) * page
        except (OSError, ValueError, IndexError):
            mapped = 0
        return max(0, limit_mb * 1024 * 1024 - mapped)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * page // 2
    except (ValueError, OSError):
        return 1 << 30


def _on_cpu(torch: Any, model: Any) -> Any:
    """The model's weights made real on the CPU, initialised as its layers initialise
    themselves (reset_parameters), small random values where a layer has no such method."""
    model.to_empty(device="cpu")
    _replace_tensor_attributes(torch, model, lambda t: torch.zeros_like(t, device="cpu"))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.normal_(0.0, 0.02)
            else:
                parameter.zero_()
        for buffer in model.buffers():
            buffer.zero_()  # indices stay in range, masks and statistics stay finite
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                with contextlib.suppress(Exception):
                    reset()
    return model


def _cpu_inputs(torch: Any, model: Any, spec: dict[str, Any]) -> list[Any]:
    """Random inputs; integer ones index every embedding of the model (token ids, positions)."""
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    high = max(1, min(sizes)) if sizes else 1

    def make(shape: tuple[int, ...], dtype: Any) -> Any:
        if dtype.is_floating_point or dtype.is_complex:
            return torch.randn(shape, dtype=dtype)
        if dtype == torch.bool:
            return torch.ones(shape, dtype=dtype)  # an attention mask that masks nothing
        return torch.randint(0, high, shape, dtype=dtype)

    return _make_inputs(torch, spec, make)


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
