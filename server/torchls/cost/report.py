"""A profile result in words: Markdown for the hover, plain text for `torchls profile`.

Both say MACs and FLOPs by name (1 MAC = one multiply-add = 2 FLOPs), where the input shape
came from and how to change it, and what the count leaves out.
"""

from __future__ import annotations

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
    lines.append(
        f"**Memory of the parameters:** fp32 {size(mem['fp32'])} · bf16/fp16 "
        f"{size(mem['bf16/fp16'])} · int8 {size(mem['int8'])} · training with Adam "
        f"{size(mem['training'])} (weights, gradients, 2 moments; activations extra)"
    )
    if result["layers"]:
        lines.append("")
        lines.append("**Heaviest layers** (MACs of the layer itself)\n")
        lines.append("| layer | type | output | params | MACs | share |")
        lines.append("|:--|:--|:--|--:|--:|--:|")
        for layer in result["layers"]:
            lines.append(
                f"| `{layer['path']}` | {layer['type']} | {_shape(layer['output'])} | "
                f"{count(layer['params'])} | {count(layer['macs'])} | {layer['share']:.1%} |"
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
        f"int8 {size(mem['int8'])}; Adam training {size(mem['training'])} + activations",
    ]
    if how_counted(result):
        out.insert(3, f"  counted      {how_counted(result).removeprefix('counted ')}")
    thop_line, reasons = thop_verdict(result)
    if thop_line:
        out.append(f"  {thop_line}")
        out += [f"    - {reason}" for reason in reasons]
    if result["layers"]:
        out.append("  heaviest layers (MACs of the layer itself):")
        width = max(len(layer["path"]) for layer in result["layers"])
        for layer in result["layers"]:
            out.append(
                f"    {layer['path']:<{width}}  {layer['type']:<14} {_shape(layer['output']):<16} "
                f"params {count(layer['params']):>7}  MACs {count(layer['macs']):>7}  "
                f"{layer['share']:6.1%}"
            )
    for note in [*context.problems, *result.get("notes", [])]:
        out.append(f"  note: {note}")
    out.append(f"  {COUNTED}")
    return "\n".join(out)


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
