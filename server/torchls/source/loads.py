"""Where a file loads a checkpoint into a model, read without running it (first piece of the
state-dict diagnostics).

`model.load_state_dict(torch.load("ckpt.pt"))`, and the same through variables and subscripts
(`sd = torch.load(p); sd = sd["state_dict"]; model.load_state_dict(sd, strict=False)`), with
`torch.load` or safetensors' `load_file`. Each becomes a `LoadSite`: the call, the checkpoint
path as the user would run the file, the keys taken on the way, `strict=`, and the model's
construction.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from torchls.source.imports import dotted_name
from torchls.source.models import (
    CHAIN_METHODS,
    FileModels,
    ModelTarget,
    _binding,
    _function_scope,
)
from torchls.source.text import Span

_LOADERS = {"torch.load": "torch.load", "safetensors.torch.load_file": "safetensors"}
_MAX_STEPS = 8


@dataclass
class LoadSite:
    span: Span  # the load_state_dict call
    line: int
    loader: str = ""  # "torch.load" or "safetensors"
    path: str | None = None  # as written, when torchls can read it
    candidates: list[str] = field(default_factory=list)  # where the file may be, first existing
    subscripts: list[str] = field(default_factory=list)  # ['state_dict'] taken on the way
    strict: bool | None = True  # None: not a literal
    keywords: dict[str, str] = field(default_factory=dict)  # map_location=..., weights_only=...
    model: ModelTarget | None = None
    problems: list[str] = field(default_factory=list)


def find_load_sites(models: FileModels, workspace: str | None) -> list[LoadSite]:
    if models.tree is None:
        return []
    sites = []
    for call in models.calls:
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == "load_state_dict"):
            continue
        if not call.args:
            continue
        site = LoadSite(span=models._span(call), line=call.lineno)
        for keyword in call.keywords:
            if keyword.arg == "strict":
                value = keyword.value
                site.strict = (
                    value.value
                    if isinstance(value, ast.Constant) and isinstance(value.value, bool)
                    else None
                )
        _follow_source(models, call, call.args[0], site)
        if site.loader == "":
            continue  # the state dict does not come from a file torchls can see
        site.model = _model_of(models, func.value, call)
        site.candidates = _candidates(site.path, models.module.path, workspace)
        sites.append(site)
    return sites


def _follow_source(models: FileModels, at: ast.AST, node: ast.expr, site: LoadSite) -> None:
    """Walk back from the argument to the load call: names, then subscripts, then the loader."""
    lookup = models._scoped_lookup(_function_scope(models, at))
    keys: list[str] = []
    for _ in range(_MAX_STEPS):
        if isinstance(node, ast.Name):
            found = lookup(node.id, getattr(node, "lineno", 1 << 30))
            if found is None:
                return
            node = found
            continue
        if isinstance(node, ast.Subscript):
            key = node.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return
            keys.insert(0, key.value)
            node = node.value
            continue
        if isinstance(node, ast.Call):
            dotted = models.imports.resolve(node.func) or dotted_name(node.func) or ""
            loader = _LOADERS.get(dotted)
            if loader is None or not node.args:
                return
            site.loader = loader
            site.subscripts = keys
            site.path = _path_text(models, node.args[0], lookup)
            if site.path is None:
                site.problems.append(
                    f"the checkpoint path `{ast.unparse(node.args[0])[:60]}` is not a literal "
                    "torchls can read"
                )
            for keyword in node.keywords:
                if keyword.arg:
                    site.keywords[keyword.arg] = ast.unparse(keyword.value)[:60]
            return
        return


def _path_text(models: FileModels, node: ast.expr, lookup: object, depth: int = 0) -> str | None:
    """A path from literals: "a.pt", f"a.pt", os.path.join("a", "b.pt"), Path("a") / "b.pt"."""
    if depth > _MAX_STEPS:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values):
        return "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.Name):
        found = lookup(node.id, getattr(node, "lineno", 1 << 30))  # type: ignore[operator]
        return _path_text(models, found, lookup, depth + 1) if found is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = _path_text(models, node.left, lookup, depth + 1)
        right = _path_text(models, node.right, lookup, depth + 1)
        return str(Path(left) / right) if left is not None and right is not None else None
    if isinstance(node, ast.Call):
        dotted = models.imports.resolve(node.func) or ""
        parts = [_path_text(models, arg, lookup, depth + 1) for arg in node.args]
        if any(part is None for part in parts) or node.keywords:
            return None
        texts = [part for part in parts if part is not None]
        if dotted in {"os.path.join", "posixpath.join"} and texts:
            return str(Path(*texts))
        if dotted in {"pathlib.Path", "pathlib.PurePath"} and texts:
            return str(Path(*texts))
    return None


def _candidates(path: str | None, document: str, workspace: str | None) -> list[str]:
    """Where the file may be: as written if absolute, else next to the file and from the root."""
    if path is None:
        return []
    written = Path(path).expanduser()
    if written.is_absolute():
        return [str(written)]
    bases = [Path(document).parent]
    if workspace:
        bases.append(Path(workspace))
    seen: list[str] = []
    for base in bases:
        candidate = str(base / written)
        if candidate not in seen:
            seen.append(candidate)
    return seen


def _model_of(models: FileModels, receiver: ast.expr, call: ast.Call) -> ModelTarget | None:
    """The construction the receiver was built by: `model = Net(...)` in the same scope."""
    if not isinstance(receiver, ast.Name):
        return None
    scope = _function_scope(models, call)
    statements = scope.body if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if statements is None and models.tree is not None:
        statements = models.tree.body
    bound, value = _binding(statements or [], receiver.id, call.lineno)
    if not bound and scope is not None and models.tree is not None:
        bound, value = _binding(models.tree.body, receiver.id, call.lineno)
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and isinstance(value.func.value, ast.Call)
        and value.func.attr in CHAIN_METHODS
    ):
        value = value.func.value
    if isinstance(value, ast.Call):
        return models.construction_target(value)
    return None
