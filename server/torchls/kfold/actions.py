"""The "Insert ... k-fold cross-validation" code actions: where the loop goes, the imports it
needs, and a check that the edited file still parses. Pure: no LSP types, no I/O."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from torchls.kfold.context import read_context, top_level_imports
from torchls.kfold.template import Wrapped, render
from torchls.kfold.wrapping import plan
from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.models import FileModels
from torchls.source.text import Span, indentation, line_ending, with_line_ending

TITLES = {
    "stratified": "Insert stratified k-fold cross-validation (StratifiedKFold)",
    "kfold": "Insert k-fold cross-validation (KFold)",
    "group": "Insert group k-fold cross-validation (GroupKFold)",
}


@dataclass(frozen=True)
class Insertion:
    title: str
    edits: list[Edit]


def available(models: FileModels) -> bool:
    """Offered in files that import torch."""
    return models.tree is not None and any(
        dotted == "torch" or dotted.startswith("torch.") for dotted in models.imports.names.values()
    )


def insertion(models: FileModels, kind: str, line: int) -> Insertion | None:
    """The edits that insert the `kind` loop before `line` (0-based), or None when the result
    would not compile. Above the file's imports (or its docstring, or `from __future__`), the
    loop goes right after them instead."""
    tree = models.tree
    if tree is None or kind not in TITLES:
        return None
    lines = models.lines.lines
    line = max(0, min(line, len(lines)))
    at = _import_line(models, tree)
    line = max(line, at)
    context = read_context(models, line)
    inserted = render(kind, context, _indent_at(lines, line))
    imports = "".join(f"{i}\n" for i in inserted.imports)
    if imports and at == line:
        edits = [Edit(Span(line, 0, line, 0), imports + inserted.code)]
    elif imports:
        edits = [Edit(Span(at, 0, at, 0), imports), Edit(Span(line, 0, line, 0), inserted.code)]
    else:
        edits = [Edit(Span(line, 0, line, 0), inserted.code)]
    return _checked(models, TITLES[kind], edits)


def _checked(models: FileModels, title: str, edits: list[Edit]) -> Insertion | None:
    """The edits in the file's own line endings, if the edited file compiles."""
    text = models.module.text
    ending = line_ending(text)
    edits = [Edit(e.span, with_line_ending(e.text, ending)) for e in edits]
    try:
        compile(apply_edits(text, edits), models.module.path or "<file>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return Insertion(title, edits)


WRAP_TITLE = "Wrap in k-fold cross-validation ({splitter})"


def wrap(models: FileModels, start: int, end: int) -> Insertion | None:
    """Rewrite the selected statements (lines `start`..`end`, 0-based; or, for a cursor, the
    training loop around it) so that they run once per fold: the loader they iterate rebuilt on
    the fold's training part of its own dataset, the model, optimizer and scheduler they use
    rebuilt from their own calls, and a validation pass after them. None when any of that is
    not certain (see wrapping.py)."""
    tree = models.tree
    if tree is None:
        return None
    statements = _selected(models, tree, start, end)
    made = plan(models, statements)
    if not statements or made is None:
        return None
    first = statements[0].lineno - 1
    last = (statements[-1].end_lineno or statements[-1].lineno) - 1
    lines = models.lines.lines[first : last + 1]
    if _has_multiline_string(statements):
        return None  # re-indenting would change the string
    # A form feed in a line's indentation only resets Python's count: the code is re-indented.
    lines = [indentation(line) + code if (code := line.lstrip(" \t\f")) else "" for line in lines]
    indent = indentation(lines[0])
    if any(line and not line.startswith(indent) for line in lines):
        return None
    relative = [line[len(indent) :] for line in lines]
    tabs = indent.startswith("\t") or any(line.startswith("\t") for line in relative)
    kind = "stratified" if made.stratify else "kfold"
    wrapped = Wrapped(relative, made, "\t" if tabs else "    ", top_level_imports(tree))
    inserted = render(kind, read_context(models, first), indent, wrapped)
    block = Edit(Span(first, 0, last + 1, 0), inserted.code)
    imports = "".join(f"{i}\n" for i in inserted.imports)
    at = _import_line(models, tree)
    if imports and at > first:
        return None
    edits = [Edit(Span(at, 0, at, 0), imports), block] if imports else [block]
    splitter = "StratifiedKFold" if kind == "stratified" else "KFold"
    return _checked(models, WRAP_TITLE.format(splitter=splitter), edits)


def can_wrap(models: FileModels, start: int, end: int) -> bool:
    """Cheap: whether there is something to wrap at this selection, that wrap can rebuild per
    fold for certain."""
    if models.tree is None:
        return False
    statements = _selected(models, models.tree, start, end)
    return bool(statements) and plan(models, statements) is not None


def _selected(models: FileModels, tree: ast.Module, start: int, end: int) -> list[ast.stmt]:
    if start == end:  # a cursor: the epoch loop around it, or in the function around it
        # Editors ask on every cursor move: the file's nodes come from the index FileModels
        # built once (`parents`, in ast.walk's order), not from walking the tree again.
        loops = [node for node in models.nodes(ast.For) if _is_epoch_loop(node)]
        around = [loop for loop in loops if _spans(loop, start)]
        if around:
            return [around[-1]]  # type: ignore[list-item]
        functions = [
            node
            for node in models.nodes(ast.FunctionDef, ast.AsyncFunctionDef)
            if _spans(node, start)
        ]
        if functions:
            inner = [loop for loop in loops if _is_inside(models, loop, functions[-1])]
            return inner[:1]  # type: ignore[return-value]
        return []
    for node in ast.walk(tree):
        for body in _bodies(node):
            inside = [
                s for s in body if s.lineno - 1 >= start and (s.end_lineno or s.lineno) - 1 <= end
            ]
            if inside:
                return inside
    return []


def _is_epoch_loop(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.For)
        and isinstance(node.target, ast.Name)
        and "epoch" in node.target.id
    )


