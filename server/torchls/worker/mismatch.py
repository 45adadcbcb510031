"""A forward that failed on a shape: which layer, what it expects, what it was given (the
`shape_error` data of a failed profile job, from which the editor places its diagnostic and
offers a fix of the layer's argument)."""

from __future__ import annotations

import math
import re
import traceback
from pathlib import Path
from typing import Any

from torchls.worker.loading import _Loader

ATTRIBUTE = "_torchls_shape_error"  # where the analysis rides on the exception

_VIEW = re.compile(r"shape '\[([-0-9, ]*)\]' is invalid for input of size (\d+)")
# messages of shape errors the layers and torch's kernels raise (CPU and meta wording)
_SHAPE_MESSAGES = re.compile(
    r"mat1 and mat2 shapes cannot be multiplied"
    r"|must have same reduction dim"
    r"|to have \d+ channels, but got \d+ channels"
    r"|Invalid channel dimensions"
    r"|running_mean should contain \d+ elements"
    r"|Given normalized_shape="
    r"|number of channels in input"
    r"|must be equal to input_size"
    r"|was expected to be \d+"
    r"|size of tensor a \(\d+\) must match the size of tensor b"
)

# layer type -> (argument, position, what it counts, in words)
_WORDS = {
    "in_features": "input features",
    "in_channels": "input channels",
    "num_features": "channels (num_features)",
    "num_channels": "channels (num_channels)",
    "normalized_shape": "as its last dimension",
    "input_size": "input features (input_size)",
    "embed_dim": "features (embed_dim)",
}


def _expects(torch: Any, module: Any, inputs: list[list[int]]) -> tuple[dict[str, Any], Any]:
    """What the layer's constructor argument says and what its first input gives instead,
    as ({argument, position, value}, received); ({}, None) for a layer not known here."""
    nn = torch.nn
    first = inputs[0] if inputs else None
    if first is None:
        return {}, None
    if isinstance(module, nn.Linear) and not isinstance(module, nn.LazyLinear):
        return _arg("in_features", 0, module.in_features), first[-1] if first else None
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(
        module, nn.modules.lazy.LazyModuleMixin
    ):
        spatial = len(module.kernel_size)
        channel = 1 if len(first) == spatial + 2 else 0
        received = first[channel] if len(first) > channel else None
        return _arg("in_channels", 0, module.in_channels), received
    if isinstance(module, nn.modules.batchnorm._NormBase) and not isinstance(
        module, nn.modules.lazy.LazyModuleMixin
    ):
        received = first[1] if len(first) > 1 else None
        return _arg("num_features", 0, module.num_features), received
    if isinstance(module, nn.GroupNorm):
        received = first[1] if len(first) > 1 else None
        return _arg("num_channels", 1, module.num_channels), received
    if isinstance(module, nn.LayerNorm):
        wanted = list(module.normalized_shape)
        got = first[-len(wanted) :] if len(first) >= len(wanted) else first
        if len(wanted) == 1:
            return _arg("normalized_shape", 0, wanted[0]), got[-1] if got else None
        return _arg("normalized_shape", 0, wanted), got
    if isinstance(module, nn.RNNBase):
        return _arg("input_size", 0, module.input_size), first[-1] if first else None
    if isinstance(module, nn.MultiheadAttention):
        return _arg("embed_dim", 0, module.embed_dim), first[-1] if first else None
    return {}, None


def _arg(name: str, position: int, value: Any) -> dict[str, Any]:
    return {"argument": name, "position": position, "value": value}


def _shapes(torch: Any, args: Any) -> list[list[int]]:
    shapes: list[list[int]] = []
    for value in args if isinstance(args, (tuple, list)) else (args,):
        if isinstance(value, torch.Tensor):
            shapes.append([int(size) for size in value.shape])
    return shapes


def _failing_module(
    exc: BaseException, names: dict[int, str], running: list[str]
) -> tuple[str | None, Any]:
    """The innermost module of the model whose code is in the traceback (its forward, or the
    `_call_impl` that runs it); else the top of the running-module stack."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        try:
            owner = frame.f_locals.get("self")
        except Exception:
            continue
        if owner is not None and id(owner) in names:
            return names[id(owner)], owner
    return (running[-1], None) if running else (None, None)


def _user_frame(exc: BaseException, loader: _Loader) -> tuple[str | None, int | None]:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if loader.is_user_file(frame.filename):
            return str(Path(frame.filename).absolute()), frame.lineno
    return None, None


def _factors(received: int, batch: int | None, outputs: list[list[int]]) -> list[int] | None:
    """`[64, 7, 7]` when a module output just before (the conv before a flatten) has exactly
    `received` values per sample in its dims after the batch."""
    for shape in reversed(outputs):
        batch_matches = batch is None or shape[0] == batch
        if len(shape) >= 3 and batch_matches and math.prod(shape[1:]) == received:
            return shape[1:]
    return None


def analyze(
    torch: Any,
    exc: BaseException,
    loader: _Loader,
    model: Any,
    names: dict[int, str],
    running: list[str],
    inputs_of: dict[str, Any],
    outputs: list[list[int]],
    described_inputs: str,
) -> dict[str, Any] | None:
    """The `shape_error` data for an exception of the forward, or None when it is no shape
    error. `inputs_of` holds each module's latest positional inputs (its pre-hook's), `outputs`
    the output shapes of the modules that finished, in order."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    path, module = _failing_module(exc, names, running)
    if module is None and path is not None:
        module = dict(model.named_modules()).get(path)
    inputs = _shapes(torch, inputs_of.get(path)) if path is not None else []
    file, line = _user_frame(exc, loader)
    view = _VIEW.search(message)
    data: dict[str, Any] = {
        "module": path or None,
        "type": type(module).__name__ if module is not None else None,
        "message": message,
        "input_shapes": inputs,
        "expects": None,
        "received": None,
        "file": file,
        "line": line,
        "inputs": described_inputs,
    }
    if view:
        requested = [int(part) for part in view.group(1).split(",") if part.strip()]
        data["view"] = {"requested": requested, "size": int(view.group(2))}
        return data  # torch's own message says it all
    expects, received = _expects(torch, module, inputs) if module is not None else ({}, None)
    mismatched = bool(expects) and received is not None and received != expects["value"]
    if not mismatched and not _SHAPE_MESSAGES.search(message):
        return None
    if mismatched:
        data["expects"] = expects
        data["received"] = received
        data["summary"] = _summary(data, outputs)
    return data


def _summary(data: dict[str, Any], outputs: list[list[int]]) -> str:
    """`fc1 (Linear) expects 3200 input features; at input (1, 1, 28, 28) it receives
    64 x 7 x 7 = 3136`."""
    expects = data["expects"]
    argument = expects["argument"]
    value, received = expects["value"], data["received"]
    who = f"{data['module'] or '(the model)'} ({data['type']})"
    where = f"at input {data['inputs']} " if data["inputs"] else ""
    if argument == "normalized_shape":
        return f"{who} expects {value} {_WORDS[argument]}; {where}it receives {received}"
    given = str(received)
    if argument == "in_features" and isinstance(received, int):
        shapes = data["input_shapes"]
        batch = shapes[0][0] if shapes and len(shapes[0]) == 2 else None
        factors = _factors(received, batch, outputs)
        if factors and len(factors) > 1:
            given = f"{' x '.join(str(f) for f in factors)} = {received}"
    return f"{who} expects {value} {_WORDS[argument]}; {where}it receives {given}"
