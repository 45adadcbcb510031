"""Where a submodule of a model is built: `fc1` -> `self.fc1 = nn.Linear(3200, 10)` in __init__.

A shape-mismatch failure names the module by its path in the built model (`fc1`, `features.3`,
`encoder.layers.0.linear1`). This module follows that path through the source, without running
it: the attribute assigned in the class's `__init__` (or an inherited one), an index into
`nn.Sequential(...)` or `nn.ModuleList([...])` (a comprehension's element stands for every
index), a key of `nn.ModuleDict({...})` or of a Sequential's OrderedDict, and a workspace class
built there (`self.encoder = Encoder(...)`: its own `__init__`). Then it picks the argument a
fix rewrites, and says whether that is safe to rewrite: an int literal or plain arithmetic of
int literals is; an expression with names (`hidden * 7 * 7`) is not, since a name may be used
elsewhere, so a fix would say what it must become instead.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from torchls.source.imports import dotted_name
from torchls.source.project import ModuleFile, Project
from torchls.source.text import Lines, Span

_MAX_DEPTH = 12  # classes followed through bases and nested attributes
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}
_ARITHMETIC: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


@dataclass(frozen=True)
class Argument:
    """The argument of a construction call that a shape fix rewrites."""

    keyword: str | None  # `in_features` when passed by name, None when positional
    span: Span  # the expression's range (LSP units)
    text: str  # its source text: `3200`, `64 * 5 * 5`, `hidden * 7 * 7`
    value: int | None  # its value when it is literal arithmetic, else None
    names: tuple[str, ...] = ()  # the names it reads (not rewritable when any)

    @property
    def rewritable(self) -> bool:
        return self.value is not None and not self.names


@dataclass(frozen=True)
class Construction:
    """The call that builds a module, in the file that holds it."""

    path: str  # the file
    text: str  # the file's text the spans refer to
    module: str  # the module path that led here: `features.3`
    call_span: Span
    call_text: str  # `nn.Linear(3200, 10)`
    line: int  # 0-based line of the call
    argument: Argument | None  # None when the call does not show it (defaults, *args)
    shared: bool = False  # one expression builds several modules (a comprehension's element)


@dataclass(frozen=True)
class Lookup:
    construction: Construction | None
    why: str = ""  # why it was not found, a sentence fragment ("features is built in a loop")


@dataclass
class _Scope:
    """A class's __init__ being read: its file and the statements bound in it."""

    module: ModuleFile
    function: ast.FunctionDef
    locals: dict[str, ast.expr] = field(default_factory=dict)


def find_construction(
    project: Project,
    module: ModuleFile,
    qualname: str,
    path: str,
    argument: str | None = None,
    position: int = 0,
) -> Lookup:
    """The call in `module`'s class `qualname` (or the classes it leads to) that builds the
    submodule at `path`, with the argument named `argument` (passed by that keyword, or at
    `position`)."""
    parts = [p for p in path.split(".") if p]
    if not parts:
        return Lookup(None, "the failing module is the model itself")
    found = _class_attribute(project, module, qualname, parts[0], 0)
    if isinstance(found, str):
        return Lookup(None, found)
    scope, expression = found
    return _follow(project, scope, expression, parts, 1, argument, position, 0)


def _follow(
    project: Project,
    scope: _Scope,
    expression: ast.expr,
    parts: list[str],
    index: int,
    argument: str | None,
    position: int,
    depth: int,
    shared: bool = False,
) -> Lookup:
    shown = ".".join(parts[:index])
    expression = _through_locals(scope, expression)
    if not isinstance(expression, ast.Call):
        return Lookup(None, f"{shown} is not built by a call torchls can read in the source")
    if index == len(parts):
        return Lookup(_construction(scope, expression, ".".join(parts), argument, position, shared))
    if depth > _MAX_DEPTH:
        return Lookup(None, f"{shown} is nested too deeply to follow")
    callee = dotted_name(expression.func) or ""
    short = callee.rsplit(".", 1)[-1]
    step = parts[index]
    if short in _CONTAINERS and _is_torch_container(scope.module, expression.func):
        item = _container_item(scope, expression, short, step)
        if isinstance(item, str):
            return Lookup(None, f"{shown}: {item}")
        element, in_comprehension = item
        return _follow(
            project,
            scope,
            element,
            parts,
            index + 1,
            argument,
            position,
            depth + 1,
            shared or in_comprehension,
        )
    resolved = _resolve_class(project, scope.module, expression.func)
    if resolved is None:
        return Lookup(
            None,
            f"{shown} is built by `{callee or 'a call'}`, which is not a class of the workspace",
        )
    inner_module, inner_qualname = resolved
    found = _class_attribute(project, inner_module, inner_qualname, step, depth + 1)
    if isinstance(found, str):
        return Lookup(None, found)
    inner_scope, inner = found
    return _follow(
        project, inner_scope, inner, parts, index + 1, argument, position, depth + 1, shared
    )


