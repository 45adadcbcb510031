"""The model report: a profile result as one JSON document, and its Markdown and CSV exports.

The editor's report view renders the JSON (the whole module tree, the input and where it came
from, thop's figure, training memory, the cost against input size); the exports hold the same
tree as text, so `torchls profile` can write them too. Pure functions of the worker's result:
nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from torchls.cost import report
from torchls.cost.report import ReportContext
from torchls.source.spec import describe_json

GIB = 1 << 30
CSV_COLUMNS = (
    "path",
    "type",
    "depth",
    "output",
    "params",
    "trainable",
    "macs",
    "own_macs",
    "share",
    "calls",
    "group",
)


# -- pieces ---------------------------------------------------------------------------------


def input_origin(spec: dict[str, Any]) -> str:
    """Where the input shape came from, as one word: comment, setting, example_input_array,
    call, cli or guess ("other" for a source this function does not know)."""
    source = str(spec.get("source") or "")
    if spec.get("guess"):
        return "guess"
    if source.startswith("`# torchls: input=`"):
        return "comment"
    if source.startswith("the torchls.defaultInputShapes setting"):
        return "setting"
    if source.startswith("`example_input_array`"):
        return "example_input_array"
    if source.startswith("the call"):
        return "call"
    if source == "--input":
        return "cli"
    return "other"


def describe_input(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    source = str(spec.get("source") or "")
    where = "class" if kind == "class" else "call"
    return {
        "text": describe_json(spec),
        "source": source.removeprefix("a guess from ") if spec.get("guess") else source,
        "origin": input_origin(spec),
        "guess": bool(spec.get("guess")),
        "change": f"Change it with a `# torchls: input=(…)` comment above the {where}.",
    }


def shape_text(output: Any) -> str:
    """`1x64x56x56` for a tensor's shape (as the hover writes it), element-wise for a tuple of
    them, `-` when the module gave no tensor."""
    if isinstance(output, list) and all(isinstance(d, int) for d in output):
        return "x".join(str(d) for d in output) if output else "()"
    if isinstance(output, list) and output:
        return "(" + ", ".join(shape_text(item) for item in output) + ")"
    return "-"


def group_label(row: dict[str, Any]) -> str:
    """`layer1.0-2: 3 x Bottleneck` on the first row of a run of repeated blocks, else ""."""
    repeat = row.get("repeat")
    if not isinstance(repeat, dict):
        return ""
    return f"{repeat.get('label', row.get('path', ''))}: {repeat.get('count', '?')} x {row['type']}"


def thop_section(result: dict[str, Any]) -> dict[str, Any] | None:
    thop = result.get("thop")
    if not thop:
        return None
    line, reasons = report.thop_verdict(result)
    return {
        "version": thop.get("version"),
        "macs": thop.get("macs"),
        "difference": thop.get("difference"),
        "error": thop.get("error"),
        "by_type": list(thop.get("by_type") or []),
        "line": line,
        "reasons": reasons,
    }


def training_section(result: dict[str, Any], gpu_memory_gb: float) -> dict[str, Any] | None:
    """The worker's training measurement with what follows from it: Adam's states (weights,
    gradients and two moments in fp32 for trainable parameters, weights alone for frozen ones),
    the total at the measured batch, and the largest batch that fits the GPU setting."""
    training = result.get("training")
    if not isinstance(training, dict):
        return None
    parameters = result["parameters"]
    trainable = int(parameters["trainable"])
    frozen = int(parameters["total"]) - trainable
    states = 16 * trainable + 4 * frozen
    section: dict[str, Any] = {**training, "states_bytes": states, "gpu_memory_gb": gpu_memory_gb}
    if training.get("error") or training.get("activation_bytes") is None:
        return section
    activations = int(training["activation_bytes"])
    batch = training.get("batch")
    section["total_bytes"] = states + activations
    section["summary"] = (
        f"Adam training at batch {batch}: {report.size(states)} states + "
        f"{report.size(activations)} activations = {report.size(states + activations)}"
    )
    per_sample = training.get("per_sample_bytes")
    fixed = int(training.get("fixed_bytes") or 0)
    budget = gpu_memory_gb * GIB
    if not per_sample:
        section["max_batch"] = None
        section["max_batch_reason"] = (
            "the model's input has no batch dimension torchls could double, so how activations "
            "grow with the batch is not known"
        )
    else:
        fits = math.floor((budget - states - fixed) / int(per_sample))
        section["max_batch"] = max(fits, 0)
        section["max_batch_summary"] = (
            f"largest batch that fits {gpu_memory_gb:g} GiB: {max(fits, 0):,}"
            if fits >= 1
            else f"does not fit {gpu_memory_gb:g} GiB for training with Adam even at batch 1"
        )
    return section


def notes(result: dict[str, Any], context: ReportContext) -> list[str]:
    found = [*context.problems, *result.get("notes", [])]
    if context.args_source and context.args_source not in {"the call", "defaults"}:
        found.append(f"arguments from {context.args_source}")
    return found


# -- the report -----------------------------------------------------------------------------


def build(result: dict[str, Any], context: ReportContext, gpu_memory_gb: float) -> dict[str, Any]:
    """The report's JSON for a successful profile result."""
    tree = list(result.get("tree") or [])
    document: dict[str, Any] = {
        "name": result["name"],
        "class": result["class"],
        "call": context.call or result["name"],
        "args_source": context.args_source,
        "input": describe_input(result["inputs"], context.kind),
        "parameters": result["parameters"],
        "buffers": result["buffers"],
        "macs": result["macs"],
        "flops": result["flops"],
        "variation": result.get("variation"),
        "variation_text": report.variation(result),
        "mode": {"mode": result.get("mode"), "text": report.how_counted(result)},
        "memory": report.memory(result),
        "tree": tree,
        "tree_truncated": bool(result.get("tree_truncated")),
        "layers": list(result.get("layers") or []),
        "thop": thop_section(result),
        "training": training_section(result, gpu_memory_gb),
        "sweep": result.get("sweep"),
        "notes": notes(result, context),
        "counted": report.COUNTED,
        "gpu_memory_gb": gpu_memory_gb,
        "torch": result.get("torch"),
    }
    if not tree:
        document["tree_missing"] = (
            "This profile has no module tree: it was computed by a worker that predates it; "
            "save the file to profile it again."
        )
    document["markdown"] = markdown(document)
    document["csv"] = tree_csv(tree)
    return document


