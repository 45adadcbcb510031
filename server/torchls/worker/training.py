"""What training a model costs beyond its weights: the activations autograd keeps for the
backward pass, how they grow with the batch, and the backward pass's FLOPs.

Runs in the worker only, on the model as `count_forward` ran it (meta, fake tensors or the CPU):
a forward with gradients under `saved_tensors_hooks` sees every tensor autograd saves for the
backward; the bytes of their storages (each storage once, parameters and buffers left out) are
the activation memory. On meta nothing is allocated, so this costs milliseconds at any size.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchls.worker.inputs import _make_inputs, forward
from torchls.worker.loading import _describe, _Loader
from torchls.worker.measure import Counted, _cpu_inputs

# The backward ops FlopCounterMode counts for each forward op it counts. A forward op whose
# backward ops never appear in the backward count has no backward formula there (or its
# backward runs as an op the counter does not know): its backward is then estimated.
_BACKWARD_OF = {
    "convolution": ("convolution_backward",),
    "_convolution": ("convolution_backward",),
    "cudnn_convolution": ("convolution_backward",),
    "convolution_overrideable": ("convolution_backward",),
    "_slow_conv2d_forward": ("_slow_conv2d_backward",),
    "mm": ("mm", "bmm", "addmm", "baddbmm"),
    "addmm": ("mm", "bmm", "addmm", "baddbmm"),
    "bmm": ("mm", "bmm", "addmm", "baddbmm"),
    "baddbmm": ("mm", "bmm", "addmm", "baddbmm"),
    "_scaled_mm": ("_scaled_mm_backward",),
    "_efficient_attention_forward": ("_efficient_attention_backward",),
    "_flash_attention_forward": ("_flash_attention_backward",),
    "flex_attention": ("flex_attention_backward",),
}
# A backward pass computes a gradient for an op's input and one for its weights: about twice
# the forward's work, the usual rule where the counter has no formula.
BACKWARD_FACTOR = 2


def empty_result() -> dict[str, Any]:
    return {
        "batch": None,
        "activation_bytes": None,
        "per_sample_bytes": None,
        "fixed_bytes": None,
        "backward_flops": None,
        "backward_estimated": False,
        "estimate_reason": None,
        "error": None,
    }


def measure_training(
    torch: Any, counted: Counted, spec: dict[str, Any], loader: _Loader
) -> dict[str, Any]:
    """The `training` part of a profile: activation bytes at the input's batch and per sample,
    and the backward pass's FLOPs. Never raises: what could not be measured is `error` (the
    whole part) or a sentence beside the figure it concerns."""
    result = empty_result()
    try:
        with _reference_kernels(torch, counted):
            _measure_training(torch, counted, spec, loader, result)
    except MemoryError:
        result["error"] = "a training forward ran out of the worker's memory"
    except Exception as exc:  # the user's forward, in train mode or at twice the batch
        result["error"] = f"a training forward failed: {_describe(exc, loader)}"
    return result


def _measure_training(
    torch: Any, counted: Counted, spec: dict[str, Any], loader: _Loader, result: dict[str, Any]
) -> None:
    model = _training_copy(torch, counted)
    dim, where = batch_dim(torch, model)
    batch = batch_of(spec, dim)
    result["batch"] = batch
    if dim:
        result["batch_dim"] = dim
    ran = _saved_forward(torch, counted, model, counted.inputs)
    note = "; ".join(part for part in (where, ran.note) if part)
    recurrent = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.RNNBase)}
    )
    if recurrent:
        note = "; ".join(
            [
                *([note] if note else []),
                f"{', '.join(recurrent)} measured as PyTorch's step-by-step implementation; the "
                "fused cuDNN and oneDNN kernels keep a workspace of their own instead",
            ]
        )
    if note:
        result["note"] = note
    result["activation_bytes"] = ran.saved.total
    if ran.fused:  # count the backward of the math attention the forward count counted
        del ran
        ran = _forward_once(torch, counted, model, counted.inputs, fuse=False)
    _backward(torch, counted, ran.output, ran.counter, result)
    del ran

    if batch is None:
        result["per_sample_reason"] = "the input has no first dimension to take as the batch"
        return
    try:
        bigger = activation_bytes(torch, counted, _doubled(spec, batch, dim), model)
    except Exception as exc:
        which = "second" if dim else "first"
        result["per_sample_reason"] = (
            f"the forward does not take the batch doubled to {2 * batch} (the {which} "
            f"dimension of the input): {_describe(exc, loader)}"
        )
        return
    per_sample = max(0, round((bigger - saved_total(result)) / batch))
    result["per_sample_bytes"] = per_sample
    result["fixed_bytes"] = max(0, saved_total(result) - per_sample * batch)


def saved_total(result: dict[str, Any]) -> int:
    return int(result["activation_bytes"] or 0)


def activation_bytes(torch: Any, counted: Counted, spec: dict[str, Any], model: Any = None) -> int:
    """Bytes saved for backward by one training forward at the inputs `spec` describes, made
    the way the counted forward's inputs were made (meta, fake or real CPU tensors)."""
    with _reference_kernels(torch, counted):
        if model is None:
            model = _training_copy(torch, counted)
        inputs = inputs_for(torch, counted, spec)
        ran = _saved_forward(torch, counted, model, inputs)
    return ran.saved.total


