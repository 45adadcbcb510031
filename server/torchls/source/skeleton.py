"""The definitions of a file without its script: what the worker executes to get a model class.

Hovering over `Net(...)` in `train.py` must not train anything. The worker therefore never runs
the file the target is defined in as it stands: it runs this skeleton of it, which keeps imports,
function and class definitions and assignments of plain values, and drops every other top-level
statement (loops, calls, `with` blocks, `if __name__ == "__main__":`). Line numbers are kept,
so a traceback from a model's `forward` still points at the user's line.
"""

from __future__ import annotations

import ast

# Calls an assignment may make and still be a definition, as written in the source.
_DEFINITION_CALLS = {
    "TypeVar",
    "typing.TypeVar",
    "NamedTuple",
    "typing.NamedTuple",
    "namedtuple",
    "collections.namedtuple",
    "field",
    "dataclasses.field",
    "logging.getLogger",
    "frozenset",
    "tuple",
    "dict",
    "list",
    "set",
    "torch.device",
    "torch.Size",
    "torch.finfo",
    "torch.iinfo",
    "torch.get_default_dtype",
}


def skeleton(tree: ast.Module) -> tuple[ast.Module, list[int]]:
    """The kept statements as a new module, and the 1-based lines of the dropped ones."""
    kept: list[ast.stmt] = []
    dropped: list[int] = []
    for statement in tree.body:
        if _is_definition(statement):
            kept.append(statement)
        else:
            dropped.append(statement.lineno)
    module = ast.Module(body=kept, type_ignores=[])
    return module, dropped


def _is_definition(statement: ast.stmt) -> bool:
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        # Decorators, bases and default values run when the definition does.
        parts: list[ast.expr] = list(statement.decorator_list)
        if isinstance(statement, ast.ClassDef):
            parts += statement.bases + [k.value for k in statement.keywords]
        else:
            arguments = statement.args
            parts += [d for d in arguments.defaults + arguments.kw_defaults if d is not None]
        return all(_is_plain(part) for part in parts)
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # docstrings
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        # Only names: `nn.Linear = Mine` or `registry[k] = v` would change other code.
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        if not all(_binds_names_only(target) for target in targets):
            return False
        return statement.value is None or _is_plain(statement.value)
    if isinstance(statement, ast.Try):
        # try: import fast_thing / except ImportError: fast_thing = None
        blocks = [statement.body, statement.orelse, statement.finalbody]
        blocks += [handler.body for handler in statement.handlers]
        return all(_is_definition(s) for block in blocks for s in block) and all(
            handler.type is None or _is_plain(handler.type) for handler in statement.handlers
        )
    if isinstance(statement, ast.If):
        if "__name__" in ast.unparse(statement.test) or not _is_plain(statement.test):
            return False
        # `if TYPE_CHECKING:` and `if sys.version_info >= ...:` blocks of definitions
        return all(_is_definition(s) for s in statement.body) and all(
            _is_definition(s) for s in statement.orelse
        )
    return False


def _binds_names_only(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_binds_names_only(item) for item in target.elts)
    return False


def _is_plain(node: ast.expr) -> bool:
    """Literals, names, attributes, containers and arithmetic of those, and a few type helpers."""
    try:
        children = list(ast.walk(node))
    except RecursionError:
        return False
    for child in children:
        if isinstance(child, ast.Call):
            if ast.unparse(child.func) not in _DEFINITION_CALLS:
                return False
        elif isinstance(
            child, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr, ast.Lambda, ast.Subscript)
        ) and not _is_type_subscript(child):
            return False
    return True


def _is_type_subscript(node: ast.AST) -> bool:
    """`list[int]`, `Optional[str]`: annotations and aliases, not lookups with side effects."""
    return isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute))