def _spans(node: ast.AST, line: int) -> bool:
    first = getattr(node, "lineno", 0) - 1
    return first <= line <= (getattr(node, "end_lineno", None) or first + 1) - 1


def _is_inside(models: FileModels, inner: ast.AST, outer: ast.AST) -> bool:
    node = models.parents.get(inner)
    while node is not None:
        if node is outer:
            return True
        node = models.parents.get(node)
    return False


def _bodies(node: ast.AST) -> list[list[ast.stmt]]:
    return [
        value
        for name in ("body", "orelse", "finalbody")
        if isinstance(value := getattr(node, name, None), list)
        and value
        and isinstance(value[0], ast.stmt)
    ]


def _has_multiline_string(statements: list[ast.stmt]) -> bool:
    return any(
        isinstance(node, (ast.Constant, ast.JoinedStr))
        and isinstance(getattr(node, "value", ""), (str, list))
        and node.lineno != node.end_lineno
        for statement in statements
        for node in ast.walk(statement)
    )


def _indent_at(lines: list[str], line: int) -> str:
    """The indentation of the first code line from `line` on: the inserted loop becomes a
    statement of the same block."""
    for text in lines[line:]:
        indent = indentation(text)
        code = text[len(text) - len(text.lstrip(" \t\f")) :]
        if code and not code.startswith("#"):
            return indent
    return ""


def _import_line(models: FileModels, tree: ast.Module) -> int:
    """0-based line after the last top-level import (or after the docstring); with neither,
    after the comments that open the file (a shebang, a coding line)."""
    last = 0
    for index, statement in enumerate(tree.body):
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or (
            index == 0
            and isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            last = statement.end_lineno or statement.lineno
    if last == 0:
        for text in models.lines.lines:
            if not text.startswith("#"):
                break
            last += 1
    return last