def _row_name(row: dict[str, Any], model_name: str) -> str:
    return str(row.get("path") or f"({model_name})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(document: dict[str, Any]) -> str:
    """The report as Markdown: a summary, the whole tree as a table, then the rest."""
    parameters = document["parameters"]
    spec = document["input"]
    lines = [
        f"# {document['name']}",
        "",
        f"`{document['class']}`, built as `{document['call']}`.",
        "",
        f"- Input: `{spec['text']}`"
        + (f", **a guess** from {spec['source']}" if spec["guess"] else f", from {spec['source']}"),
        f"- Parameters: {parameters['total']:,} ({report.count(parameters['total'])}): "
        f"{parameters['trainable']:,} trainable, {parameters['frozen']:,} frozen",
        f"- MACs: {document['macs']:,} ({report.count(document['macs'])})"
        + (f"; {document['variation_text']}" if document["variation_text"] else ""),
        f"- FLOPs: {document['flops']:,} ({report.count(document['flops'])}; 1 MAC = 2 FLOPs)",
    ]
    if document["mode"]["text"]:
        lines.append(f"- {document['mode']['text'][:1].upper()}{document['mode']['text'][1:]}")
    thop = document["thop"]
    if thop and thop["line"]:
        lines.append(f"- {thop['line']}")
        lines += [f"  - {reason}" for reason in thop["reasons"]]
    training = document["training"]
    if training and training.get("summary"):
        lines.append(f"- {training['summary']}")
        if training.get("max_batch_summary"):
            lines.append(f"  - {training['max_batch_summary']}")
    lines += ["", "## Modules", ""]
    tree = document["tree"]
    if not tree:
        lines.append(document.get("tree_missing", "No module tree."))
    else:
        lines.append("| module | type | output | params | trainable | MACs | share | group |")
        lines.append("|:--|:--|:--|--:|--:|--:|--:|:--|")
        for row in tree:
            indent = "\u00a0\u00a0" * int(row.get("depth") or 0)
            lines.append(
                f"| {indent}`{_cell(_row_name(row, document['name']))}` | {_cell(row['type'])} | "
                f"{shape_text(row.get('output'))} | {int(row['params']):,} | "
                f"{int(row['trainable']):,} | {int(row['macs']):,} | "
                f"{float(row.get('share') or 0):.1%} | {_cell(group_label(row))} |"
            )
        if document["tree_truncated"]:
            lines += ["", f"*The tree is cut at its first {len(tree):,} modules.*"]
    sweep = document.get("sweep")
    if isinstance(sweep, dict) and sweep.get("points"):
        symbol = sweep.get("symbol", "L")
        lines += ["", f"## Cost against {symbol}", ""]
        lines.append(f"| {symbol} | MACs | FLOPs | activations |")
        lines.append("|--:|--:|--:|--:|")
        for point in sweep["points"]:
            activations = point.get("activation_bytes")
            lines.append(
                f"| {point['value']:,} | {int(point['macs']):,} | {int(point['flops']):,} | "
                f"{report.size(activations) if activations is not None else '-'} |"
            )
        for name, fit in (sweep.get("fits") or {}).items():
            checked = "checked" if fit.get("checked") else "NOT confirmed"
            lines.append(f"\n- {name}({symbol}) = {fit.get('text')} ({checked} on an extra point)")
    if document["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in document["notes"]]
    lines += ["", f"*{document['counted']}*", ""]
    return "\n".join(lines)


def tree_csv(tree: list[dict[str, Any]]) -> str:
    """The whole tree, one module a row; the first row of a run of repeated blocks names it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in tree:
        writer.writerow(
            [
                row.get("path", ""),
                row["type"],
                row.get("depth", 0),
                shape_text(row.get("output")),
                int(row["params"]),
                int(row["trainable"]),
                int(row["macs"]),
                int(row.get("own_macs") or 0),
                f"{float(row.get('share') or 0):.6f}",
                int(row.get("calls") or 0),
                group_label(row),
            ]
        )
    return out.getvalue()
