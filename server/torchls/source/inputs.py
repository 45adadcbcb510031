"""Where a model's input shape is written in the source: comments, Lightning, literal calls.

Only literal shapes count (`torch.randn(1, 3, 224, 224)`, or a name assigned one); a tensor that
comes from a data loader is invisible here, and the hover then falls back to settings or a guess.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

from torchls.source.imports import ImportTable, dotted_name
from torchls.source.spec import (
    DTYPES,
    InputItem,
    InputSpec,
    SpecError,
    TensorSpec,
    TupleSpec,
    parse_inputs,
)
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


def from_text(value: str, source: str) -> InputSpec:
    """An input written in the spec language (`--input`, `# torchls: input=`, the setting)."""
    positional, keywords = parse_inputs(value)
    return InputSpec(positional, source, keywords=keywords)


def from_directive(value: str, line: int) -> tuple[InputSpec | None, str]:
    try:
        spec = from_text(value, f"`# torchls: input=` on line {line}")
    except SpecError as exc:
        return None, f"`# torchls: input=` on line {line}: {exc}"
    return spec, ""


def from_setting(name: str, value: str) -> tuple[InputSpec | None, str]:
    try:
        spec = from_text(value, f"the torchls.defaultInputShapes setting ({name!r})")
    except SpecError as exc:
        return None, f"torchls.defaultInputShapes[{name!r}]: {exc}"
    return spec, ""


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
    """Inputs from a call that runs the model bound to one of `variables` on tensors: `model(x)`,
    `model.forward(x, mask=m)`, thop's `profile(model, inputs=(x,))`, torchinfo's
    `summary(model, input_size=(1, 3, 224, 224))`, fvcore's `FlopCountAnalysis(model, x)`,
    ptflops' `get_model_complexity_info(model, (3, 224, 224))` (a shape without the batch)."""
    found = _call_site_inputs(call, variables, imports, lookup)
    if found is None:
        return None
    positional, keywords = found
    code = ast.unparse(call)
    if len(code) > 60:
        code = code[:57] + "..."
    return InputSpec(positional, f"the call `{code}` on line {call.lineno}", keywords=keywords)


Found = tuple[tuple[InputItem, ...], tuple[tuple[str, InputItem], ...]]


def _call_site_inputs(
    call: ast.Call, variables: set[str], imports: ImportTable, lookup: NameLookup
) -> Found | None:
    func = call.func
    if (isinstance(func, ast.Name) and func.id in variables) or (
        isinstance(func, ast.Attribute)
        and func.attr == "forward"
        and isinstance(func.value, ast.Name)
        and func.value.id in variables
    ):
        return _arguments(call.args, call.keywords, lookup)
    if not (call.args and isinstance(call.args[0], ast.Name) and call.args[0].id in variables):
        return None
    written = dotted_name(func) or ""
    resolved = imports.resolve(func) or written
    name = written.rsplit(".", 1)[-1]

    def given(keyword: str, position: int) -> ast.expr | None:
        value = next((k.value for k in call.keywords if k.arg == keyword), None)
        if value is None and len(call.args) > position:
            value = call.args[position]
        return value

    if name == "profile" or name == "FlopCountAnalysis":
        # thop: inputs=(x,) is the forward's positional arguments; fvcore: a tensor or a tuple
        value = given("inputs", 1)
        if value is None:
            return None
        value = follow(value, lookup, call.lineno)
        if isinstance(value, (ast.Tuple, ast.List)):
            return _arguments(value.elts, [], lookup)
        if name == "FlopCountAnalysis":
            return _arguments([value], [], lookup)
        return None
    if name == "summary" and resolved.split(".")[0] in {"torchinfo", "torchsummary"}:
        data = given("input_data", 99)
        if data is not None:
            data = follow(data, lookup, call.lineno)
            elements = data.elts if isinstance(data, (ast.Tuple, ast.List)) else [data]
            return _arguments(elements, [], lookup)
        size = given("input_size", 1)
        if size is None:
            return None
        batch = () if resolved.startswith("torchinfo") else (1,)  # torchsummary adds the batch
        shapes = _shapes(size, lookup)
        if shapes is None:
            return None
        dtypes = _summary_dtypes(call, len(shapes))
        pairs = zip(shapes, dtypes, strict=True)
        return tuple(TensorSpec(batch + shape, dtype) for shape, dtype in pairs), ()
    if name == "get_model_complexity_info":
        size = given("input_res", 1)
        shape = _shape(size, lookup) if size is not None else None
        if shape is None:
            return None
        return (TensorSpec((1, *shape)),), ()  # ptflops makes a batch of one
    return None


def _arguments(
    args: list[ast.expr], keywords: list[ast.keyword], lookup: NameLookup
) -> Found | None:
    if not args and not keywords:
        return None
    positional = []
    for arg in args:
        if isinstance(arg, ast.Starred):
            return None
        item = _item(arg, lookup)
        if item is None:
            return None
        positional.append(item)
    named = []
    for keyword in keywords:
        if keyword.arg is None:
            return None
        item = _item(keyword.value, lookup)
        if item is None:
            return None
        named.append((keyword.arg, item))
    return tuple(positional), tuple(named)


def _item(node: ast.expr, lookup: NameLookup, depth: int = 0) -> InputItem | None:
    """A tensor, or a tuple of tensors (an LSTM's `(h, c)`)."""
    followed = follow(node, lookup, getattr(node, "lineno", 1 << 30))
    if isinstance(followed, (ast.Tuple, ast.List)) and depth < 3:
        items = [_item(element, lookup, depth + 1) for element in followed.elts]
        if not items or any(item is None for item in items):
            return None
        return TupleSpec(tuple(item for item in items if item is not None))
    return tensor_spec(node, lookup)


def _shapes(node: ast.expr, lookup: NameLookup) -> list[tuple[int, ...]] | None:
    """torchinfo's input_size: one shape, or a list of them."""
    node = follow(node, lookup, getattr(node, "lineno", 1 << 30))
    if (
        isinstance(node, (ast.Tuple, ast.List))
        and node.elts
        and all(isinstance(follow(e, lookup, 1 << 30), (ast.Tuple, ast.List)) for e in node.elts)
    ):
        shapes = [_shape(element, lookup) for element in node.elts]
        if all(shape is not None for shape in shapes):
            return [shape for shape in shapes if shape is not None]
        return None
    single = _shape(node, lookup)
    return [single] if single is not None else None


def _summary_dtypes(call: ast.Call, count: int) -> list[str]:
    value = next((k.value for k in call.keywords if k.arg == "dtypes"), None)
    names = value.elts if isinstance(value, (ast.Tuple, ast.List)) else []
    dtypes = [DTYPES.get((dotted_name(n) or "").rsplit(".", 1)[-1], "float32") for n in names]
    return (dtypes + ["float32"] * count)[:count] if dtypes else ["float32"] * count


def follow(node: ast.expr, lookup: NameLookup, line: int, depth: int = 0) -> ast.expr:
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
    node = follow(node, lookup, line)
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
    node = follow(node, lookup, getattr(node, "lineno", 1 << 30))
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _shape(node: ast.expr, lookup: NameLookup) -> tuple[int, ...] | None:
    node = follow(node, lookup, getattr(node, "lineno", 1 << 30))
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