@contextlib.contextmanager
def _reference_kernels(torch: Any, counted: Counted) -> Iterator[None]:
    """On real CPU tensors, PyTorch's own implementations rather than oneDNN's: oneDNN's LSTM
    keeps a workspace of its own and its backward is invisible to FlopCounterMode; the meta
    device and fake tensors run the reference implementation, so all three ways agree."""
    if counted.mode != "cpu":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags = torch.backends.mkldnn.flags(enabled=False)
        flags.__enter__()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.__exit__(None, None, None)


def inputs_for(torch: Any, counted: Counted, spec: dict[str, Any]) -> Any:
    """The inputs of `spec` as the counted forward's mode needs them."""
    if counted.mode == "cpu":
        return _cpu_inputs(torch, counted.model, spec)
    if counted.mode == "fake":
        with counted.device():
            return _make_inputs(torch, spec, lambda shape, dtype: torch.empty(shape, dtype=dtype))
    return _make_inputs(torch, spec)


def batch_of(spec: dict[str, Any], dim: int = 0) -> int | None:
    """Dimension `dim` (the first, or the second for a sequence-first model) of the first
    tensor of the inputs (positional, then by name)."""
    for item in [*(spec.get("tensors") or []), *(spec.get("kwargs") or {}).values()]:
        shape = _first_shape(item)
        if shape is not None:
            return shape[dim] if len(shape) > dim and isinstance(shape[dim], int) else None
    return None


def batch_dim(torch: Any, model: Any) -> tuple[int, str]:
    """Where the batch is in the inputs: the first dimension, or the second when every
    recurrent or attention layer of the model takes sequence-first tensors (nn.LSTM and
    nn.TransformerEncoderLayer without batch_first: (T, N, ...)), and a note saying so."""
    nn = torch.nn
    kinds = (
        nn.RNNBase,
        nn.MultiheadAttention,
        nn.TransformerEncoderLayer,
        nn.TransformerDecoderLayer,
        nn.Transformer,
    )
    layers = [m for m in model.modules() if isinstance(m, kinds)]
    firsts = {bool(_batch_first(layer)) for layer in layers}
    if firsts == {False}:
        names = sorted({type(layer).__name__ for layer in layers})
        return 1, (
            f"the batch is the second dimension of the input: {', '.join(names)} "
            "take sequence-first tensors (batch_first=False)"
        )
    return 0, ""


def _batch_first(layer: Any) -> bool:
    if hasattr(layer, "batch_first"):
        return bool(layer.batch_first)
    inner = getattr(layer, "self_attn", None)  # TransformerEncoderLayer keeps it on its attention
    if inner is not None and hasattr(inner, "batch_first"):
        return bool(inner.batch_first)
    encoder = getattr(layer, "encoder", None)  # nn.Transformer: its layers say
    for module in encoder.modules() if encoder is not None else []:
        if hasattr(module, "batch_first"):
            return bool(module.batch_first)
    return False


