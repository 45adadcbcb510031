"""The "Insert ... k-fold cross-validation" code actions: where the loop goes, the imports it
needs, and a check that the edited file still parses. Pure: no LSP types, no I/O."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from torchls.kfold.context import read_context
from torchls.kfold.template import render
from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.models import FileModels
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
    context = read_context(
        tree, text, models.imports, lambda call: models.construction_target(call) is not None
    )
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
