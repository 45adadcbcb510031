"""`torchls inspect` as text: the summary JSON (CheckpointSummary.as_json) for a terminal."""

from __future__ import annotations

from typing import Any

FORMAT_NAMES = {
    "torch-zip": "torch zip archive (torch >= 1.6)",
    "torch-legacy": "torch legacy format (torch < 1.6, or _use_new_zipfile_serialization=False)",
    "safetensors": "safetensors",
    "sharded": "sharded checkpoint (index.json)",
    "huggingface": "Hugging Face model folder",
    "pickle": "plain pickle (not a torch checkpoint)",
}


def _n(value: int) -> str:
    return f"{value:,}"


def _count(value: int, noun: str) -> str:
    return f"{value:,} {noun}" + ("" if value == 1 else "s")


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _tree_lines(node: dict[str, Any], depth: int, out: list[str]) -> None:
    label = "  " * depth + node["path"]
    out.append(
        f"  {label:<48} {node['type']:<20} {node['items']:>7} items {node['tensors']:>7} tensors"
    )
    for child in node["children"]:
        _tree_lines(child, depth + 1, out)
    if node.get("more_children"):
        out.append("  " + "  " * (depth + 1) + f"... {node['more_children']} more containers")


def render_inspect(summary: dict[str, Any]) -> str:
    out: list[str] = [summary["path"]]
    details = summary["details"]
    totals = summary["totals"]
    described = FORMAT_NAMES.get(summary["format"], summary["format"])
    extras = []
    if "archive_folder" in details:
        extras.append(f"folder {details['archive_folder']!r}")
    if "pickle_protocol" in details:
        extras.append(f"pickle protocol {details['pickle_protocol']}")
    if "byteorder" in details:
        extras.append(f"{details['byteorder']}-endian")
    if "weights" in details:
        extras.append(f"weights {details['weights']}")
    out.append(f"  format        {described}" + (f" ({', '.join(extras)})" if extras else ""))
    if "config" in details:
        out.append(f"  config        {details['config']}")
    where = ""
    if isinstance(details.get("shards"), list):
        where = f" in {_count(len(details['shards']), 'shard')}"
        if isinstance(details.get("index_size"), int):
            where += f" (and the index, {_n(details['index_size'])} bytes)"
    out.append(
        f"  size          {_n(summary['file_size'])} bytes on disk{where}; "
        f"{_count(totals['tensors'], 'tensor')}, {_count(totals['elements'], 'element')}, "
        f"{_n(totals['bytes'])} bytes of tensor data"
    )
    verdict = summary["weights_only"]
    if verdict is not None:
        accepted = "accepted" if verdict["accepted"] else "REFUSED"
        out.append(f"  weights_only  {accepted}: {verdict['reason']}")
    if details.get("devices"):
        out.append(
            f"  devices       {', '.join(details['devices'])} (needs map_location on a CPU machine)"
        )

    if summary["tree"] and summary["tree"]["children"]:
        out += ["", "containers"]
        _tree_lines(summary["tree"], 0, out)

    if summary["candidates"]:
        out += ["", "state-dict candidates (largest first)"]
        for candidate in summary["candidates"]:
            dtypes = ", ".join(f"{k} x{v}" for k, v in candidate["dtypes"].items())
            path = candidate["path"] or "(root)"
            out.append(
                f"  {path:<40} {_n(candidate['tensors']):>7} tensors "
                f"{_n(candidate['bytes']):>15} bytes  {dtypes}"
            )

    if summary["tensors"]:
        current = None
        for tensor in summary["tensors"]:
            if tensor["container"] != current:
                current = tensor["container"]
                out += ["", f"tensors in {current or '(root)'}"]
                out.append(
                    f"  {'key':<48} {'dtype':<14} {'shape':<22} {'elements':>13} {'bytes':>15}"
                )
            kind = "" if tensor["kind"] in ("tensor", "parameter") else f"  ({tensor['kind']})"
            out.append(
                f"  {tensor['key']:<48} {tensor['dtype']:<14} {_shape(tensor['shape']):<22} "
                f"{_n(tensor['numel']):>13} {_n(tensor['bytes']):>15}{kind}"
            )

    if totals["by_dtype"]:
        out += ["", "totals by dtype"]
        for dtype, entry in totals["by_dtype"].items():
            out.append(
                f"  {dtype:<14} {_n(entry['tensors']):>7} tensors {_n(entry['elements']):>15} "
                f"elements {_n(entry['bytes']):>15} bytes"
            )
        if totals["storage_bytes"] and totals["storage_bytes"] != totals["bytes"]:
            out.append(
                f"  storages hold {_n(totals['storage_bytes'])} bytes (views and shared storages)"
            )

    if summary["globals"]:
        out += ["", "globals referenced by the pickle"]
        for ref in summary["globals"]:
            flag = (
                "allowed by weights_only"
                if ref["weights_only_allowed"]
                else "NOT allowed by weights_only"
            )
            if ref["dangerous"]:
                flag += "; RUNS CODE under weights_only=False"
            out.append(f"  {ref['name']:<56} x{ref['count']:<6} {flag}")

    if summary["warnings"]:
        out += ["", "warnings"]
        out += [f"  - {warning}" for warning in summary["warnings"]]
    return "\n".join(out) + "\n"
