"""Paths a script builds from `__file__` and the folders it puts on `sys.path`, read without
running it: `sys.path.insert(0, "..")`, `sys.path.append(os.path.join(os.path.dirname(__file__),
".."))`, `ROOT = Path(__file__).resolve().parents[1]; sys.path.append(str(ROOT))`.

Imports resolve from those folders as Python would once the line has run; a relative folder is
taken from the script's own folder (the way such scripts are run: `cd tools && python x.py`).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path

from torchls.source.imports import ImportTable

# The expression a name was last given before a line, or None.
Lookup = Callable[[str, int], "ast.expr | None"]

_MAX_DEPTH = 12
_DIRNAME = {"os.path.dirname", "posixpath.dirname"}
_SAME = {"os.path.abspath", "os.path.realpath", "os.path.normpath", "posixpath.normpath"}
_JOIN = {"os.path.join", "posixpath.join"}
_PATHS = {"pathlib.Path", "pathlib.PurePath", "pathlib.PosixPath"}
_SAME_METHODS = {"resolve", "absolute", "expanduser", "as_posix"}
_ADDERS = {"sys.path.insert": 1, "sys.path.append": 0}


def path_value(
    node: ast.expr, file: str, imports: ImportTable, lookup: Lookup, depth: int = 0
) -> str | None:
    """The path `node` evaluates to, from literals, `__file__` and the os.path / pathlib calls
    that build paths; None for anything else."""
    if depth > _MAX_DEPTH:
        return None

    def again(child: ast.expr) -> str | None:
        return path_value(child, file, imports, lookup, depth + 1)

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        if node.id == "__file__":
            return file
        found = lookup(node.id, getattr(node, "lineno", 1 << 30))
        return again(found) if found is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = again(node.left), again(node.right)
        return str(Path(left) / right) if left is not None and right is not None else None
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = again(node.value)
        return str(Path(inner).parent) if inner is not None else None
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
        and isinstance(node.slice, ast.Constant)
        and type(node.slice.value) is int
        and 0 <= node.slice.value < 32
    ):
        inner = again(node.value.value)
        if inner is None:
            return None
        for _ in range(node.slice.value + 1):
            inner = str(Path(inner).parent)
        return inner
    if isinstance(node, ast.Call) and not node.keywords:
        return _call_value(node, imports, again)
    return None


def _call_value(
    node: ast.Call, imports: ImportTable, again: Callable[[ast.expr], str | None]
) -> str | None:
    func = node.func
    args = [again(arg) for arg in node.args]
    if any(arg is None for arg in args):
        return None
    texts = [arg for arg in args if arg is not None]
    dotted = imports.resolve(func) or ""
    if isinstance(func, ast.Name) and func.id == "str" and dotted == "" and len(texts) == 1:
        return texts[0]
    if dotted in _DIRNAME and len(texts) == 1:
        return str(Path(texts[0]).parent)
    if dotted in _SAME and len(texts) == 1:
        return os.path.normpath(texts[0])
    if (dotted in _JOIN or dotted in _PATHS) and texts:
        return str(Path(*texts))
    if isinstance(func, ast.Attribute) and dotted == "":
        inner = again(func.value)
        if inner is None:
            return None
        if func.attr in _SAME_METHODS and not texts:
            return inner
        if func.attr == "joinpath" and texts:
            return str(Path(inner, *texts))
    return None


def added_folders(tree: ast.Module, file: str, imports: ImportTable) -> tuple[list[str], list[str]]:
    """(folders put first on sys.path, folders appended): the `sys.path.insert(0, X)` and
    `sys.path.append(X)` calls at the top of the script, or in a top-level `if`/`try` (the
    usual `if str(ROOT) not in sys.path:` guard), whose folder exists."""
    first: list[str] = []
    last: list[str] = []
    base = Path(file).parent

    def lookup(name: str, before: int) -> ast.expr | None:
        found = None
        for statement in tree.body:
            if statement.lineno >= before:
                break
            if (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and statement.targets[0].id == name
            ):
                found = statement.value
        return found

    statements: list[ast.stmt] = []
    for statement in tree.body:
        statements.append(statement)
        if isinstance(statement, (ast.If, ast.Try)):
            statements += statement.body
    for statement in statements:
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            continue
        call = statement.value
        position = _ADDERS.get(imports.resolve(call.func) or "")
        if position is None or len(call.args) != position + 1 or call.keywords:
            continue
        text = path_value(call.args[position], file, imports, lookup)
        if not text:
            continue
        folder = os.path.normpath(base / text)
        if not Path(folder).is_dir():
            continue
        at_front = position == 1 and _is_zero(call.args[0])
        (first if at_front else last).append(folder)
    return first, last


def _is_zero(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0
