"""The module tree of a counted forward (the `tree` field of a profile job) and the heaviest
layers with repeated blocks grouped (`layer1.0-2.conv2`, 3 layers, their MACs summed)."""

from __future__ import annotations

from typing import Any

MAX_ROWS = 5000
TOP_LAYERS = 8


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def _parameters(module: Any) -> tuple[int, int]:
    """(all, trainable) parameters of the module and below, each tensor once."""
    total = trainable = 0
    for parameter in module.parameters():
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
    return total, trainable


def module_tree(
    modules: dict[str, Any],
    inclusive: dict[str, int],
    own: dict[str, int],
    outputs: dict[str, list[int]],
    calls: dict[str, int],
    macs: int,
) -> tuple[list[dict[str, Any]], bool]:
    """Rows in pre-order (the order of `named_modules()`), each module once even when it is
    reachable by two paths; and whether the tree was cut at MAX_ROWS. `inclusive` and `own`
    are MACs, `modules` maps path to module in pre-order."""
    rows: list[dict[str, Any]] = []
    by_path: dict[str, dict[str, Any]] = {}
    truncated = len(modules) > MAX_ROWS
    for path, module in list(modules.items())[:MAX_ROWS]:
        total, trainable = _parameters(module)
        row = {
            "path": path,
            "type": type(module).__name__,
            "depth": _depth(path),
            "output": outputs.get(path),
            "params": total,
            "trainable": trainable,
            "macs": inclusive.get(path, 0),
            "own_macs": own.get(path, 0),
            "share": inclusive.get(path, 0) / macs if macs else 0.0,
            "calls": calls.get(path, 0),
            "repeat": None,
        }
        rows.append(row)
        by_path[path] = row
    _mark_repeats(modules, by_path)
    return rows, truncated


def _mark_repeats(modules: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """On the first row of each run of >= 2 consecutive siblings alike (same type, parameters
    and MACs): `{"label": "layer1.0-2", "count": 3, "last": "layer1.2"}`."""
    paths = {id(module): path for path, module in modules.items()}
    for path, module in modules.items():
        if path not in rows:
            continue
        children = [
            paths[id(child)]
            for child in module.children()
            if id(child) in paths and paths[id(child)] in rows
        ]
        # a child reachable by two paths appears under its first parent only
        children = [child for child in children if child.rpartition(".")[0] == path]
        run: list[str] = []
        for child in [*children, None]:
            if run and (child is None or not _alike(rows[run[0]], rows[child])):
                if len(run) >= 2:
                    names = [p.rpartition(".")[2] for p in run]
                    prefix = f"{path}." if path else ""
                    rows[run[0]]["repeat"] = {
                        "label": f"{prefix}{_indices(names)}",
                        "count": len(run),
                        "last": run[-1],
                    }
                run = []
            if child is not None:
                run.append(child)


def _alike(first: dict[str, Any], other: dict[str, Any]) -> bool:
    return bool(
        first["type"] == other["type"]
        and first["params"] == other["params"]
        and first["macs"] == other["macs"]
    )


def _indices(names: list[str]) -> str:
    """`0-2` for 0, 1, 2; `0,2,5`; `0-3,7`; names that are not integers: `first-last`."""
    if not all(name.isdigit() for name in names):
        return f"{names[0]}-{names[-1]}"
    numbers = sorted(int(name) for name in names)
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(f"{start}-{previous}" if previous > start else f"{start}")
        if number is not None:
            start = previous = number
    return ",".join(parts)


def grouped_layers(
    modules: dict[str, Any],
    own: dict[str, int],
    outputs: dict[str, list[int]],
    macs: int,
) -> list[dict[str, Any]]:
    """The heaviest layers by their own MACs, with layers whose paths differ in one integer
    component (same type, same MACs) grouped: `layer1.0-2.conv2`, count 3, MACs and share
    summed, params per layer. Grouped over all modules first, then cut to TOP_LAYERS."""
    candidates = [path for path, count in own.items() if count > 0 and path in modules]
    keys: dict[tuple[Any, ...], list[str]] = {}  # (index, before, after, type, MACs)
    options: dict[str, list[tuple[Any, ...]]] = {}
    for path in candidates:
        parts = path.split(".") if path else []
        kind = type(modules[path]).__name__
        for index, part in enumerate(parts):
            if part.isdigit():
                key = (index, tuple(parts[:index]), tuple(parts[index + 1 :]), kind, own[path])
                keys.setdefault(key, []).append(path)
                options.setdefault(path, []).append(key)
    # Largest groups first; a layer joins one group only.
    placed: set[str] = set()
    groups: list[tuple[list[str], tuple[Any, ...] | None]] = []
    for key, members in sorted(keys.items(), key=lambda item: (-len(item[1]), item[0][0])):
        free = [path for path in members if path not in placed]
        if len(free) < 2:
            continue
        placed.update(free)
        groups.append((free, key))
    groups += [([path], None) for path in candidates if path not in placed]

    entries: list[dict[str, Any]] = []
    for members, grouped in groups:
        first = members[0]
        module = modules[first]
        total = sum(own[path] for path in members)
        if grouped is None:
            label = first or f"({type(module).__name__}.forward)"
        else:
            index, before, after = grouped[0], grouped[1], grouped[2]
            numbers = _indices([path.split(".")[index] for path in members])
            label = ".".join([*before, numbers, *after])
        entries.append(
            {
                "path": label,
                "type": type(module).__name__,
                "output": outputs.get(first),
                "params": _parameters(module)[0],
                "macs": total,
                "share": total / macs if macs else 0.0,
                "count": len(members),
            }
        )
    entries.sort(key=lambda entry: -int(entry["macs"]))
    return entries[:TOP_LAYERS]
