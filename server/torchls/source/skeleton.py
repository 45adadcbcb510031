"""The definitions of a file without its script: what the worker executes to get a model class.

Hovering over `Net(...)` in `train.py` must not train anything. The worker therefore never runs
the file the target is defined in as it stands: it runs this skeleton of it, which keeps imports,
function and class definitions and assignments of plain values, and drops every other top-level
statement (loops, calls, `with` blocks, `if __name__ == "__main__":`). Line numbers are kept,
so a traceback from a model's `forward` still points at the user's line.
"""

from __future__ import annotations

import ast

# Calls an assignment may make and still be a definition: type helpers and the like.
_DEFINITION_CALLS = {
    "TypeVar",
    "namedtuple",
    "NamedTuple",
    "dataclass",
    "field",
    "getLogger",
    "partial",
    "frozenset",
    "tuple",
    "dict",
    "list",
    "set",
    "device",
    "Size",
    "finfo",
    "iinfo",
    "get_default_dtype",
    "getenv",
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
    if isinstance(
        statement,
        (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef),
    ):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # docstrings
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        return statement.value is None or _is_plain(statement.value)
    if isinstance(statement, ast.Try):
        # try: import fast_thing / except ImportError: fast_thing = None
        return all(_is_definition(s) for s in statement.body) and all(
            _is_definition(s) for handler in statement.handlers for s in handler.body
        )
    if isinstance(statement, ast.If):
        test = ast.unparse(statement.test)
        if "__name__" in test:
            return False
        # `if TYPE_CHECKING:` and `if sys.version_info >= ...:` blocks of definitions
        return all(_is_definition(s) for s in statement.body) and all(
            _is_definition(s) for s in statement.orelse
        )
    return False


def _is_plain(node: ast.expr) -> bool:
    """Literals, names, attributes, containers and arithmetic of those, and a few type helpers."""
    for child in ast.walk(node):
        if isinstance(child, ast.Call):
            name = child.func
            callee = name.attr if isinstance(name, ast.Attribute) else getattr(name, "id", "")
            if callee not in _DEFINITION_CALLS:
                return False
        elif isinstance(child, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return False
    return True
