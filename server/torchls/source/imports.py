"""What each name in a file refers to, from its import statements: `nn` -> `torch.nn`."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass
class ImportTable:
    # local name -> dotted path it was bound to by an import
    names: dict[str, str] = field(default_factory=dict)
    # modules the file star-imports (`from .parts import *`), absolute, in order; Project fills
    # `names` with what each of them binds when it knows the workspace (ModuleFile.imports)
    stars: list[str] = field(default_factory=list)

    def resolve(self, node: ast.expr) -> str | None:
        """`nn.Module` -> `torch.nn.Module` when `from torch import nn`; None for non-imports."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.names:
            return None
        return ".".join([self.names[node.id], *reversed(parts)])


def dotted_name(node: ast.expr) -> str | None:
    """`a.b.c` as written, or None when the expression is not a plain dotted name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def read_imports(tree: ast.Module, module_name: str | None, is_package: bool) -> ImportTable:
    """Every import in the file, at any depth (imports inside functions and `try` count too).

    `module_name` is the file's own dotted name, used to resolve relative imports.
    """
    table = ImportTable()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    table.names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    table.names[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_base(node, module_name, is_package)
            if base is None:
                continue
            for alias in node.names:
                if alias.name == "*":
                    if base and base not in table.stars:
                        table.stars.append(base)
                    continue
                target = f"{base}.{alias.name}" if base else alias.name
                table.names[alias.asname or alias.name] = target
    return table


def _absolute_base(node: ast.ImportFrom, module_name: str | None, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module or ""
    if not module_name:
        return None
    package = module_name.split(".")
    if not is_package:
        package = package[:-1]
    if node.level - 1 > len(package):
        return None
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    parts = [*package, *([node.module] if node.module else [])]
    return ".".join(parts)
