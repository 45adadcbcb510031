"""Where a model's input shape is written in the source: comments, Lightning, literal calls.

Only literal shapes count (`torch.randn(1, 3, 224, 224)`, or a name assigned one); a tensor that
comes from a data loader is invisible here, and the hover then falls back to settings or a guess.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

from torchls.source.imports import ImportTable, dotted_name
from torchls.source.spec import DTYPES, InputSpec, SpecError, TensorSpec, parse_shapes
from torchls.source.text import Lines

NameLookup = Callable[[str, int], "ast.expr | None"]
_FACTORIES = {"randn", "rand", "zeros", "ones", "empty", "randint", "full", "randn_like"}
_KEEP_DTYPE = {"to", "cuda", "cpu", "requires_grad_", "contiguous", "detach", "clone"}
_CAST = {
    "float": "float32",
    "half": "float16",
    "bfloat16": "bfloat16",
    "double": "float64",
    "long": "int64",
    "int": "int32",
    "bool": "bool",
}
_MAX_DEPTH = 4


def from_directive(value: str, line: int) -> tuple[InputSpec | None, str]:
    try:
        tensors = parse_shapes(value)
    except SpecError as exc:
        return None, f"`# torchls: input=` on line {line}: {exc}"
    return InputSpec(tensors, f"`# torchls: input=` on line {line}"), ""


def from_setting(name: str, value: str) -> tuple[InputSpec | None, str]:
    try:
        tensors = parse_shapes(value)
    except SpecError as exc:
        return None, f"torchls.defaultInputShapes[{name!r}]: {exc}"
    return InputSpec(tensors, f"the torchls.defaultInputShapes setting ({name!r})"), ""


def example_input_array(node: ast.ClassDef, lines: Lines, path: str) -> InputSpec | None:
    """Lightning's `example_input_array`, as a class attribute or `self.` assignment."""
    no_names: NameLookup = lambda name, line: None  # noqa: E731
    for statement in ast.walk(node):
        if not isinstance(statement, (ast.Assign, ast.AnnAssign)) or statement.value is None:
            continue
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            name = target.attr if isinstance(target, ast.Attribute) else None
            if isinstance(target, ast.Name):
                name = target.id
            if name != "example_input_array":
                continue
            value = statement.value
            items = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
            tensors = [tensor_spec(item, no_names) for item in items]
            if tensors and all(tensor is not None for tensor in tensors):
                where = f"`example_input_array` on line {statement.lineno}"
                if Path(path).name:
                    where += f" of {Path(path).name}"
                return InputSpec(tuple(t for t in tensors if t is not None), where)
    return None


def from_call_site(
    call: ast.Call, variables: set[str], imports: ImportTable, lookup: NameLookup
) -> InputSpec | None:
    """Inputs from `model(x)`, `model.forward(x)` or thop's `profile(model, inputs=(x,))`."""
    func = call.func
    arguments: list[ast.expr] | None = None
    if (isinstance(func, ast.Name) and func.id in variables) or (
        isinstance(func, ast.Attribute)
        and func.attr == "forward"
        and isinstance(func.value, ast.Name)
        and func.value.id in variables
    ):
        arguments = list(call.args)
    else:
        callee = dotted_name(func) or ""
        if (
            callee.rsplit(".", 1)[-1] == "profile"
            and call.args
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id in variables
        ):
            given = next((k.value for k in call.keywords if k.arg == "inputs"), None)
            if given is None and len(call.args) > 1:
                given = call.args[1]
            if given is not None:
                given = _follow(given, lookup, call.lineno)
                if isinstance(given, (ast.Tuple, ast.List)):
                    arguments = list(given.elts)
    if not arguments or any(isinstance(arg, ast.Starred) for arg in arguments):
        return None
    tensors = [tensor_spec(arg, lookup) for arg in arguments]
    if not all(tensor is not None for tensor in tensors):
        return None
    code = ast.unparse(call)
    if len(code) > 60:
        code = code[:57] + "..."
    return InputSpec(
        tuple(t for t in tensors if t is not None), f"the call `{code}` on line {call.lineno}"
    )


def _follow(node: ast.expr, lookup: NameLookup, line: int, depth: int = 0) -> ast.expr:
    while isinstance(node, ast.Name) and depth < _MAX_DEPTH:
        found = lookup(node.id, line)
        if found is None:
            break
        node, depth = found, depth + 1
    return node


def tensor_spec(node: ast.expr, lookup: NameLookup, depth: int = 0) -> TensorSpec | None:
    """`torch.randn(1, 3, 224, 224)` (or a name assigned one) -> its shape and dtype."""
    if depth > _MAX_DEPTH:
        return None
    line = getattr(node, "lineno", 1 << 30)
    node = _follow(node, lookup, line)
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
        inner = tensor_spec(func.value, lookup, depth + 1)
        if inner is None:
            return None
        if func.attr in _KEEP_DTYPE:
            dtype = _dtype_keyword(node) or inner.dtype
            return TensorSpec(inner.shape, dtype)
        if func.attr in _CAST:
            return TensorSpec(inner.shape, _CAST[func.attr])
        return None
    name = (dotted_name(func) or "").rsplit(".", 1)[-1]
    if name not in _FACTORIES:
        return None
    positional = [_int(arg, lookup) for arg in node.args]
    if name == "randint":
        size_node = next((k.value for k in node.keywords if k.arg == "size"), None)
        if size_node is None and node.args:
            size_node = node.args[-1]
        shape = _shape(size_node, lookup) if size_node is not None else None
        return TensorSpec(shape, _dtype_keyword(node) or "int64") if shape else None
    if name == "full":
        shape = _shape(node.args[0], lookup) if node.args else None
        return TensorSpec(shape, _dtype_keyword(node) or "float32") if shape else None
    size_node = next((k.value for k in node.keywords if k.arg == "size"), None)
    if size_node is not None:
        shape = _shape(size_node, lookup)
    elif len(node.args) == 1 and not isinstance(positional[0], int):
        shape = _shape(node.args[0], lookup)
    else:
        ints = [value for value in positional if isinstance(value, int)]
        shape = tuple(ints) if ints and len(ints) == len(positional) else None
    if not shape or any(dim <= 0 for dim in shape):
        return None
    return TensorSpec(shape, _dtype_keyword(node) or "float32")


def _int(node: ast.expr, lookup: NameLookup) -> int | None:
    node = _follow(node, lookup, getattr(node, "lineno", 1 << 30))
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shape(node: ast.expr, lookup: NameLookup) -> tuple[int, ...] | None:
    node = _follow(node, lookup, getattr(node, "lineno", 1 << 30))
    if isinstance(node, (ast.Tuple, ast.List)):
        dims = [_int(item, lookup) for item in node.elts]
        if dims and all(isinstance(dim, int) and dim > 0 for dim in dims):
            return tuple(dim for dim in dims if dim is not None)
        return None
    single = _int(node, lookup)
    return (single,) if single is not None and single > 0 else None


def _dtype_keyword(call: ast.Call) -> str | None:
    for keyword in call.keywords:
        if keyword.arg == "dtype":
            name = (dotted_name(keyword.value) or "").rsplit(".", 1)[-1]
            return DTYPES.get(name)
    for arg in call.args:  # .to(torch.float16)
        name = (dotted_name(arg) or "").rsplit(".", 1)[-1]
        if name in DTYPES and name not in {"int", "float", "bool"}:
            return DTYPES[name]
    return None