# -- classes and their __init__ -------------------------------------------------------------------


def _class_node(module: ModuleFile, qualname: str) -> ast.ClassDef | None:
    tree = module.tree()
    body: list[ast.stmt] = [] if tree is None else tree.body
    node: ast.ClassDef | None = None
    for name in qualname.split("."):
        node = next((s for s in body if isinstance(s, ast.ClassDef) and s.name == name), None)
        if node is None:
            return None
        body = node.body
    return node


def _class_attribute(
    project: Project, module: ModuleFile, qualname: str, attribute: str, depth: int
) -> tuple[_Scope, ast.expr] | str:
    """The expression `self.<attribute>` is last bound to in the class's __init__ (or the
    first base class that binds it), or why there is none."""
    node = _class_node(module, qualname)
    if node is None:
        return f"class {qualname} is not found in {module.path}"
    init = next(
        (s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None
    )
    if init is not None:
        scope = _Scope(module, init)
        bound = _bound_in(scope, attribute)
        if bound is not None:
            return scope, bound
    if depth < _MAX_DEPTH:
        for base in node.bases:
            resolved = _resolve_class(project, module, base)
            if resolved is None:
                continue
            found = _class_attribute(project, *resolved, attribute, depth + 1)
            if not isinstance(found, str):
                return found
    return f"{qualname}.__init__ does not assign self.{attribute} where torchls can see it"


def _bound_in(scope: _Scope, attribute: str) -> ast.expr | None:
    """The last value `self.<attribute> = ...` (or `self.add_module("<attribute>", ...)`) gets
    in the function, and the function's local assignments on the way."""
    found: ast.expr | None = None
    self_name = scope.function.args.args[0].arg if scope.function.args.args else "self"
    for node in _walk_in_order(scope.function):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == self_name
                    and target.attr == attribute
                ):
                    found = node.value
                elif isinstance(target, ast.Name):
                    scope.locals.setdefault(target.id, node.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("add_module", "register_module")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == self_name
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == attribute
        ):
            found = node.args[1]
    return found


def _walk_in_order(function: ast.FunctionDef) -> list[ast.AST]:
    """The function's nodes in source order, without nested functions and classes."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            found.append(child)
            visit(child)

    visit(function)
    found.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
    return found


def _through_locals(scope: _Scope, expression: ast.expr) -> ast.expr:
    """`layer = nn.Linear(...); self.fc = layer`: the call a local name was bound to (one
    assignment only: a name bound twice could be either)."""
    seen: set[str] = set()
    while isinstance(expression, ast.Name) and expression.id not in seen:
        seen.add(expression.id)
        assignments = [
            node
            for node in _walk_in_order(scope.function)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == expression.id for t in node.targets)
        ]
        if len(assignments) != 1:
            break
        expression = assignments[0].value
    return expression


def _resolve_class(
    project: Project, module: ModuleFile, func: ast.expr
) -> tuple[ModuleFile, str] | None:
    """The workspace class a callee names, through the file's imports."""
    dotted = dotted_name(func)
    if dotted is None:
        return None
    head = dotted.split(".")[0]
    if head in module.top_level_names() and _class_node(module, dotted) is not None:
        return module, dotted
    resolved_name = module.imports().resolve(func)
    if resolved_name is None:
        return None
    found = project.resolve_symbol(resolved_name, module.path)
    if found is None or _class_node(found[0], found[1]) is None:
        return None
    return found


def _is_torch_container(module: ModuleFile, func: ast.expr) -> bool:
    resolved = module.imports().resolve(func)
    if resolved is None:  # a bare name the file defines itself is not torch's
        return isinstance(func, ast.Name) and func.id not in module.top_level_names()
    return resolved.startswith("torch.nn.")


# -- containers -----------------------------------------------------------------------------------


