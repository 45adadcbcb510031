"""Constructor arguments as data the worker can rebuild: literals, references and simple calls.

The server reads a call like `Net(num_classes=NUM_CLASSES, config=BertConfig(hidden_size=256))`
and turns each argument into a small JSON expression. It never evaluates anything itself; the
worker (in a trusted workspace only) imports the referenced names and makes the calls.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

Value = dict[str, Any]
# Resolves a name or dotted attribute used in an argument to a reference, or None.
RefResolver = Callable[[ast.expr], "Value | None"]
# The expression last assigned to a plain name before a line, or None.
NameLookup = Callable[[str, int], "ast.expr | None"]
# What a scope does to a name between two lines, after `config = ...`: its attribute and item
# assignments in order, as ("attr" | "item", key, value); None when the name may change in a
# way torchls cannot follow (a method call on it, an assignment under an `if`).
Edit = tuple[str, str, ast.expr]
EditLookup = Callable[[str, int, int], "list[Edit] | None"]

_MAX_DEPTH = 6
# The few builtins an argument may call: they build plain data and touch nothing outside.
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "range", "int", "float", "str"}


def unknown(node: ast.expr, why: str = "") -> Value:
    try:
        text = ast.unparse(node)[:80]
    except RecursionError:
        text = "(a deeply nested expression)"
    return {"unknown": text, "why": why}


def is_unknown(value: Value) -> bool:
    return "unknown" in value


def read_value(
    node: ast.expr,
    resolve_ref: RefResolver,
    lookup: NameLookup,
    depth: int = 0,
    edits: EditLookup | None = None,
) -> Value:
    """The expression `node` as a worker-side value, or an `unknown` marker with the reason.

    With `edits`, a name's value includes what the scope does to it after the assignment and
    before the use: `config = GPT.get_default_config()` then `config.vocab_size = 50257`."""
    if depth > _MAX_DEPTH:
        return unknown(node, "nested too deeply")

    def again(child: ast.expr) -> Value:
        return read_value(child, resolve_ref, lookup, depth + 1, edits)

    if isinstance(node, ast.Constant):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            return unknown(node, "not a finite number")
        if isinstance(node.value, (bool, int, float, str)) or node.value is None:
            value = node.value
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1 << 62:
                return unknown(node, "a number too large")
            return {"literal": node.value}
        return unknown(node, "not a plain value")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = again(node.operand)
        if isinstance(inner.get("literal"), (int, float)) and not isinstance(
            inner.get("literal"), bool
        ):
            sign = -1 if isinstance(node.op, ast.USub) else 1
            return {"literal": sign * inner["literal"]}
        return unknown(node, "not a number")
    if isinstance(node, ast.BinOp) and isinstance(
        node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div, ast.Pow)
    ):
        return _arithmetic(node, again)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [again(item) for item in node.elts]
        for element in items:
            if is_unknown(element):
                return element
        kind = {ast.Tuple: "tuple", ast.List: "list", ast.Set: "set"}[type(node)]
        return {kind: items}
    if isinstance(node, ast.Dict):
        pairs = []
        for key, entry in zip(node.keys, node.values, strict=True):
            if key is None:
                return unknown(node, "a ** in a dict")
            key_value, item_value = again(key), again(entry)
            for part in (key_value, item_value):
                if is_unknown(part):
                    return part
            pairs.append([key_value, item_value])
        return {"dict": pairs}
    if isinstance(node, ast.Name) and node.id in {"True", "False", "None"}:
        return {"literal": {"True": True, "False": False, "None": None}[node.id]}
    if isinstance(node, (ast.Name, ast.Attribute)):
        if isinstance(node, ast.Name):
            line = getattr(node, "lineno", 1 << 30)
            assigned = lookup(node.id, line)
            if assigned is not None:
                seen = again(assigned)
                if edits is None or is_unknown(seen):
                    return seen
                changes = edits(node.id, getattr(assigned, "end_lineno", None) or line, line)
                if changes is None:
                    return unknown(
                        node, "changed after its assignment in a way torchls cannot follow"
                    )
                return _edited(node, seen, changes, again)
        ref = resolve_ref(node)
        if ref is not None:
            return ref
        return unknown(node, "a name torchls cannot see the value of")
    if isinstance(node, ast.Call):
        return _call(node, resolve_ref, again)
    if isinstance(node, ast.Subscript):
        return _item(node, again)
    return unknown(node, "an expression torchls does not evaluate")


def _item(node: ast.Subscript, again: Callable[[ast.expr], Value]) -> Value:
    """`args["n_layer"]`, `sizes[0]` of a dict, list or tuple torchls can see whole (a literal,
    or a checkpoint's saved values standing in for the `torch.load` that returns them)."""
    key = node.slice
    if not isinstance(key, ast.Constant) or not isinstance(key.value, (str, int)):
        return unknown(node, "an expression torchls does not evaluate")
    container = again(node.value)
    items = keyword_dict(container) if "call" in container else None
    if items is not None:
        container = {"dict": [[{"literal": k}, v] for k, v in items.items()]}
    if "dict" in container:
        for pair_key, item in container["dict"]:
            if pair_key == {"literal": key.value}:
                return dict(item)
        return unknown(node, "a key torchls sees no plain value for")
    sequence = container.get("list", container.get("tuple"))
    index = key.value
    if isinstance(sequence, list) and isinstance(index, int) and not isinstance(index, bool):
        if -len(sequence) <= index < len(sequence):
            return dict(sequence[index])
        return unknown(node, "an index past the end")
    return unknown(node, "an expression torchls does not evaluate")


def _edited(
    node: ast.expr, value: Value, changes: list[Edit], again: Callable[[ast.expr], Value]
) -> Value:
    """A dict with `d["k"] = v` applied, or a call's result with `obj.k = v` applied (the
    worker sets those attributes after the call, on objects `settable` allows)."""
    if not changes:
        return value
    as_dict = keyword_dict(value) if "call" in value else None
    if as_dict is not None:  # dict(n_layer=12) then model_args["bias"] = False
        value = {"dict": [[{"literal": key}, item] for key, item in as_dict.items()]}
    if "dict" in value:
        pairs = list(value["dict"])
        for kind, key, expression in changes:
            if kind != "item":
                return unknown(node, "a dict given attributes")
            item = again(expression)
            if is_unknown(item):
                return item
            pairs = [pair for pair in pairs if pair[0] != {"literal": key}]
            pairs.append([{"literal": key}, item])
        return {"dict": pairs}
    if "call" in value and settable(value["call"]["ref"]):
        assigned: dict[str, Value] = dict(value.get("setattr") or {})
        for kind, key, expression in changes:
            if kind != "attr":
                return unknown(node, "an object changed by item assignment")
            item = again(expression)
            if is_unknown(item):
                return item
            assigned[key] = item
        return {**value, "setattr": assigned}
    return unknown(node, "a value changed after its assignment")


def settable(target: dict[str, Any]) -> bool:
    """The objects whose attributes the worker may set after making them: your own classes'
    (a config built by `GPT.get_default_config()`), SimpleNamespace and Hugging Face configs."""
    if "file" in target:
        return True
    dotted = str(target.get("import", ""))
    return dotted == "types.SimpleNamespace" or (
        dotted.startswith("transformers.") and callable_allowed(target)
    )


def _arithmetic(node: ast.BinOp, again: Callable[[ast.expr], Value]) -> Value:
    left, right = again(node.left), again(node.right)
    a, b = left.get("literal"), right.get("literal")
    numbers = (int, float)
    if not (isinstance(a, numbers) and isinstance(b, numbers)):
        return unknown(node, "arithmetic on values torchls cannot see")
    if isinstance(a, bool) or isinstance(b, bool):
        return unknown(node, "arithmetic on booleans")
    try:
        if isinstance(node.op, ast.Add):
            result = a + b
        elif isinstance(node.op, ast.Sub):
            result = a - b
        elif isinstance(node.op, ast.Mult):
            result = a * b
        elif isinstance(node.op, ast.FloorDiv):
            result = a // b
        elif isinstance(node.op, ast.Div):
            result = a / b
        else:
            if abs(b) > 64:
                return unknown(node, "a power too large")
            result = a**b
    except (ZeroDivisionError, OverflowError):
        return unknown(node, "arithmetic that fails")
    if isinstance(result, int) and abs(result) > 1 << 62:
        return unknown(node, "a number too large")
    if not isinstance(result, (int, float)) or (
        isinstance(result, float) and not math.isfinite(result)
    ):
        return unknown(node, "arithmetic that gives no plain number")
    return {"literal": result}


def parse_argument_list(text: str) -> ast.Call | None:
    """`(10, width=64)`, as written after `# torchls: args=` or `--args`, as a call node."""
    try:
        call = ast.parse(f"f{text.strip()}", mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        return None
    return call if isinstance(call, ast.Call) else None


def callable_allowed(target: dict[str, Any]) -> bool:
    """The calls an argument may make: an allowlist, since the worker makes them.

    Your own code (a function or class of the workspace, or a class's method such as
    `GPT.get_default_config()`: the worker runs your code anyway to build the model), plain-data
    builtins, `types.SimpleNamespace`, Hugging Face config classes and torch.nn module classes.
    Nothing else: not `torch.load`, not `torch.os.system`, no other standard library."""
    if "file" in target:
        return True
    dotted = str(target.get("import", ""))
    if dotted == "types.SimpleNamespace":  # the one standard-library call: it only holds values
        return True
    parts = dotted.split(".")
    if len(parts) == 2 and parts[0] == "builtins":
        return parts[1] in _SAFE_BUILTINS
    if parts[0] == "transformers" and len(parts) >= 2:
        name = parts[-2] if parts[-1] == "from_pretrained" else parts[-1]
        return name.endswith("Config") and name.isidentifier()
    return len(parts) == 3 and parts[:2] == ["torch", "nn"] and parts[2][:1].isupper()


def _call(node: ast.Call, resolve_ref: RefResolver, again: Callable[[ast.expr], Value]) -> Value:
    if isinstance(node.func, ast.Name) and node.func.id in _SAFE_BUILTINS:
        ref: Value | None = {"ref": {"import": f"builtins.{node.func.id}"}}
    else:
        ref = resolve_ref(node.func)
    if ref is None:
        return unknown(node, "a call to something torchls cannot see")
    if is_unknown(ref):  # the resolver's own reason: two classes of that name, say
        return ref
    target = ref.get("ref", {})
    if not callable_allowed(target):
        return unknown(node, "a call torchls does not make for you")
    args = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            return unknown(node, "a *args call")
        value = again(arg)
        if is_unknown(value):
            return value
        args.append(value)
    kwargs: dict[str, Value] = {}
    for keyword in node.keywords:
        value = again(keyword.value)
        if is_unknown(value):
            return value
        if keyword.arg is None:  # **model_args, a dict torchls can see whole
            expanded = keyword_dict(value)
            if expanded is None:
                return unknown(node, "a **kwargs call with keys torchls cannot see")
            kwargs.update(expanded)
            continue
        kwargs[keyword.arg] = value
    return {"call": {"ref": target, "args": args, "kwargs": kwargs}}


def keyword_dict(value: Value) -> dict[str, Value] | None:
    """`{"n_layer": 12}` or `dict(n_layer=12)` read as a value: its items, when every key is a
    name (what `**` passes by keyword), else None."""
    if "dict" in value:
        found: dict[str, Value] = {}
        for key, item in value["dict"]:
            name = key.get("literal")
            if not isinstance(name, str) or not name.isidentifier():
                return None
            found[name] = item
        return found
    call = value.get("call")
    if call and call["ref"] == {"import": "builtins.dict"} and not call["args"]:
        return dict(call["kwargs"])
    return None


def describe(value: Value) -> str:
    """A short rendering of a value for hovers: `10`, `(3, 3)`, `BertConfig(...)`."""
    if "literal" in value:
        return repr(value["literal"])
    for kind, open_, close in (("tuple", "(", ")"), ("list", "[", "]"), ("set", "{", "}")):
        if kind in value:
            inner = ", ".join(describe(item) for item in value[kind])
            return (
                f"{open_}{inner}{',' if kind == 'tuple' and len(value[kind]) == 1 else ''}{close}"
            )
    if "dict" in value:
        return "{" + ", ".join(f"{describe(k)}: {describe(v)}" for k, v in value["dict"]) + "}"
    if "ref" in value:
        ref = value["ref"]
        return str(ref.get("import") or ref.get("qualname"))
    if "call" in value:
        ref = value["call"]["ref"]
        name = str(ref.get("import") or ref.get("qualname"))
        name = ".".join(name.split(".")[-2:]) if "file" in ref else name.rsplit(".", 1)[-1]
        return f"{name}(...)"
    return str(value.get("unknown", "?"))
