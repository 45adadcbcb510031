"""The workspace as a set of Python modules: which dotted names are the user's own files.

Reads files (preferring the editor's unsaved text) and never imports or runs them.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.files import read_bounded
from torchls.source.imports import ImportTable, read_imports
from torchls.source.syspath import added_folders

# Text of an open document, by absolute path, or None to read the file from disk.
TextSource = Callable[[str], "str | None"]
MAX_LOCAL_MODULES = 200
MAX_REEXPORT_DEPTH = 8  # `pkg` -> `pkg.models` -> `pkg.models.unet`: re-exports followed
MAX_STAR_NAMES = 5000
_RELATIVE = re.compile(r"^[ \t]*from[ \t]+\.", re.MULTILINE)
MAX_FILE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class ModuleFile:
    path: str
    module: str  # dotted name the file is imported under
    is_package: bool
    text: str
    # The tree and the import table, made once: a file's profile asks for the imports of every
    # file it reaches, and parsing a large file again costs a second.
    _made: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def tree(self) -> ast.Module | None:
        if "tree" not in self._made:
            self._made["tree"] = _parse(self.text, self.path)
        tree: ast.Module | None = self._made["tree"]
        return tree

    def adopt_tree(self, tree: ast.Module | None) -> None:
        """The tree of `text`, parsed already (ModelCost.models_soon)."""
        self._made["tree"] = tree

    def imports(self) -> ImportTable:
        """What each name refers to; with its project known, names that star imports of
        workspace modules bind too (`from .parts import *` binds `nn` and `DoubleConv`)."""
        if "imports" not in self._made:
            tree = self.tree()
            table = (
                ImportTable() if tree is None else read_imports(tree, self.module, self.is_package)
            )
            self._made["imports"] = table
            project = self._made.get("project")
            if isinstance(project, Project):
                if table.stars:
                    project.add_star_names(self, table)
                project.follow_reexports(self, table)
        imports: ImportTable = self._made["imports"]
        return imports

    def top_level_names(self) -> set[str]:
        """Names the module binds at its top level by a definition or an assignment."""
        known = self._made.get("top_level_names")
        if isinstance(known, set):
            return known
        tree = self.tree()
        found: set[str] = set()
        self._made["top_level_names"] = found
        for statement in [] if tree is None else tree.body:
            if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                found.add(statement.name)
            elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
                targets = (
                    statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                )
                found.update(t.id for t in targets if isinstance(t, ast.Name))
        return found


# The last tree parsed of each file, for the files seen last: other files' trees are asked for
# by each version of an open document (the models it imports), while a tree per version of a
# file being edited would be kept for nothing (a large file's tree is 100+ MB).
_TREES: OrderedDict[str, tuple[str, ast.Module | None]] = OrderedDict()
_TREES_KEPT = 32
_TREES_MAX_CHARS = 2 * 1024 * 1024
_TREE_KEPT_MAX_CHARS = 256 * 1024


def parse_text(text: str, path: str) -> ast.Module | None:
    """The file's tree, or None when it does not parse."""
    try:
        return ast.parse(text, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _parse(text: str, path: str) -> ast.Module | None:
    known = _TREES.get(path)
    if known is not None and known[0] == text:
        _TREES.move_to_end(path)
        return known[1]
    tree = parse_text(text, path)
    if len(text) > _TREE_KEPT_MAX_CHARS:
        _TREES.pop(path, None)  # its FileModels holds it while it is needed, nothing else
        return tree
    _TREES[path] = (text, tree)
    _TREES.move_to_end(path)
    while len(_TREES) > _TREES_KEPT or (
        len(_TREES) > 1 and sum(len(entry[0]) for entry in _TREES.values()) > _TREES_MAX_CHARS
    ):
        _TREES.popitem(last=False)
    return tree


class Project:
    """Maps dotted module names to workspace files and back. `root` may be None (no workspace)."""

    def __init__(self, root: str | None, open_text: TextSource | None = None) -> None:
        self.root = Path(root).resolve() if root else None
        self._open_text = open_text
        self._found: dict[tuple[str, str | None], ModuleFile | None] = {}
        self._files: dict[str, ModuleFile] = {}  # by resolved path: each text parsed once
        # analyses of other files, shared while this project view lives (one document version)
        self.memo: dict[str, object] = {}
        self._names: dict[str, tuple[str, bool, str]] = {}

    def is_open(self, path: str) -> bool:
        """Whether the editor holds the file (its text may differ from the disk's)."""
        return self._open_text is not None and self._open_text(path) is not None

    def read(self, path: str) -> str | None:
        if self._open_text is not None:
            text = self._open_text(path)
            if text is not None:
                return text
        data = read_bounded(path, MAX_FILE_BYTES)
        return None if data is None else data.decode("utf-8", errors="replace")

    def module_name(self, path: str) -> tuple[str, bool, str]:
        """(dotted name, is a package, the folder to put on sys.path) for a workspace file.

        A file inside folders with `__init__.py` gets its package name up to the first folder
        without one; any other file is a top-level module named after its stem, unless it uses
        relative imports: then it belongs to a namespace package named from the workspace root
        (`models/unet.py` with `from .parts import *` is `models.unet`, as `python -c "from
        models.unet import UNet"` from the root imports it).
        """
        known = self._names.get(path)
        if known is None:
            known = self._names[path] = self._module_name(path)
        return known

    def _module_name(self, path: str) -> tuple[str, bool, str]:
        file = Path(path).resolve()
        is_package = file.name == "__init__.py"
        parts = [] if is_package else [file.stem]
        folder = file.parent
        while (folder / "__init__.py").exists() and folder.parent != folder:
            parts.insert(0, folder.name)
            folder = folder.parent
        if not parts:
            parts = [file.parent.name]
        if (
            not is_package
            and folder == file.parent
            and self.root is not None
            and folder != self.root
            and folder.is_relative_to(self.root)
        ):
            names = [*folder.relative_to(self.root).parts, file.stem]
            text = self.read(str(file))
            if all(name.isidentifier() for name in names) and text and _RELATIVE.search(text):
                return ".".join(names), False, str(self.root)
        return ".".join(parts), is_package, str(folder)

    def module_file(self, path: str) -> ModuleFile | None:
        resolved = str(Path(path).resolve())
        text = self.read(path)
        if text is None:
            return None
        known = self._files.get(resolved)
        if known is not None and known.text == text:
            return known  # parsed already: the same text, read again (it may have changed)
        module, is_package, _ = self.module_name(path)
        made = ModuleFile(resolved, module, is_package, text)
        made._made["project"] = self
        self._files[resolved] = made
        return made

    def adopt(self, module: ModuleFile) -> None:
        """Use `module` (the editor's document, parsed already) for its path in this view."""
        module._made.setdefault("project", self)
        self._files[str(Path(module.path).resolve())] = module

    def add_star_names(self, module: ModuleFile, table: ImportTable) -> None:
        """Adds to `table` what `from X import *` binds for each workspace module X it star-
        imports: X's public imports and top-level definitions, or its literal `__all__`. Names
        the file binds itself win; a cycle of star imports stops where it closes."""
        module._made["expanding"] = True
        try:
            for base in table.stars:
                found = self.find_module(base, module.path)
                if found is None or found._made.get("expanding"):
                    continue
                for name, target in self._star_exports(found).items():
                    if len(table.names) >= MAX_STAR_NAMES:
                        return
                    table.names.setdefault(name, target)
        finally:
            module._made["expanding"] = False

    def follow_reexports(self, module: ModuleFile, table: ImportTable) -> None:
        """`from ...parts import nn` binds `torch.nn` when parts.py itself imported it: names
        taken from a workspace module that only imports them point where they come from."""
        module._made["expanding"] = True
        try:
            for name, target in list(table.names.items()):
                table.names[name] = self._canonical(target, module.path)
        finally:
            module._made["expanding"] = False

    def _canonical(self, dotted: str, near: str) -> str:
        for _ in range(MAX_REEXPORT_DEPTH):
            parts = dotted.split(".")
            for cut in range(len(parts) - 1, 0, -1):
                module = self.find_module(".".join(parts[:cut]), near)
                if module is not None:
                    break
            else:
                return dotted
            head = parts[cut]
            if head in module.top_level_names() or module._made.get("expanding"):
                return dotted
            target = module.imports().names.get(head)
            if target is None or target in (dotted, ".".join(parts[: cut + 1])):
                return dotted
            dotted, near = ".".join([target, *parts[cut + 1 :]]), module.path
        return dotted

    def _star_exports(self, module: ModuleFile) -> dict[str, str]:
        exported = {
            name: target
            for name, target in module.imports().names.items()
            if not name.startswith("_")
        }
        for name in module.top_level_names():
            if not name.startswith("_"):
                exported[name] = f"{module.module}.{name}"
        public = _literal_all(module.tree())
        if public is not None:
            exported = {name: target for name, target in exported.items() if name in public}
        return exported

    def find_module(self, dotted: str, near: str | None = None) -> ModuleFile | None:
        """The workspace file a dotted module name imports, looked up next to `near` and at the
        workspace root, the way `python script.py` run from either would find it."""
        key = (dotted, near)
        if key not in self._found:
            self._found[key] = self._find_module(dotted, near)
        return self._found[key]

    def _find_module(self, dotted: str, near: str | None) -> ModuleFile | None:
        roots: list[Path] = []
        first, last = self._sys_path_folders(near) if near is not None else ([], [])
        roots += [Path(folder) for folder in first]
        if near is not None:
            roots.append(Path(self.module_name(near)[2]))
        roots += [Path(folder) for folder in last]
        if self.root is not None and self.root not in roots:
            roots.append(self.root)
        relative = Path(*dotted.split("."))
        for base in roots:
            for candidate in (base / relative.with_suffix(".py"), base / relative / "__init__.py"):
                if candidate.is_file():
                    return self.module_file(str(candidate))
        return None

    def _sys_path_folders(self, near: str) -> tuple[list[str], list[str]]:
        """The folders `near` puts on sys.path before and after its own (source/syspath.py)."""
        key = f"sys.path:{near}"
        known = self.memo.get(key)
        if isinstance(known, tuple):
            return known
        self.memo[key] = ([], [])  # while it is read: its own imports resolve without it
        module = self.module_file(near)
        tree = module.tree() if module is not None else None
        found = (
            ([], [])
            if tree is None or module is None
            else (added_folders(tree, module.path, module.imports()))
        )
        self.memo[key] = found
        return found

    def resolve_symbol(
        self, dotted: str, near: str | None = None, depth: int = 0
    ) -> tuple[ModuleFile, str] | None:
        """`model.SmallConvNet` -> (the workspace file model.py, "SmallConvNet"), if local.

        A name a module imports rather than defines is followed to where it is defined, as
        Python's attribute lookup would: `unet.UNet` with `from .unet_model import UNet` in
        `unet/__init__.py` is unet_model.py's class, and `pkg.alexnet` is the function the
        package binds, not its submodule `alexnet.py`."""
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = self.find_module(".".join(parts[:cut]), near)
            if module is None:
                continue
            head = parts[cut]
            if depth < MAX_REEXPORT_DEPTH and head not in module.top_level_names():
                target = module.imports().names.get(head)
                submodule = ".".join(parts[: cut + 1])
                if target is not None and target not in (dotted, submodule):
                    rest = ".".join([target, *parts[cut + 1 :]])
                    again = self.resolve_symbol(rest, module.path, depth + 1)
                    if again is not None:
                        return again
            return module, ".".join(parts[cut:])
        return None

    def local_closure(self, start: ModuleFile) -> list[ModuleFile]:
        """`start` and every workspace module it imports, directly or not (bounded)."""
        seen: dict[str, ModuleFile] = {start.path: start}
        queue = [start]
        while queue and len(seen) < MAX_LOCAL_MODULES:
            current = queue.pop()
            table = current.imports()
            for target in {*table.names.values(), *table.stars}:
                parts = target.split(".")
                for cut in range(len(parts), 0, -1):
                    found = self.find_module(".".join(parts[:cut]), current.path)
                    if found is not None:
                        if found.path not in seen:
                            seen[found.path] = found
                            queue.append(found)
                        break
        return list(seen.values())

    @staticmethod
    def fingerprint(modules: list[ModuleFile]) -> str:
        """A digest of modules (a file and its local imports): any edit to any changes it."""
        digest = hashlib.sha256()
        for module in sorted(modules, key=lambda m: m.path):
            digest.update(module.path.encode())
            digest.update(b"\0")
            digest.update(module.text.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return digest.hexdigest()


def _literal_all(tree: ast.Module | None) -> set[str] | None:
    """A module's `__all__` when it is a literal list or tuple of strings."""
    for statement in [] if tree is None else tree.body:
        if (
            isinstance(statement, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in statement.targets)
            and isinstance(statement.value, (ast.List, ast.Tuple))
        ):
            return {
                item.value
                for item in statement.value.elts
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
            }
    return None
