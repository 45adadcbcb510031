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
    checkpoint's ['state_dict']), else every tensor by its full path."""
    tensors = summary.get("tensors") or []
    for candidate in summary.get("candidates") or []:
        path = candidate.get("path", "")
        chosen = {t["key"]: t for t in tensors if t["container"] == path}
        if chosen:
            return path, chosen
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
        changed = sum(1 for v in values if v.get("max_abs_diff"))
        parts.append(f"{_count(changed, 'tensor')} with different values")
    if document["metadata_changed"]:
        parts.append(f"{_count(len(document['metadata_changed']), 'metadata value')} changed")
    if not parts:
        return f"the same {_count(document['unchanged'], 'tensor')}"
    return "; ".join(parts)
