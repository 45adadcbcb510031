"""`torchls diff A B`: what differs between two checkpoints, from their inspect documents.

Tensors are compared by name, shape and dtype; names that differ only by a wrapper prefix
(`module.`, `_orig_mod.`, `model.`) are matched as renamed, with the rule the load_state_dict
checks use (torchls.compare.find_prefix_fix). With values, `checkpoint.values` reads both files'
tensor bytes in a child process and adds each tensor's max abs difference and relative norm.
"""

from __future__ import annotations

from typing import Any

from torchls.compare import find_prefix_fix

SCHEMA = "torchls.diff/1"
ALL_TENSORS = "(all tensors)"


def _main_tensors(summary: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The state dict to compare: the largest mapping of names to tensors (a training
    checkpoint's ['state_dict']), else the one container that holds tensors, else every tensor
    by its full path."""
    tensors = summary.get("tensors") or []
    candidates = summary.get("candidates") or []
    if candidates and candidates[0].get("path", "").startswith("(pickled module)"):
        # torch.save(model): each submodule's `_parameters` is a mapping of tensors, and the
        # largest of them is not the model; compare every tensor by its path instead.
        candidates = []
    for candidate in candidates:
        path = candidate.get("path", "")
        chosen = {t["key"]: t for t in tensors if t["container"] == path}
        if chosen:
            return path, chosen
    containers = {t["container"] for t in tensors}
    if len(containers) == 1:  # one mapping that also holds other things: {"w": ..., "step": 3}
        only = containers.pop()
        return only, {t["key"]: t for t in tensors}
    everything = {}
    for tensor in tensors:
        everything[tensor["container"] + _subscript(tensor["key"])] = tensor
    return ALL_TENSORS, everything


def _subscript(key: str) -> str:
    return f"[{key!r}]"


def _flat_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The plain values a checkpoint records beside its tensors, by a dotted name."""
    found: dict[str, Any] = {"format": summary.get("format")}
    details = summary.get("details") or {}
    for group in ("metadata", "config"):
        values = details.get(group)
        if isinstance(values, dict):
            for key, value in values.items():
                found[f"{group}.{key}"] = value
    tree = summary.get("tree")
    stack: list[dict[str, Any]] = [tree] if isinstance(tree, dict) else []
    while stack:
        node = stack.pop()
        path = "" if node.get("path") == "(root)" else node.get("path", "")
        for key, value in (node.get("values") or {}).items():
            found[f"{path}[{key!r}]"] = value
        stack.extend(node.get("children") or [])
    return found


def _side(summary: dict[str, Any], container: str, tensors: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": summary.get("path"),
        "format": summary.get("format"),
        "container": container,
        "tensors": len(tensors),
        "bytes": sum(t["bytes"] for t in tensors.values()),
    }


def _row(tensor: dict[str, Any], key: str) -> dict[str, Any]:
    return {"key": key, "dtype": tensor["dtype"], "shape": list(tensor["shape"])}


def diff_documents(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The diff document (`torchls diff --json`) of two inspect documents."""
    a_container, a_tensors = _main_tensors(a)
    b_container, b_tensors = _main_tensors(b)
    rename = None
    b_name = {key: key for key in a_tensors}  # a's name -> b's name
    shapes_a = {k: tuple(t["shape"]) for k, t in a_tensors.items()}
    shapes_b = {k: tuple(t["shape"]) for k, t in b_tensors.items()}
    fix = find_prefix_fix(shapes_b, shapes_a) if a_tensors and b_tensors else None
    renamed = 0
    if fix is not None:
        for key in a_tensors:
            if fix.strip and key.startswith(fix.strip) and key[len(fix.strip) :] in b_tensors:
                b_name[key] = key[len(fix.strip) :]
            elif fix.add and fix.add + key in b_tensors:
                b_name[key] = fix.add + key
            renamed += b_name[key] != key
        rename = {"a_prefix": fix.strip, "b_prefix": fix.add, "tensors": renamed}
    matched_b = set()
    removed, shape_changed, dtype_changed, same = [], [], [], []
    for key, tensor in a_tensors.items():
        other_key = b_name[key]
        other = b_tensors.get(other_key)
        if other is None:
            removed.append(_row(tensor, key))
            continue
        matched_b.add(other_key)
        entry = {"key": key} if other_key == key else {"key": key, "b_key": other_key}
        if list(tensor["shape"]) != list(other["shape"]):
            shape_changed.append({**entry, "a": list(tensor["shape"]), "b": list(other["shape"])})
        if tensor["dtype"] != other["dtype"]:
            dtype_changed.append({**entry, "a": tensor["dtype"], "b": other["dtype"]})
        if list(tensor["shape"]) == list(other["shape"]) and tensor["dtype"] == other["dtype"]:
            same.append(entry)
    added = [_row(t, k) for k, t in b_tensors.items() if k not in matched_b]
    meta_a, meta_b = _flat_metadata(a), _flat_metadata(b)
    metadata_changed = [
        {"key": key, "a": meta_a.get(key), "b": meta_b.get(key)}
        for key in sorted(set(meta_a) | set(meta_b), key=str)
        if meta_a.get(key) != meta_b.get(key)
    ]
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "a": _side(a, a_container, a_tensors),
        "b": _side(b, b_container, b_tensors),
        "same_tensors": not (added or removed or renamed or shape_changed or dtype_changed),
        "unchanged": len(same),
        "added": added,
        "removed": removed,
        "renamed": rename,
        "shape_changed": shape_changed,
        "dtype_changed": dtype_changed,
        "metadata_changed": metadata_changed,
        "values": None,
    }
    document["summary"] = summary_line(document)
    return document


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def summary_line(document: dict[str, Any]) -> str:
    parts = []
    if document["renamed"]:
        rename = document["renamed"]
        how = (
            f"without the prefix {rename['a_prefix']!r}"
            if rename["a_prefix"]
            else f"with the prefix {rename['b_prefix']!r}"
        )
        parts.append(f"{_count(rename['tensors'], 'tensor')} renamed ({how} in B)")
    for field, text in (
        ("added", "added"),
        ("removed", "removed"),
        ("shape_changed", "changed shape"),
        ("dtype_changed", "changed dtype"),
    ):
        if document[field]:
            parts.append(f"{len(document[field]):,} {text}")
    values = document.get("values")
    if values is not None:
        changed = sum(1 for v in values if v.get("max_abs_diff") != 0.0)
        if changed:
            parts.append(f"{_count(changed, 'tensor')} with different values")
    if document["metadata_changed"]:
        parts.append(f"{_count(len(document['metadata_changed']), 'metadata value')} changed")
    if not parts:
        return f"the same {_count(document['unchanged'], 'tensor')}"
    return "; ".join(parts)


def add_values(document: dict[str, Any], a: str, b: str, python: str | None = None) -> None:
    """Fill document["values"] from the files' bytes (torchls.checkpoint.values)."""
    from torchls.checkpoint.values import compare_values

    document["values"] = compare_values(a, b, document, python)
    differ = any(row.get("max_abs_diff") != 0.0 for row in document["values"])
    document["same_values"] = not differ
    document["summary"] = summary_line(document)


def exit_code(document: dict[str, Any]) -> int:
    """0 when both hold the same tensors (and, with values, the same values), else 1."""
    if not document["same_tensors"]:
        return 1
    return 0 if document.get("same_values", True) else 1


# -- the command -------------------------------------------------------------------------------

SHOWN = 40  # rows per section in the text form


def add_arguments(parser: Any) -> None:
    parser.add_argument("a", help="a checkpoint file or a model folder")
    parser.add_argument("b", help="the checkpoint to compare it with")
    parser.add_argument("--json", action="store_true", help="print the torchls.diff/1 JSON")
    parser.add_argument(
        "--values",
        action="store_true",
        help="also compare the values: max abs difference and relative norm per tensor "
        "(reads the tensors' bytes; needs an interpreter with torch, see --python)",
    )
    parser.add_argument("--python", help="the interpreter with torch for --values (this one)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="give up reading a file after this (60 s)"
    )


def run(args: Any) -> int:
    import json
    import sys

    from torchls.checkpoint.errors import CheckpointError
    from torchls.checkpoint.isolated import read_isolated

    try:
        first = read_isolated(args.a, timeout=args.timeout)
        second = read_isolated(args.b, timeout=args.timeout)
        document = diff_documents(first, second)
        if args.values:
            add_values(document, args.a, args.b, args.python)
    except CheckpointError as exc:
        print(f"torchls diff: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
    else:
        sys.stdout.write(render_diff(document))
    return exit_code(document)


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _section(out: list[str], title: str, rows: list[str]) -> None:
    if not rows:
        return
    out += ["", title]
    out += [f"  {row}" for row in rows[:SHOWN]]
    if len(rows) > SHOWN:
        out.append(f"  ... {len(rows) - SHOWN:,} more")


def render_diff(document: dict[str, Any]) -> str:
    out = []
    for side in ("a", "b"):
        info = document[side]
        where = "" if info["container"] == "" else f", in {info['container']}"
        out.append(
            f"{side.upper()}: {info['path']} ({info['format']}{where}: "
            f"{_count(info['tensors'], 'tensor')}, {info['bytes']:,} bytes)"
        )
    rename = document["renamed"]
    if rename:
        how = (
            f"A's keys start with {rename['a_prefix']!r}, B's do not"
            if rename["a_prefix"]
            else f"B's keys start with {rename['b_prefix']!r}, A's do not"
        )
        out += ["", f"renamed: {_count(rename['tensors'], 'tensor')} ({how})"]

    def named(row: dict[str, Any]) -> str:
        return row["key"] if "b_key" not in row else f"{row['key']} -> {row['b_key']}"

    _section(
        out,
        "added (only in B)",
        [f"{r['key']:<48} {r['dtype']:<10} {_shape_text(r['shape'])}" for r in document["added"]],
    )
    _section(
        out,
        "removed (only in A)",
        [f"{r['key']:<48} {r['dtype']:<10} {_shape_text(r['shape'])}" for r in document["removed"]],
    )
    _section(
        out,
        "shape changed",
        [
            f"{named(r):<48} {_shape_text(r['a'])} -> {_shape_text(r['b'])}"
            for r in document["shape_changed"]
        ],
    )
    _section(
        out,
        "dtype changed",
        [f"{named(r):<48} {r['a']} -> {r['b']}" for r in document["dtype_changed"]],
    )
    _section(
        out,
        "metadata changed",
        [f"{r['key']}: {r['a']!r} -> {r['b']!r}" for r in document["metadata_changed"]],
    )
    values = document.get("values")
    if values is not None:
        rows = sorted(
            (r for r in values if r.get("max_abs_diff") != 0.0),
            key=lambda r: -(r.get("rel_norm") or 0.0) if "error" not in r else 1.0,
        )
        _section(
            out,
            "values differ (largest relative difference first)",
            [
                f"{named(r):<48} {r['error']}"
                if "error" in r
                else f"{named(r):<48} max abs diff {r['max_abs_diff']:.6g}, relative norm "
                + ("n/a" if r["rel_norm"] is None else f"{r['rel_norm']:.6g}")
                for r in rows
            ],
        )
    out += ["", document["summary"]]
    return "\n".join(out) + "\n"