def _first_shape(item: Any) -> list[Any] | None:
    if not isinstance(item, dict):
        return None
    if "shape" in item:
        return list(item["shape"])
    for inner in item.get("tuple") or []:
        found = _first_shape(inner)
        if found is not None:
            return found
    return None


def _doubled(spec: dict[str, Any], batch: int, dim: int = 0) -> dict[str, Any]:
    """The inputs with every tensor whose batch dimension is the batch at twice the batch."""

    def walk(item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        if "tuple" in item:
            return {**item, "tuple": [walk(inner) for inner in item["tuple"]]}
        shape = item.get("shape")
        if shape and len(shape) > dim and shape[dim] == batch:
            return {**item, "shape": [*shape[:dim], 2 * batch, *shape[dim + 1 :]]}
        return item

    doubled = dict(spec)
    doubled["tensors"] = [walk(item) for item in spec.get("tensors") or []]
    if spec.get("kwargs"):
        doubled["kwargs"] = {name: walk(item) for name, item in spec["kwargs"].items()}
    return doubled


def _training_copy(torch: Any, counted: Counted) -> Any:
    """A copy of the counted model in train mode (dropout masks and batch statistics are what
    training saves), so that the counted model keeps no gradients and no train-mode state."""
    with counted.device() if counted.mode == "fake" else contextlib.nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a fake tensor's deepcopy asks for data_ptr
                model = copy.deepcopy(counted.model)
        except Exception:
            model = counted.model  # not copyable: measured as it is
    model.train()
    return model


@dataclass
class _Forward:
    saved: _Saved
    output: Any
    counter: Any  # FlopCounterMode of the forward
    fused: bool  # whether attention ran as the fused kernel (its graph is not the math one)
    note: str = ""


def _saved_forward(torch: Any, counted: Counted, model: Any, inputs: Any) -> _Forward:
    """One forward with gradients, counting what it saves and its FLOPs; a model whose forward
    refuses train mode at this input (BatchNorm on one value per channel) runs in eval mode,
    and the note says so."""
    try:
        return _forward_once(torch, counted, model, inputs)
    except Exception as exc:
        if not model.training:
            raise
        model.eval()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        note = f"measured in eval mode: in train mode the forward fails ({message[:120]})"
    ran = _forward_once(torch, counted, model, inputs)
    ran.note = note
    return ran


def _forward_once(
    torch: Any, counted: Counted, model: Any, inputs: Any, fuse: bool = True
) -> _Forward:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    attention: contextlib.AbstractContextManager[list[bool]] = (
        _fused_attention(torch) if fuse else contextlib.nullcontext([])
    )
    with _saved_tensors(torch, model) as saved, counted.device(), attention as fused, counter:
        output = forward(model, inputs)
    return _Forward(saved, output, counter, bool(fused))


@contextlib.contextmanager
def _fused_attention(torch: Any) -> Iterator[list[bool]]:
    """`F.scaled_dot_product_attention` as a fused kernel runs it in training: saving the query,
    key, value, output and one log-sum-exp per row, never the L x L attention weights. On meta
    the math backend runs instead, which saves those weights; the GPU's flash and
    memory-efficient kernels (and the CPU's flash kernel) do not. Replaced where it is looked
    up, on torch.nn.functional (nn.MultiheadAttention, Hugging Face models, `F.` calls); a
    name imported from there before the profile keeps the math backend. Yields a list that
    holds True once a call ran fused."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    used: list[bool] = []

    def attention(*args: Any, **kwargs: Any) -> Any:
        try:
            output = _fused(torch, *args, **kwargs)
        except Exception:
            return original(*args, **kwargs)
        used.append(True)
        return output

    functional.scaled_dot_product_attention = attention
    try:
        yield used
    finally:
        functional.scaled_dot_product_attention = original


def _fused(
    torch: Any,
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    if enable_gqa or query.dim() != 4 or key.shape[1] != query.shape[1]:
        raise ValueError("not a shape the fused kernel takes")
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        raise ValueError("a boolean mask: the kernels convert it, as the math backend does")
    output, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
    )
    return output


class _Saved:
    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.keep: list[Any] = []  # alive until the pass ends: a storage's address stays its own

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


@contextlib.contextmanager
def _saved_tensors(torch: Any, model: Any) -> Iterator[_Saved]:
    """Sum the storages autograd saves for backward during the block: each storage once (a
    view, a detached alias and an in-place result share their base's storage), keyed by the
    storage itself (meta and fake tensors have storages without data pointers), without the
    model's parameters, buffers and plain tensor attributes (weights, not activations)."""
    saved = _Saved()
    state_ids, state = _state_storages(torch, model)

    def pack(tensor: Any) -> Any:
        # a view's own storage object can differ from its base's with fake tensors: the base
        base = tensor._base if tensor._base is not None else tensor
        try:
            storage = base.untyped_storage()
            key = int(storage._cdata)
        except Exception:  # sparse, nested or a subclass without one storage
            return tensor
        if id(base) in state_ids or key in state or key in saved.sizes:
            return tensor
        saved.sizes[key] = int(storage.nbytes())
        saved.keep.append(tensor)
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        yield saved
    saved.keep.clear()


def _unpack(tensor: Any) -> Any:
    return tensor


def _state_storages(torch: Any, model: Any) -> tuple[set[int], set[int]]:
    """The ids of the model's own tensors and their storages' keys."""
    keys: set[int] = set()
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    for tensor in tensors:
        with contextlib.suppress(Exception):
            keys.add(int(tensor.untyped_storage()._cdata))
    return {id(tensor) for tensor in tensors}, keys


def _backward(
    torch: Any, counted: Counted, output: Any, forward_counter: Any, result: dict[str, Any]
) -> None:
    """The backward pass's FLOPs: the backward of one scalar made from the forward's outputs,
    under FlopCounterMode (attention as the math backend runs it, as the forward count does);
    forward ops whose backward the counter has no formula for are estimated."""
    from torch.utils.flop_counter import FlopCounterMode

    loss = _scalar(torch, output)
    if loss is None:
        result["estimate_reason"] = (
            "no output of the forward depends on a trainable parameter: there is no backward "
            "pass to count"
        )
        return
    backward_counter = FlopCounterMode(display=False)
    with counted.device(), backward_counter:
        loss.backward()
    backward = _by_op(backward_counter)
    result["backward_flops"] = sum(backward.values())
    missing: dict[str, int] = {}
    for op, flops in _by_op(forward_counter).items():
        expected = _BACKWARD_OF.get(op)
        if flops and (expected is None or not any(backward.get(name) for name in expected)):
            missing[op] = missing.get(op, 0) + flops
    if missing:
        extra = BACKWARD_FACTOR * sum(missing.values())
        result["backward_flops"] += extra
        names = ", ".join(f"aten.{op}" for op in sorted(missing))
        result["backward_estimated"] = True
        result["estimate_reason"] = (
            f"FlopCounterMode has no backward formula for {names}: their backward is estimated "
            f"as {BACKWARD_FACTOR}x their forward FLOPs ({extra:,} FLOPs of the total)"
        )


def _by_op(counter: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op, flops in counter.flop_counts.get("Global", {}).items():
        name = str(op).removeprefix("aten.").split(".")[0]
        counts[name] = counts.get(name, 0) + int(flops)
    return counts


def _scalar(torch: Any, output: Any) -> Any:
    """One number that depends on every floating output that needs a gradient (a tensor, a
    tuple, a dict, a Hugging Face ModelOutput): the sum of their sums, whose backward adds no
    FLOPs of its own."""
    tensors = [
        t
        for t in _tensors(torch, output)
        if t.requires_grad and (t.is_floating_point() or t.is_complex())
    ]
    if not tensors:
        return None
    total = tensors[0].sum().real if tensors[0].is_complex() else tensors[0].sum()
    for tensor in tensors[1:]:
        total = total + (tensor.sum().real if tensor.is_complex() else tensor.sum())
    return total


def _tensors(torch: Any, value: Any, depth: int = 0) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 4:
        return []
    if isinstance(value, dict) or (hasattr(value, "values") and callable(value.values)):
        with contextlib.suppress(Exception):
            value = list(value.values())
    if isinstance(value, (list, tuple)):
        found: list[Any] = []
        for item in value:
            found += _tensors(torch, item, depth + 1)
        return found
    return []