def _container_item(
    scope: _Scope, call: ast.Call, kind: str, step: str
) -> tuple[ast.expr, bool] | str:
    """The element of `nn.Sequential(...)`/`ModuleList(...)`/`ModuleDict(...)` at `step`, and
    whether it comes from a comprehension (one expression for several modules)."""
    if kind == "ModuleDict" or (call.args and _is_ordered_dict(call.args[0])):
        return _dict_item(scope, call.args[0] if call.args else None, step)
    if kind == "Sequential":
        elements = _sequence_elements(scope, call.args)
    else:
        elements = _sequence_elements(scope, call.args[:1], single=True)
    if isinstance(elements, str):
        return elements
    if isinstance(elements, tuple):
        return elements[0], True  # a comprehension: its element builds every index
    if not step.isdigit():
        return f"it has no element named {step}"
    number = int(step)
    if number >= len(elements):
        return f"torchls sees {len(elements)} elements in the source, not index {number}"
    return elements[number], False


def _sequence_elements(
    scope: _Scope, args: list[ast.expr], single: bool = False
) -> list[ast.expr] | tuple[ast.expr] | str:
    """The elements a container is built from: positional arguments (Sequential), or one
    iterable (ModuleList); `*layers` and a list built with append() are followed when the
    list is built in straight-line code."""
    found: list[ast.expr] = []
    for arg in args:
        value = arg.value if isinstance(arg, ast.Starred) else arg
        if not isinstance(arg, ast.Starred) and not single:
            found.append(arg)
            continue
        if isinstance(value, ast.Name):
            bound = _through_locals(scope, value)
            if isinstance(bound, (ast.ListComp, ast.GeneratorExp)):
                value = bound
        if isinstance(value, (ast.ListComp, ast.GeneratorExp)):
            return (value.elt,)
        if isinstance(value, (ast.List, ast.Tuple)):
            found += value.elts
            continue
        if isinstance(value, ast.Name):
            built = _list_built(scope, value.id)
            if isinstance(built, (str, tuple)):
                return built
            found += built
            continue
        return "it is built from an expression torchls cannot read element by element"
    return found


def _list_built(scope: _Scope, name: str) -> list[ast.expr] | tuple[ast.expr] | str:
    """`layers = [a]; layers.append(b); layers += [c]` in straight-line code: [a, b, c]. A list
    filled by one append in one loop (`for _ in range(n): layers.append(Block())`) gives that
    one expression, which builds every element."""
    found: list[ast.expr] | None = None
    looped: ast.expr | None = None
    for statement in scope.function.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in statement.targets
        ):
            if not isinstance(statement.value, (ast.List, ast.Tuple)):
                return f"`{name}` is not a list literal torchls can read"
            found, looped = list(statement.value.elts), None
            continue
        if found is None:
            continue
        extended = _extends(statement, name)
        if extended is not None:
            if looped is not None:
                return f"`{name}` is filled in a loop and then extended, so its indices are unclear"
            found += extended
            continue
        if not any(isinstance(node, ast.Name) and node.id == name for node in ast.walk(statement)):
            continue
        if isinstance(statement, (ast.For, ast.While)) and not found and looped is None:
            appended = [
                part
                for inner in statement.body
                for part in [_extends(inner, name)]
                if part is not None
            ]
            others = [
                node
                for node in ast.walk(statement)
                if isinstance(node, ast.Name) and node.id == name
            ]
            if len(appended) == 1 and len(appended[0]) == 1 and len(others) == 1:
                looped = appended[0][0]
                continue
        if isinstance(statement, (ast.For, ast.While, ast.If, ast.With, ast.Try)):
            return f"`{name}` is built in a loop or a branch, so its indices are not in the source"
    if found is None:
        return f"`{name}` is not built in __init__ where torchls can see it"
    if looped is not None:
        return (looped,)
    return found


def _extends(statement: ast.stmt, name: str) -> list[ast.expr] | None:
    if (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Attribute)
        and isinstance(statement.value.func.value, ast.Name)
        and statement.value.func.value.id == name
    ):
        call = statement.value
        if call.func.attr == "append" and len(call.args) == 1:  # type: ignore[attr-defined]
            return [call.args[0]]
        if (
            call.func.attr == "extend"  # type: ignore[attr-defined]
            and len(call.args) == 1
            and isinstance(call.args[0], (ast.List, ast.Tuple))
        ):
            return list(call.args[0].elts)
    if (
        isinstance(statement, ast.AugAssign)
        and isinstance(statement.op, ast.Add)
        and isinstance(statement.target, ast.Name)
        and statement.target.id == name
        and isinstance(statement.value, (ast.List, ast.Tuple))
    ):
        return list(statement.value.elts)
    return None


