"""The "Insert ... k-fold cross-validation" code actions: where the loop goes, the imports it
needs, and a check that the edited file still parses. Pure: no LSP types, no I/O."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from torchls.kfold.context import read_context
from torchls.kfold.template import Wrapped, render
from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.models import FileModels, _function_scope
from torchls.source.text import Span

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
    would not parse."""
    tree = models.tree
    if tree is None or kind not in TITLES:
        return None
    text = models.module.text
    lines = models.lines.lines
    line = max(0, min(line, len(lines)))
    context = read_context(models)
    inserted = render(kind, context, _indent_at(lines, line))
    imports = "".join(f"{i}\n" for i in inserted.imports)
    at = _import_line(tree)
    if imports and at == line:
        edits = [Edit(Span(line, 0, line, 0), imports + inserted.code)]
    elif imports:
        edits = [Edit(Span(at, 0, at, 0), imports), Edit(Span(line, 0, line, 0), inserted.code)]
    else:
        edits = [Edit(Span(line, 0, line, 0), inserted.code)]
    try:
        ast.parse(apply_edits(text, edits))
    except (SyntaxError, ValueError, RecursionError):
        return None
    return Insertion(TITLES[kind], edits)


WRAP_TITLE = "Wrap in k-fold cross-validation ({splitter})"


def wrap(models: FileModels, start: int, end: int) -> Insertion | None:
    """Rewrite the selected statements (lines `start`..`end`, 0-based; or, for a cursor, the
    training loop around it) so that they run once per fold, with a fresh model and optimizer,
    the training loader they iterate rebound to the fold's training part, and a validation pass
    after them."""
    tree = models.tree
    if tree is None:
        return None
    statements = _selected(models, tree, start, end)
    loader = _loader_of(models, statements)
    if not statements or loader is None:
        return None
    first = statements[0].lineno - 1
    last = (statements[-1].end_lineno or statements[-1].lineno) - 1
    lines = models.lines.lines[first : last + 1]
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip())]
    if any(line.strip() and not line.startswith(indent) for line in lines):
        return None
    if _has_multiline_string(statements):
        return None  # re-indenting would change the string
    relative = [line[len(indent) :] if line.strip() else "" for line in lines]
    tabs = indent.startswith("\t") or any(line.startswith("\t") for line in relative)
    context = read_context(models)
    kind = "stratified" if context.classification else "kfold"
    wrapped = Wrapped(relative, loader, "\t" if tabs else "    ")
    inserted = render(kind, context, indent, wrapped)
    block = Edit(Span(first, 0, last + 1, 0), inserted.code)
    imports = "".join(f"{i}\n" for i in inserted.imports)
    at = _import_line(tree)
    edits = [Edit(Span(at, 0, at, 0), imports), block] if imports else [block]
    try:
        ast.parse(apply_edits(models.module.text, edits))
    except (SyntaxError, ValueError, RecursionError):
        return None
    splitter = "StratifiedKFold" if kind == "stratified" else "KFold"
    return Insertion(WRAP_TITLE.format(splitter=splitter), edits)


def can_wrap(models: FileModels, start: int, end: int) -> bool:
    """Cheap: whether there is something to wrap at this selection: a loop over a loader that
    the fold loop can rebind to the fold's training part."""
    if models.tree is None:
        return False
    statements = _selected(models, models.tree, start, end)
    return bool(statements) and _loader_of(models, statements) is not None


def _selected(models: FileModels, tree: ast.Module, start: int, end: int) -> list[ast.stmt]:
    if start == end:  # a cursor: the epoch loop around it, or in the function around it
        loops = [node for node in ast.walk(tree) if _is_epoch_loop(node)]
        around = [loop for loop in loops if _spans(loop, start)]
        if around:
            return [around[-1]]  # type: ignore[list-item]
        functions = [
            node
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _spans(node, start)
        ]
        if functions:
            inner = [loop for loop in loops if _is_inside(loop, functions[-1])]
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


def _is_inside(inner: ast.AST, outer: ast.AST) -> bool:
    return any(node is inner for node in ast.walk(outer))


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


def _loader_of(models: FileModels, statements: list[ast.stmt]) -> str | None:
    """The name the selected code iterates its batches from: bound to a `DataLoader(...)` in its
    scope, or named like a loader. None when there is none: the fold loop could not give the
    code its fold's training data, and it would train on everything (validation folds too)."""
    named = None
    for statement in statements:
        for node in ast.walk(statement):
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Name):
                name = node.iter.id
                value = models._scoped_lookup(_function_scope(models, node))(name, node.lineno)
                if isinstance(value, ast.Call):
                    dotted = models.imports.resolve(value.func) or ""
                    if dotted.endswith("DataLoader"):
                        return name
                if named is None and "loader" in name.lower():
                    named = name
    return named


def _indent_at(lines: list[str], line: int) -> str:
    """The indentation of the first code line from `line` on: the inserted loop becomes a
    statement of the same block."""
    for text in lines[line:]:
        if text.strip() and not text.lstrip().startswith("#"):
            return text[: len(text) - len(text.lstrip())]
    return ""


def _import_line(tree: ast.Module) -> int:
    """0-based line after the last top-level import (or after the docstring)."""
    last = 0
    for index, statement in enumerate(tree.body):
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or (
            index == 0
            and isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            last = statement.end_lineno or statement.lineno
    return last
