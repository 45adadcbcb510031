"""A profile result in words: Markdown for the hover, plain text for `torchls profile`.

Both say MACs and FLOPs by name (1 MAC = one multiply-add = 2 FLOPs), where the input shape
came from and how to change it, and what the count leaves out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torchls.source.spec import describe_json

THOP_TOLERANCE = 0.01
COUNTED = (
    "Counted: convolutions and matrix multiplications (attention included) of one forward "
    "pass. Not counted: element-wise work (activations, normalisation, pooling, softmax, "
    "residual additions), which is small beside them in most models."
)
_ELEMENTWISE_HINTS = (
    "Norm",
    "ReLU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "Pool",
    "Softmax",
    "Dropout",
    "Upsample",
    "Hardswish",
    "Mish",
    "ELU",
    "Identity",
)


@dataclass
class ReportContext:
    """What the report needs besides the worker's result."""

    call: str = ""  # `SmallConvNet(num_classes=10)`
    args_source: str = ""  # "the call", "`# torchls: args=` on line 3", "defaults"
    kind: str = "class"
    problems: list[str] = field(default_factory=list)
    stale: bool = False
    gpu_memory_gb: float = 24.0  # torchls.gpuMemoryGB: the largest batch for training fits it


def count(value: float) -> str:
    """20.2 K, 25.6 M, 10.7 G, 1.70 T."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g} {suffix}" if abs(scaled) < 100 else f"{scaled:.0f} {suffix}"
    return f"{value:.0f}"


def size(num_bytes: float) -> str:
    for limit, suffix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if num_bytes >= limit:
            scaled = num_bytes / limit
            return f"{scaled:.3g} {suffix}" if scaled < 100 else f"{scaled:.0f} {suffix}"
    return f"{num_bytes:.0f} B"


def _shape(shape: list[int] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _inputs(spec: dict[str, Any]) -> str:
    return describe_json(spec)


def memory(result: dict[str, Any]) -> dict[str, int]:
    """Bytes of the parameters at each precision, and for Adam training in fp32."""
    parameters = result["parameters"]
    total, trainable = int(parameters["total"]), int(parameters["trainable"])
    return {
        "fp32": total * 4,
        "bf16/fp16": total * 2,
        "int8": total,
        # weights for every parameter; a gradient and Adam's two moments for trainable ones
        "training": total * 4 + trainable * 4 + trainable * 8,
        "as built": int(parameters["bytes"]),
    }


GIB = 1 << 30


def training(result: dict[str, Any], gpu_memory_gb: float) -> dict[str, Any] | None:
    """The training figures in sentences (no Markdown), from the worker's `training` part:
    `summary` "Adam training at batch 4: 390 MiB states + 1.21 GiB activations = 1.59 GiB",
    `batch` the largest batch that fits the GPU (or why not known), `backward` its FLOPs,
    `notes`. None for a result without the part (an older worker's)."""
    measured = result.get("training")
    if not isinstance(measured, dict):
        return None
    states = memory(result)["training"]  # weights, gradients and Adam's 2 moments, fp32
    if measured.get("error") or measured.get("activation_bytes") is None:
        why = measured.get("error") or "the training forward could not be measured"
        return {
            "summary": f"Adam training: {size(states)} states + activations not measured ({why})",
            "batch": "",
            "backward": "",
            "notes": [],
        }
    activations = int(measured["activation_bytes"])
    batch = measured.get("batch")
    at = f" at batch {batch}" if batch else ""
    found: dict[str, Any] = {
        "summary": f"Adam training{at}: {size(states)} states + {size(activations)} "
        f"activations = {size(states + activations)}",
        "notes": [str(measured["note"])] if measured.get("note") else [],
        "explain": "states: weights, gradients and Adam's two moments in fp32; activations: "
        "the tensors autograd saves for the backward pass, measured in a training forward in the "
        "model's own dtypes",
    }
    per_sample = measured.get("per_sample_bytes")
    fixed = int(measured.get("fixed_bytes") or 0)
    gpu = f"{gpu_memory_gb:g} GiB"
    if per_sample is None:
        why = measured.get("per_sample_reason") or "the input has no batch dimension to double"
        found["batch"] = f"largest batch that fits {gpu}: not known ({why})"
    elif int(per_sample) == 0:
        found["batch"] = f"activations do not grow with the batch; {size(states + fixed)} in all"
    else:
        fits = math.floor((gpu_memory_gb * GIB - states - fixed) / int(per_sample))
        found["batch"] = (
            f"largest batch that fits {gpu}: {fits:,} ({size(int(per_sample))} of activations "
            "per sample)"
            if fits >= 1
            else f"does not fit {gpu} even at batch 1 ({size(states + fixed + int(per_sample))})"
        )
    backward = measured.get("backward_flops")
    if backward is None:
        found["backward"] = (
            f"backward pass: not counted ({measured['estimate_reason']})"
            if measured.get("estimate_reason")
            else ""
        )
    elif measured.get("backward_estimated"):
        found["backward"] = (
            f"backward pass: about {count(int(backward))} FLOPs, an estimate: "
            f"{measured.get('estimate_reason')}"
        )
    else:
        found["backward"] = f"backward pass: {count(int(backward))} FLOPs ({int(backward):,})"
    return found


def sweep_lines(result: dict[str, Any]) -> list[str]:
    """`MACs(L) = 1,179,648 L^2 + 84,934,656 L (checked at L=1,536)`, one per quantity, or why
    there is no formula; empty without a sweep."""
    sweep = result.get("sweep")
    if not isinstance(sweep, dict):
        return []
    symbol = str(sweep.get("symbol") or "?")
    if sweep.get("error"):
        return [f"cost against {symbol}: {sweep['error']}"]
    check = sweep.get("check") or {}
    lines = []
    for quantity, name, unit in (
        ("macs", "MACs", ""),
        ("flops", "FLOPs", ""),
        ("activation_bytes", "activations", " bytes"),
    ):
        fitted = (sweep.get("fits") or {}).get(quantity)
        if not isinstance(fitted, dict):
            continue
        if fitted.get("checked") and fitted.get("text"):
            where = f"{symbol}={int(check['value']):,}" if check.get("value") else "an extra point"
            lines.append(f"{name}({symbol}) = {fitted['text']}{unit} (checked at {where})")
        else:
            lines.append(f"{name}({symbol}): no exact formula; {fitted.get('why') or 'unchecked'}")
    return lines


def thop_verdict(result: dict[str, Any]) -> tuple[str, list[str]]:
    """thop's figure in one line, and the reasons when it differs by more than 1%."""
    thop = result.get("thop")
    if not thop:
        return "", []
    version = thop.get("version") or ""
    if "error" in thop:
        return f"thop {version} failed on this model: {thop['error']}", []
    if result.get("variation"):  # thop's one forward against a range: no comparison
        return f"thop {version}: {count(thop['macs'])} MACs (one run of its own)", []
    difference = float(thop["difference"])
    line = f"thop {version}: {count(thop['macs'])} MACs ({difference:+.1%})"
    if abs(difference) <= THOP_TOLERANCE:
        return line, []
    reasons = []
    for row in thop.get("by_type", []):
        amount, type_name = int(row["difference"]), str(row["type"])
        if amount < 0:
            why = _why_missing(type_name, result)
            reasons.append(f"thop misses {count(-amount)} MACs in {type_name}: {why}")
        else:
            reasons.append(f"thop adds {count(amount)} for {type_name}: {_why_extra(type_name)}")
    return line, reasons


def _why_missing(type_name: str, result: dict[str, Any]) -> str:
    if type_name == "Conv1D":
        return "Hugging Face's Conv1D (a transposed linear) has no thop rule"
    if "Attention" in type_name:
        return "its matmuls (torch.matmul, F.scaled_dot_product_attention) have no thop rule"
    if type_name == str(result.get("class", "")).rsplit(".", 1)[-1]:
        return "functional calls in its forward() (torch.matmul, F.linear, ...) have no thop rule"
    return "thop has no rule for this module type, so its functional calls count as zero"


def _why_extra(type_name: str) -> str:
    if any(hint in type_name for hint in _ELEMENTWISE_HINTS):
        return "element-wise work, which this count leaves out"
    if type_name in {"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"}:
        return "thop's recurrent rule also counts the gates' element-wise work"
    return "thop counts this module type its own way"


def markdown(result: dict[str, Any], context: ReportContext) -> str:
    parameters, buffers = result["parameters"], result["buffers"]
    lines: list[str] = []
    if context.stale:
        lines.append("*From an earlier version of this file; recomputing.*\n")
    title = f"**{result['name']}**"
    if context.call:
        title += f" · built as `{context.call}`"
    lines.append(title + "\n")
    thop_line, thop_reasons = thop_verdict(result)
    rows = [
        ("Parameters", f"**{parameters['total']:,}** ({count(parameters['total'])})"),
        ("trainable · frozen", f"{parameters['trainable']:,} · {parameters['frozen']:,}"),
        (
            "buffers",
            f"{buffers['total']:,} in {buffers['tensors']} tensors ({size(buffers['bytes'])})",
        ),
        ("MACs", f"**{count(result['macs'])}** ({result['macs']:,})"),
        ("FLOPs", f"**{count(result['flops'])}** (1 MAC = 2 FLOPs)"),
    ]
    varies = variation(result)
    if varies:
        low, high = result["variation"]["flops"]["min"], result["variation"]["flops"]["max"]
        rows[-2] = ("MACs", f"**{varies}**")
        rows[-1] = ("FLOPs", f"**{count_range(low, high)}** (1 MAC = 2 FLOPs)")
    if parameters.get("shared"):
        rows.insert(2, ("shared/tied", f"{parameters['shared']} tensors, counted once"))
    if thop_line:
        rows.append(("thop", thop_line.split(": ", 1)[1] + (" ⚠" if thop_reasons else "")))
    lines.append("| | |\n|:--|--:|")
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    lines.append(f"{_input_sentence(result['inputs'], markdown=True)} {_how_to_change(context)}")
    lines.append("")
    if how_counted(result):
        lines.append(f"C{how_counted(result)[1:]}.")
        lines.append("")
    mem = memory(result)
    trained = training(result, context.gpu_memory_gb)
    if trained is None:
        lines.append(
            f"**Memory of the parameters:** fp32 {size(mem['fp32'])} · bf16/fp16 "
            f"{size(mem['bf16/fp16'])} · int8 {size(mem['int8'])} · training with Adam "
            f"{size(mem['training'])} (weights, gradients, 2 moments; activations extra)"
        )
    else:
        lines.append(
            f"**Memory of the parameters:** fp32 {size(mem['fp32'])} · bf16/fp16 "
            f"{size(mem['bf16/fp16'])} · int8 {size(mem['int8'])}"
        )
        lines.append("")
        summary, _, total = str(trained["summary"]).rpartition(" = ")
        lines.append(f"**{summary} = {total}**" if summary else f"**{trained['summary']}**")
        lines += [f"- {trained[key]}" for key in ("batch", "backward") if trained[key]]
        lines += [f"- {note}" for note in trained["notes"]]
        if trained.get("explain"):
            lines.append(f"- *{trained['explain']}*")
    swept = sweep_lines(result)
    if swept:
        lines.append("")
        lines.append(
            f"**Cost against {result['sweep'].get('symbol')}** (exact, from counts at "
            f"{_values(result)})\n"
        )
        lines += [f"- {line}" for line in swept]
    if result["layers"]:
        lines.append("")
        lines.append("**Heaviest layers** (MACs of the layer itself)\n")
        lines.append("| layer | type | output | params | MACs | share |")
        lines.append("|:--|:--|:--|--:|--:|--:|")
        for layer in result["layers"]:
            lines.append(
                f"| `{layer['path']}`{_times(layer)} | {layer['type']} | "
                f"{_shape(layer['output'])} | {count(layer['params'])} | "
                f"{count(layer['macs'])} | {layer['share']:.1%} |"
            )
    if thop_reasons:
        lines.append("")
        lines.append(f"⚠ {thop_line}, more than 1% from this count:")
        lines += [f"- {reason}" for reason in thop_reasons]
    notes = [*context.problems, *result.get("notes", [])]
    if context.args_source and context.args_source not in {"the call", "defaults"}:
        notes.append(f"arguments from {context.args_source}")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    lines.append("")
    lines.append(f"*{COUNTED}*")
    return "\n".join(lines)


def _times(layer: dict[str, Any]) -> str:
    """A times sign and the count after a grouped layer's path (`layer1.0-2.conv2` times 3):
    its MACs and share are the group's, its params one layer's."""
    repeats = int(layer.get("count") or 1)
    return f" {TIMES}{repeats}" if repeats > 1 else ""


TIMES = "\u00d7"


def _values(result: dict[str, Any]) -> str:
    sweep = result.get("sweep") or {}
    values = [int(point["value"]) for point in sweep.get("points") or []]
    return f"{sweep.get('symbol')}=" + ", ".join(f"{value:,}" for value in values)


MODES = {
    "meta": "counted on the meta device",
    "fake": "counted with fake tensors",
    "cpu": "counted on CPU with random weights",
}


def how_counted(result: dict[str, Any]) -> str:
    """How the forward ran: `counted with fake tensors (the meta device could not run ...)`;
    empty for a result from a worker that did not say."""
    mode = MODES.get(str(result.get("mode")), "")
    reason = result.get("mode_reason")
    return f"{mode} ({reason})" if mode and reason else mode


def count_range(low: float, high: float) -> str:
    """6.37-7.06 G: one unit when both ends have it."""
    low_text, high_text = count(low), count(high)
    low_number, _, low_unit = low_text.partition(" ")
    if low_unit == high_text.partition(" ")[2]:
        return f"{low_number}-{high_text}"
    return f"{low_text} - {high_text}"


def variation(result: dict[str, Any]) -> str:
    """`varies between runs: 6.37-7.06 G; stochastic layers in forward`, or empty."""
    varies = result.get("variation")
    if not varies:
        return ""
    low, high = int(varies["macs"]["min"]), int(varies["macs"]["max"])
    where = f" of {varies['module']}" if varies.get("module") else ""
    if low == high:
        return (
            f"{count(high)} in each of {varies['runs']} runs, but which layers run varies; "
            f"stochastic layers in forward{where}"
        )
    return f"varies between runs: {count_range(low, high)}; stochastic layers in forward{where}"


def _text_counts(result: dict[str, Any]) -> list[str]:
    varies = variation(result)
    if varies:
        flops = result["variation"]["flops"]
        return [
            f"  MACs         {varies} (MACs {result['variation']['macs']['min']:,} to "
            f"{result['variation']['macs']['max']:,} in {result['variation']['runs']} runs)",
            f"  FLOPs        {count_range(flops['min'], flops['max'])} (1 MAC = 2 FLOPs)",
        ]
    return [
        f"  MACs         {result['macs']:,} ({count(result['macs'])})",
        f"  FLOPs        {result['flops']:,} ({count(result['flops'])}; 1 MAC = 2 FLOPs)",
    ]


def _input_sentence(spec: dict[str, Any], markdown: bool) -> str:
    shape = f"`{_inputs(spec)}`" if markdown else _inputs(spec)
    if spec.get("guess"):
        guess = "**a guess**" if markdown else "a guess"
        return f"Input {shape}: {guess} from {spec['source'].removeprefix('a guess from ')}."
    return f"Input {shape}, from {spec['source']}."


def _how_to_change(context: ReportContext) -> str:
    where = "class" if context.kind == "class" else "call"
    return f"Change it with a `# torchls: input=(…)` comment above the {where}."


def blocked_markdown(name: str, reason: str) -> str:
    return f"**{name}**: torchls cannot profile it here. {reason}"


def failure_markdown(name: str, message: str, context: ReportContext) -> str:
    lines = [f"**{name}**: torchls could not profile it. {message}"]
    if context.problems:
        lines.append("")
        lines += [f"- {problem}" for problem in context.problems]
    return "\n".join(lines)


def text(result: dict[str, Any], context: ReportContext) -> str:
    """The same report for a terminal."""
    parameters, buffers = result["parameters"], result["buffers"]
    mem = memory(result)
    spec = result["inputs"]
    out = [
        f"{result['name']}  ({result['class']})",
        f"  built as     {context.call or result['name']}"
        + (f"  [arguments from {context.args_source}]" if context.args_source else ""),
        f"  input        {_input_sentence(spec, markdown=False).removeprefix('Input ')}",
        f"  parameters   {parameters['total']:,} ({count(parameters['total'])}): "
        f"{parameters['trainable']:,} trainable, {parameters['frozen']:,} frozen"
        + (
            f"; {parameters['shared']} shared/tied tensors counted once"
            if parameters.get("shared")
            else ""
        ),
        f"  buffers      {buffers['total']:,} in {buffers['tensors']} tensors "
        f"({size(buffers['bytes'])})",
        *_text_counts(result),
        f"  memory       fp32 {size(mem['fp32'])}, bf16/fp16 {size(mem['bf16/fp16'])}, "
        f"int8 {size(mem['int8'])}"
        + (
            ""
            if result.get("training")
            else f"; Adam training {size(mem['training'])} + activations"
        ),
    ]
    trained = training(result, context.gpu_memory_gb)
    if trained is not None:
        out.append(f"  training     {trained['summary']}")
        out += [f"               {trained[key]}" for key in ("batch", "backward") if trained[key]]
        out += [f"               note: {note}" for note in trained["notes"]]
    if how_counted(result):
        out.insert(3, f"  counted      {how_counted(result).removeprefix('counted ')}")
    thop_line, reasons = thop_verdict(result)
    if thop_line:
        out.append(f"  {thop_line}")
        out += [f"    - {reason}" for reason in reasons]
    out += sweep_text(result)
    if result["layers"]:
        out.append("  heaviest layers (MACs of the layer itself):")
        names = [f"{layer['path']}{_times(layer)}" for layer in result["layers"]]
        width = max(len(name) for name in names)
        kind = max(14, *(len(str(layer["type"])) for layer in result["layers"]))
        for name, layer in zip(names, result["layers"], strict=True):
            out.append(
                f"    {name:<{width}}  {layer['type']:<{kind}} {_shape(layer['output']):<16} "
                f"params {count(layer['params']):>7}  MACs {count(layer['macs']):>7}  "
                f"{layer['share']:6.1%}"
            )
    for note in [*context.problems, *result.get("notes", [])]:
        out.append(f"  note: {note}")
    out.append(f"  {COUNTED}")
    return "\n".join(out)


def sweep_text(result: dict[str, Any]) -> list[str]:
    """The sweep for a terminal: a table of the counts at each value, then the formulas."""
    sweep = result.get("sweep")
    if not isinstance(sweep, dict):
        return []
    symbol = str(sweep.get("symbol") or "?")
    rows = list(sweep.get("points") or [])
    out = [
        f"  cost against {symbol} (counted at each value; formulas exact, checked on a value "
        "not fitted on):"
    ]
    if rows:
        check = sweep.get("check")
        header = ("value", "MACs", "FLOPs", "activation bytes")
        table = [
            (
                f"{symbol}={int(row['value']):,}" + (" (check)" if row is check else ""),
                f"{int(row['macs']):,}",
                f"{int(row['flops']):,}",
                f"{int(row['activation_bytes']):,}"
                if row.get("activation_bytes") is not None
                else "-",
            )
            for row in [*rows, *([check] if check else [])]
        ]
        widths = [max(len(line[i]) for line in [header, *table]) for i in range(4)]
        for line in [header, *table]:
            out.append(
                "    "
                + "  ".join(
                    cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                    for i, cell in enumerate(line)
                )
            )
    out += [f"    {line}" for line in sweep_lines(result)]
    return out


def submodule_markdown(result: dict[str, Any], context: ReportContext, parent: str) -> str:
    """The share of one submodule (`self.encoder = ...`) in its parent's profile."""
    share = result["submodule"]
    parameters = share["parameters"]
    lines: list[str] = []
    if context.stale:
        lines.append("*From an earlier version of this file; recomputing.*\n")
    lines.append(
        f"**self.{share['path']}** ({share['type']}) · its share of **{parent}**, built as "
        f"`{context.call or parent}`\n"
    )
    total_parameters = result["parameters"]["total"]
    rows = [
        (
            "Parameters",
            f"**{parameters['total']:,}** ({count(parameters['total'])}) · "
            f"{share['share_parameters']:.1%} of {parent}'s {total_parameters:,}",
        ),
        ("trainable · frozen", f"{parameters['trainable']:,} · {parameters['frozen']:,}"),
    ]
    if share["macs"] is None:
        rows.append(("MACs", f"not attributed (the whole {parent}: {result['macs']:,})"))
    elif not share["calls"]:
        rows.append(("MACs", f"**0** (0) · `{parent}.forward` does not call it"))
    else:
        rows.append(
            (
                "MACs",
                f"**{count(share['macs'])}** ({share['macs']:,}) · "
                f"{share['share_macs']:.1%} of {parent}'s {count(result['macs'])}",
            )
        )
        rows.append(("FLOPs", f"**{count(share['flops'])}** (1 MAC = 2 FLOPs)"))
    rows.append(("output", _shape(share["output"])))
    lines.append("| | |\n|:--|--:|")
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines.append("")
    lines.append(
        f"{_input_sentence(result['inputs'], markdown=True)} Change it with a "
        f"`# torchls: input=(…)` comment above `class {parent}`."
    )
    lines.append("")
    lines.append(
        f"**Memory of its parameters:** fp32 {size(parameters['total'] * 4)} · bf16/fp16 "
        f"{size(parameters['total'] * 2)} · int8 {size(parameters['total'])}"
    )
    notes = [*context.problems, *result.get("notes", [])]
    if context.args_source and context.args_source not in {"the call", "defaults"}:
        notes.append(f"{parent}'s arguments from {context.args_source}")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in notes]
    lines.append("")
    lines.append(f"*{COUNTED}*")
    return "\n".join(lines)