def _is_ordered_dict(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and (dotted_name(node.func) or "").endswith("OrderedDict")


def _dict_item(scope: _Scope, node: ast.expr | None, step: str) -> tuple[ast.expr, bool] | str:
    if node is not None:
        node = _through_locals(scope, node)
    pairs: list[tuple[ast.expr, ast.expr]] = []
    if isinstance(node, ast.Dict):
        pairs = [(k, v) for k, v in zip(node.keys, node.values, strict=False) if k is not None]
    elif (
        isinstance(node, ast.Call) and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))
    ):
        for item in node.args[0].elts:
            if isinstance(item, ast.Tuple) and len(item.elts) == 2:
                pairs.append((item.elts[0], item.elts[1]))
    else:
        return "its entries are not a literal torchls can read"
    for key, value in pairs:
        if isinstance(key, ast.Constant) and key.value == step:
            return value, False
    return f"it has no entry named {step!r} in the source"


# -- the call and its argument --------------------------------------------------------------------


def _construction(
    scope: _Scope, call: ast.Call, path: str, argument: str | None, position: int, shared: bool
) -> Construction:
    text = scope.module.text
    lines = Lines(text)
    span = _span(lines, call)
    return Construction(
        path=scope.module.path,
        text=text,
        module=path,
        call_span=span,
        call_text=_segment(text, call),
        line=span.start_line,
        argument=_argument(lines, text, call, argument, position),
        shared=shared,
    )


def _argument(
    lines: Lines, text: str, call: ast.Call, keyword: str | None, position: int
) -> Argument | None:
    node: ast.expr | None = None
    name: str | None = None
    for item in call.keywords:
        if keyword is not None and item.arg == keyword:
            node, name = item.value, keyword
    if node is None:
        before = call.args[: position + 1]
        if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in before):
            node = call.args[position]
    if node is None:
        return None
    names = tuple(sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)}))
    attributes = any(isinstance(n, ast.Attribute) for n in ast.walk(node))
    value = literal_int(node)
    if attributes and not names:
        names = (_segment(text, node),)
    return Argument(name, _span(lines, node), _segment(text, node), value, names)


def literal_int(node: ast.expr) -> int | None:
    """The value of an int literal or of plain arithmetic (+ - * //) of int literals."""
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = literal_int(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = literal_int(node.left), literal_int(node.right)
        if left is None or right is None or (isinstance(node.op, ast.FloorDiv) and right == 0):
            return None
        return _ARITHMETIC[type(node.op)](left, right)
    return None


def rewritten(argument_text: str, received: int, expected: int | None = None) -> str:
    """The text an argument should have to give `received`, written the way the old one was
    when that is unambiguous: a product ending in a square spatial size keeps its leading factor
    (`64 * 5 * 5` -> `64 * 7 * 7`, `hidden * 5 * 5` that is 1600 -> `hidden * 7 * 7`, from the
    value `expected` the old text has); else the plain number."""
    try:
        node = ast.parse(argument_text.strip(), mode="eval").body
    except SyntaxError:
        return str(received)
    if not (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and isinstance(node.left, ast.BinOp)
        and isinstance(node.left.op, ast.Mult)
    ):
        return str(received)
    side, other, head = literal_int(node.right), literal_int(node.left.right), node.left.left
    if side is None or side != other or side <= 0:
        return str(received)
    head_value = literal_int(head)
    if head_value is None and expected is not None and expected % (side * side) == 0:
        head_value = expected // (side * side)
    if not head_value or head_value < 0 or received % head_value:
        return str(received)
    new_side = _square_root(received // head_value)
    if new_side is None:
        return str(received)
    head_text = ast.get_source_segment(argument_text.strip(), head) or ""
    if not head_text or (isinstance(head, ast.BinOp) and not isinstance(head.op, ast.Mult)):
        return str(received)
    return f"{head_text} * {new_side} * {new_side}"


def _square_root(value: int) -> int | None:
    if value <= 0:
        return None
    root = math.isqrt(value)
    return root if root * root == value else None


def _span(lines: Lines, node: ast.AST) -> Span:
    return lines.span(
        node.lineno,  # type: ignore[attr-defined]
        node.col_offset,  # type: ignore[attr-defined]
        node.end_lineno or node.lineno,  # type: ignore[attr-defined]
        node.end_col_offset or 0,  # type: ignore[attr-defined]
    )


def _segment(text: str, node: ast.AST) -> str:
    return ast.get_source_segment(text, node) or ""
