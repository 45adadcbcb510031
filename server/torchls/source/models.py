"""Find the models in a file, without running it: model classes and the calls that build models.

A model class is a class whose bases lead (through the file's imports, other classes of the file
and other files of the workspace) to `torch.nn.Module`, a Lightning module or a Hugging Face
`PreTrainedModel`. A construction is a call to such a class, or to an installed library's model
constructor (`resnet50()`, `AutoModel.from_config(cfg)`, `AutoModel.from_pretrained('./dir')`).
Each becomes a `ModelTarget`: what to build, with which arguments, and which inputs to feed it.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.source import inputs as inputs_module
from torchls.source.imports import ImportTable, dotted_name
from torchls.source.project import ModuleFile, Project
from torchls.source.spec import InputSpec
from torchls.source.text import Lines, Span, split_lines_keepends
from torchls.source.values import (
    Value,
    describe,
    is_unknown,
    keyword_dict,
    parse_argument_list,
    read_value,
)
from torchls.source.values import unknown as unknown_value

_MODULE_BASES = {
    "torch.nn.Module",
    "torch.nn.modules.module.Module",
    "lightning.LightningModule",
    "lightning.pytorch.LightningModule",
    "lightning.pytorch.core.LightningModule",
    "pytorch_lightning.LightningModule",
    "pytorch_lightning.core.LightningModule",
}
# torch.nn classes that are not modules, so subclassing them does not make a model.
_NOT_MODULES = {"Parameter", "UninitializedParameter", "Buffer", "UninitializedBuffer"}
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"builtins", "__future__"}
_MODEL_SEGMENTS = {"models", "model", "modeling", "architectures", "networks", "nets", "zoo"}
CHAIN_METHODS = {"to", "cuda", "cpu", "eval", "train", "float", "half", "bfloat16", "double"}
# Names of library functions that load, fetch or write rather than construct.
_NOT_CONSTRUCTORS = (
    "load",
    "download",
    "save",
    "fetch",
    "get_weight",
    "remove",
    "delete",
    "write",
    "export",
    "convert",
    "train",
    "fit",
    "run",
    "main",
)
# transformers classes with "For" or "Model" in their name that are not models.
_HF_NOT_MODELS = (
    "Collator",
    "Tokenizer",
    "Processor",
    "Extractor",
    "Trainer",
    "Pipeline",
    "Logits",
    "Criteria",
    "Config",
    "Output",
    "Args",
    "Callback",
)
_HF_FACTORIES = {"from_config", "from_pretrained"}
_MAX_BASE_DEPTH = 8
_MAX_BINDING_STEPS = 8
# Wrappers whose result costs what the wrapped model costs: a hover on the variable shows it.
_SAME_MODEL_WRAPPERS = {
    "torch.nn.DataParallel",
    "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.DistributedDataParallel",
    "torch.compile",
}
# What a factory function must not call for a hover to run it: it reads, fetches or writes.
_IO_PREFIXES = ("load", "download", "save", "read_", "write", "to_csv", "tofile")
_IO_NAMES = {
    "open",
    "from_pretrained",
    "safe_load",
    "urlretrieve",
    "urlopen",
    "hf_hub_download",
    "snapshot_download",
    "system",
    "popen",
    "remove",
    "unlink",
    "rmdir",
    "rmtree",
    "makedirs",
    "mkdir",
    "rename",
    "copyfile",
    "copytree",
    "move",
    "dump",
    "fromfile",
    "exec",
    "eval",
    "__import__",
}
_IO_MODULES = {
    "requests",
    "urllib",
    "urllib3",
    "http",
    "socket",
    "subprocess",
    "shutil",
    "pickle",
    "joblib",
    "wget",
    "gdown",
    "huggingface_hub",
}


@dataclass
class ModelTarget:
    """One thing in the file that builds a model, and everything needed to profile it."""

    kind: str  # "class" or "construction"
    name: str  # what the user sees: "SmallConvNet", "resnet50", "AutoModel.from_pretrained"
    span: Span  # where a hover shows it
    line: int  # 1-based line of the class or call
    ref: dict[str, Any]  # {"import": dotted} or {"file": path, "module", "sys_path", "qualname"}
    args: list[Value] = field(default_factory=list)
    kwargs: dict[str, Value] = field(default_factory=dict)
    args_source: str = "defaults"
    inputs: InputSpec | None = None
    problems: list[str] = field(default_factory=list)
    defining_file: ModuleFile | None = None
    setting_key: str = ""  # the key the torchls.defaultInputShapes setting is looked up by
    wrapper_prefix: str = ""  # "module." when the script wraps it: nn.DataParallel(model)

    def request(self) -> dict[str, Any]:
        """The worker's `profile` job parameters (without input defaults from settings)."""
        return {
            "name": self.name,
            "ref": self.ref,
            "args": self.args,
            "kwargs": self.kwargs,
            "args_source": self.args_source,
            "inputs": self.inputs.as_json() if self.inputs else None,
        }

    def call_text(self) -> str:
        parts = [describe(value) for value in self.args]
        parts += [f"{key}={describe(value)}" for key, value in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


@dataclass
class PlacedTarget(ModelTarget):
    """A target a hover finds beside the class and the construction: a submodule line (the
    parent class's profile, with the share of the submodule at `submodule`), or a workspace
    factory function, which `refusal` says torchls does not run."""

    submodule: str = ""  # attribute path inside the parent: "encoder", "blocks.0"
    parent: str = ""  # the parent class's name
    refusal: str = ""

    def request(self) -> dict[str, Any]:
        params = super().request()
        if self.submodule:
            params["name"] = self.parent  # the worker builds (and names) the parent
            params["submodule"] = self.submodule
        return params

    def call_text(self) -> str:
        text = super().call_text()
        return self.parent + text[len(self.name) :] if self.submodule else text


class FileModels:
    """The models of one file. Cheap to build; parse once per document version."""

    def __init__(self, project: Project, module: ModuleFile) -> None:
        self.project = project
        self.module = module
        self.tree = module.tree()
        self.lines = Lines(module.text)
        self.imports = module.imports() if self.tree is not None else ImportTable()
        self.classes: dict[str, ast.ClassDef] = {}
        # Every node's parent, in ast.walk's (breadth-first) order, and the nodes by type: the
        # analyses ask for "every call", "every loop" many times per version, and walking a
        # 50,000-line file's tree once costs more than all of their questions together.
        self.parents: dict[ast.AST, ast.AST] = {}
        self.by_type: dict[type, list[ast.AST]] = {}
        self.all_nodes: list[ast.AST] = []
        self._by_kinds: dict[tuple[type, ...], list[ast.AST]] = {}
        if self.tree is not None:
            self._index(self.tree)
            self.classes = {
                node.name: node for node in self.tree.body if isinstance(node, ast.ClassDef)
            }
        self._model_class_cache: dict[str, bool] = {}
        self._targets: list[ModelTarget] | None = None
        self._source_lines: list[str] | None = None
        self.calls: list[ast.Call] = self.nodes(ast.Call)  # type: ignore[assignment]
        self._calls_by_scope: dict[int, list[ast.Call]] | None = None
        self._calls_by_name: dict[str, list[ast.Call]] | None = None
        self._calls_by_target: dict[str, list[ast.Call]] | None = None
        # Each scope's bindings, indexed once per version (see _binding); kept with the tree
        # it describes, so that nothing outlives the version.
        self.bindings: dict[int, tuple[list[ast.stmt], dict[str, tuple[bool, list[Any]]]]] = {}
        self._example_inputs: dict[int, tuple[ast.ClassDef, InputSpec | None]] = {}

    def _index(self, tree: ast.AST) -> None:
        parents = self.parents
        by_type = self.by_type
        queue: deque[ast.AST] = deque([tree])
        pop, push = queue.popleft, queue.append
        is_node = ast.AST
        every = self.all_nodes
        while queue:
            node = pop()
            every.append(node)
            by_type.setdefault(type(node), []).append(node)
            for name in node._fields:
                value = getattr(node, name, None)
                if isinstance(value, list):
                    for item in value:
                        if isinstance(item, is_node):
                            parents[item] = node
                            push(item)
                elif isinstance(value, is_node):
                    parents[value] = node
                    push(value)

    def nodes(self, *kinds: type) -> list[ast.AST]:
        """The file's nodes of these types (exact types): of one type in ast.walk's order, of
        several in source order."""
        if len(kinds) == 1:
            return self.by_type.get(kinds[0], [])
        known = self._by_kinds.get(kinds)
        if known is None:
            known = [node for kind in kinds for node in self.by_type.get(kind, [])]
            known.sort(
                key=lambda node: (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
            )
            self._by_kinds[kinds] = known
        return known

    def calls_in(self, scope: ast.AST | None) -> list[ast.Call]:
        """The calls whose nearest enclosing function is `scope` (None: module level)."""
        if self._calls_by_scope is None:
            index: dict[int, list[ast.Call]] = {}
            for call in self.calls:
                index.setdefault(id(_function_scope(self, call)), []).append(call)
            self._calls_by_scope = index
        return self._calls_by_scope.get(id(scope), [])

    def calls_named(self, name: str) -> list[ast.Call]:
        """Calls written `name(...)`."""
        if self._calls_by_name is None:
            index: dict[str, list[ast.Call]] = {}
            for call in self.calls:
                if isinstance(call.func, ast.Name):
                    index.setdefault(call.func.id, []).append(call)
            self._calls_by_name = index
        return self._calls_by_name.get(name, [])

    def calls_to(self, dotted: str) -> list[ast.Call]:
        """Calls of what the imports resolve to `dotted` (`torch.serialization.safe_globals`)."""
        if self._calls_by_target is None:
            index: dict[str, list[ast.Call]] = {}
            for call in self.calls:
                resolved = self.imports.resolve(call.func)
                if resolved:
                    index.setdefault(resolved, []).append(call)
            self._calls_by_target = index
        return self._calls_by_target.get(dotted, [])

    # -- model classes -------------------------------------------------------------------------

    def is_model_class(self, name: str, depth: int = 0) -> bool:
        if name in self._model_class_cache:
            return self._model_class_cache[name]
        self._model_class_cache[name] = False  # a cycle in the bases is not a model
        node = self.classes.get(name)
        result = node is not None and any(self._is_model_base(base, depth) for base in node.bases)
        self._model_class_cache[name] = result
        return result

    def _is_model_base(self, base: ast.expr, depth: int) -> bool:
        if depth > _MAX_BASE_DEPTH:
            return False
        if isinstance(base, ast.Subscript):  # Generic[T]-style bases
            base = base.value
        if isinstance(base, ast.Name) and base.id in self.classes:
            return self.is_model_class(base.id, depth + 1)
        dotted = self.imports.resolve(base)
        if dotted is None:
            return False
        if is_model_base_name(dotted):
            return True
        local = self.project.resolve_symbol(dotted, self.module.path)
        if local is not None:
            module, qualname = local
            if "." not in qualname:
                return models_of(self.project, module).is_model_class(qualname, depth + 1)
        return False

    def model_classes(self) -> list[str]:
        return [name for name in self.classes if self.is_model_class(name)]

    # -- targets -------------------------------------------------------------------------------

    def targets(self) -> list[ModelTarget]:
        """Every model class and model construction in the file, in source order."""
        if self._targets is not None:
            return self._targets
        if self.tree is None:
            return []
        found: list[ModelTarget] = []
        for name in self.model_classes():
            found.append(self.class_target(self.classes[name]))
        for node in self.calls:
            target = self.construction_target(node)
            if target is not None:
                found.append(target)
        found.sort(key=lambda target: (target.span.start_line, target.span.start_char))
        self._targets = found
        return found

    def first_targets(self, limit: int) -> list[ModelTarget]:
        """The first `limit` targets in source order, without making the rest (warming a large
        file's first models need not resolve its every call)."""
        if self._targets is not None or self.tree is None:
            return self.targets()[:limit]
        candidates: list[tuple[int, int, ast.AST]] = [
            (node.lineno, node.col_offset, node)
            for name, node in self.classes.items()
            if self.is_model_class(name)
        ]
        candidates += [(c.func.lineno, c.func.col_offset, c) for c in self.calls]
        candidates.sort(key=lambda entry: (entry[0], entry[1]))
        found: list[ModelTarget] = []
        for _, _, node in candidates:
            if len(found) >= limit:
                break
            if isinstance(node, ast.ClassDef):
                found.append(self.class_target(node))
            elif isinstance(node, ast.Call) and (target := self.construction_target(node)):
                found.append(target)
        return found

    def occurrence(self, target: ModelTarget) -> int:
        """How many targets of the same kind and name come before this one in the file."""
        if self._targets is not None:
            return sum(
                1
                for t in self._targets
                if t.kind == target.kind and t.name == target.name and t.line < target.line
            )
        if target.kind == "class":
            return 0  # one class target per name (`classes` keeps the last definition)
        count = 0
        for call in self.calls:
            if call.lineno < target.line and dotted_name(call.func) == target.name:
                made = self.construction_target(call)
                count += made is not None and made.name == target.name
        return count

    def target_at(self, line: int, character: int) -> ModelTarget | None:
        """The target whose name is under the cursor (0-based line, UTF-16 character): a model
        class's name, the callee of a construction (or of a workspace factory function), a
        `self.x = ...` submodule line in a model's `__init__`, or a variable bound to a model."""
        if self.tree is None:
            return None
        for name, class_node in self.classes.items():
            if not class_node.lineno - 1 <= line <= (class_node.end_lineno or 0) - 1:
                continue
            if self._class_name_span(class_node).contains(line, character):
                return self.class_target(class_node) if self.is_model_class(name) else None
        best: ast.Call | None = None
        for node in self._on_line(line, ast.Call):
            # The innermost call whose callee is under the cursor: `Net(...)` in `f(Net())`.
            assert isinstance(node, ast.Call)
            if self._span(node.func).contains(line, character) and (
                best is None or _is_inside(node, best)
            ):
                best = node
        if best is not None:
            found = self.construction_target(best) or self.factory_target(best)
            if found is not None:
                return found
        return self.submodule_target_at(line, character) or self.variable_target_at(line, character)

    def _class_name_span(self, node: ast.ClassDef) -> Span:
        line = self.lines.get(node.lineno - 1)
        match = re.search(rf"\bclass\s+({re.escape(node.name)})\b", line)
        if match is None:
            return self._span(node)
        start = len(line[: match.start()].encode("utf-8"))  # `class Name`, keyword included
        end = len(line[: match.end(1)].encode("utf-8"))
        return self.lines.span(node.lineno, start, node.lineno, end)

    def segment(self, node: ast.AST) -> str:
        """The source text of a node, line endings kept. The lines are split once per file:
        ast.get_source_segment splits the whole file again on every call."""
        if self._source_lines is None:
            self._source_lines = split_lines_keepends(self.module.text)
        lines = self._source_lines
        first = getattr(node, "lineno", 0) - 1
        last = (getattr(node, "end_lineno", None) or first + 1) - 1
        start, end = getattr(node, "col_offset", 0), getattr(node, "end_col_offset", None)
        if end is None or not 0 <= first <= last < len(lines):
            return ""
        if first == last:  # columns count UTF-8 bytes
            return lines[first].encode()[start:end].decode(errors="replace")
        head = lines[first].encode()[start:].decode(errors="replace")
        tail = lines[last].encode()[:end].decode(errors="replace")
        return head + "".join(lines[first + 1 : last]) + tail

    def _span(self, node: ast.AST) -> Span:
        return self.lines.span(
            node.lineno,  # type: ignore[attr-defined]
            node.col_offset,  # type: ignore[attr-defined]
            node.end_lineno or node.lineno,  # type: ignore[attr-defined]
            node.end_col_offset or 0,  # type: ignore[attr-defined]
        )

    def _file_ref(self, module: ModuleFile, qualname: str) -> dict[str, Any]:
        module_name, _, sys_path = self.project.module_name(module.path)
        return {
            "file": module.path,
            "module": module_name,
            "sys_path": sys_path,
            "qualname": qualname,
        }

    def class_target(self, node: ast.ClassDef) -> ModelTarget:
        target = ModelTarget(
            kind="class",
            name=node.name,
            span=self._class_name_span(node),
            line=node.lineno,
            ref=self._file_ref(self.module, node.name),
            defining_file=self.module,
            setting_key=node.name,
        )
        first_line = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        directives = read_directives(self.lines, first_line, node.lineno)
        if not self._apply_args_directive(target, directives):
            # No args comment: use the first construction of the class in this file, if any.
            for call in self._calls_to_local_class(node.name):
                args, kwargs, problems = self._call_arguments(call)
                if not problems:
                    target.args, target.kwargs = args, kwargs
                    target.args_source = f"the call on line {call.lineno}"
                    break
        target.inputs = self._inputs_from_directive(target, directives) or self.find_inputs(
            node.name, node
        )
        return target

    def construction_target(
        self, call: ast.Call, loaded: Mapping[ast.AST, ast.expr] | None = None
    ) -> ModelTarget | None:
        """The model `call` builds. `loaded`: values standing in for expressions the source
        cannot show, by node (a checkpoint's saved values for the `torch.load` call)."""
        resolved = self._resolve_callee(call)
        if resolved is None:
            return None
        ref, name, defining, method, class_node = resolved
        target = ModelTarget(
            kind="construction",
            name=name,
            span=self._span(call.func),
            line=call.lineno,
            ref=ref,
            defining_file=defining,
            setting_key=name.split(".")[0],
        )
        statement = self._statement_of(call)
        directives = read_directives(self.lines, statement.lineno, statement.lineno)
        if not self._apply_args_directive(target, directives):
            target.args, target.kwargs, target.problems = self._call_arguments(call, loaded)
            target.args_source = "the call"
        inputs = self._inputs_from_directive(target, directives)
        if inputs is None and class_node is not None and defining is not None:
            # The class's own comment and example_input_array apply to every construction.
            first = min([class_node.lineno, *(d.lineno for d in class_node.decorator_list)])
            class_lines = (
                self.lines
                if defining.path == self.module.path
                else models_of(self.project, defining).lines
            )
            inputs = self._inputs_from_directive(
                target, read_directives(class_lines, first, class_node.lineno)
            )
            if inputs is None:
                inputs = self._example_input_array(class_node, class_lines, defining.path)
        if inputs is None:
            inputs = self._literal_call_inputs(
                self._variables_bound_to(call), _function_scope(self, call)
            )
        target.inputs = inputs
        if method:
            target.ref = {**ref, "method": method}
        return target

    # -- callee resolution ---------------------------------------------------------------------

    def _resolve_callee(
        self, call: ast.Call
    ) -> tuple[dict[str, Any], str, ModuleFile | None, str, ast.ClassDef | None] | None:
        func = call.func
        written = dotted_name(func)
        if written is None:
            return None
        # A class of this file.
        if isinstance(func, ast.Name) and func.id in self.classes:
            if not self.is_model_class(func.id):
                return None
            node = self.classes[func.id]
            return self._file_ref(self.module, func.id), func.id, self.module, "", node
        dotted = self.imports.resolve(func)
        if dotted is None:
            return None
        # A class of another workspace file.
        local = self.project.resolve_symbol(dotted, self.module.path)
        if local is not None:
            module, qualname = local
            other = models_of(self.project, module)
            if "." in qualname or not other.is_model_class(qualname):
                return None
            return (
                self._file_ref(module, qualname),
                written,
                module,
                "",
                other.classes.get(qualname),
            )
        parts = dotted.split(".")
        method = parts[-1] if parts[-1] in _HF_FACTORIES else ""
        if not is_model_factory(dotted):
            return None
        return {"import": dotted}, written, None, method, None

    def _variables_bound_to(self, call: ast.Call) -> set[str]:
        """Names assigned the call's result: `model = Net()`, `model = Net().to(device)`."""
        node: ast.AST = call
        parent = self.parents.get(node)
        while (
            isinstance(parent, ast.Attribute)
            and parent.attr in CHAIN_METHODS
            and isinstance(self.parents.get(parent), ast.Call)
        ):
            node = self.parents[parent]
            parent = self.parents.get(node)
        names: set[str] = set()
        if isinstance(parent, (ast.Assign, ast.AnnAssign)) and parent.value is node:
            targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):  # self.model = Net()
                    names.add(target.attr)
        return names

    def _calls_to_local_class(self, name: str) -> list[ast.Call]:
        return self.calls_named(name)

    # -- where else a hover answers: submodule lines, variables, factory functions -------------

    def _on_line(self, line: int, *kinds: type) -> list[ast.AST]:
        """The calls (by their callee's lines), names and assignments on a 0-based line. Found
        from the innermost statement that holds the line (statements are in line order, so
        each level is a bisection): a hover on a large file reads one statement, not the file."""
        statement = self._statement_at(line + 1)
        if statement is None:
            return []
        found = []
        for node in walk(statement):
            if not isinstance(node, kinds):
                continue
            where = node.func if isinstance(node, ast.Call) else node
            first = getattr(where, "lineno", 0)
            if first - 1 <= line <= (getattr(where, "end_lineno", None) or first) - 1:
                found.append(node)
        return found

    def _statement_at(self, number: int) -> ast.stmt | None:
        """The innermost statement whose lines hold the 1-based line `number`."""
        body: list[ast.stmt] = self.tree.body if self.tree is not None else []
        found: ast.stmt | None = None
        while body:
            index = bisect.bisect_right(body, number, key=_first_line) - 1
            if index < 0 or (body[index].end_lineno or body[index].lineno) < number:
                break
            found = body[index]
            body = [
                inner
                for block in _statement_blocks(found)
                for inner in block
                if _first_line(inner) <= number <= (inner.end_lineno or inner.lineno)
            ]
            body = body[:1]
        return found

    def submodule_target_at(self, line: int, character: int) -> ModelTarget | None:
        """`self.encoder = Encoder(...)` in a model class's method, with the cursor on
        `self.encoder` (or on a callee that is no model of its own, `nn.Conv2d`): the parent
        class, profiled as its hover would, with the submodule's share picked out."""
        for statement in self._on_line(line, ast.Assign, ast.AnnAssign):
            assert isinstance(statement, (ast.Assign, ast.AnnAssign))
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Attribute):
                continue
            attribute = targets[0]
            value = statement.value
            if not isinstance(value, ast.Call):
                continue  # `self.width = width`: made elsewhere, if a module at all
            on_callee = isinstance(value, ast.Call) and self._span(value.func).contains(
                line, character
            )
            if not (self._span(attribute).contains(line, character) or on_callee):
                continue
            found = self._submodule_path(attribute)
            if found is None:
                return None
            class_node, path = found
            return self._submodule_target(class_node, path, attribute, statement.lineno)
        return None

    def _submodule_path(self, attribute: ast.Attribute) -> tuple[ast.ClassDef, str] | None:
        """(the model class, "encoder") for `self.encoder` written in one of its methods."""
        parts: list[str] = []
        node: ast.expr = attribute
        while isinstance(node, ast.Attribute):
            parts.insert(0, node.attr)
            node = node.value
        method = _function_scope(self, attribute)
        if not isinstance(node, ast.Name) or not isinstance(method, ast.FunctionDef):
            return None
        arguments = [*method.args.posonlyargs, *method.args.args]
        if not arguments or arguments[0].arg != node.id:
            return None  # not the instance the method was called on
        class_node = self.parents.get(method)
        if (
            not isinstance(class_node, ast.ClassDef)
            or self.classes.get(class_node.name) is not class_node
            or not self.is_model_class(class_node.name)
        ):
            return None
        return class_node, ".".join(parts)

    def _submodule_target(
        self, class_node: ast.ClassDef, path: str, attribute: ast.Attribute, line: int
    ) -> ModelTarget:
        parent = self.class_target(class_node)
        copied = {f.name: getattr(parent, f.name) for f in dataclasses.fields(ModelTarget)}
        target = PlacedTarget(**copied)
        target.kind = "submodule"
        target.name = f"{class_node.name}.{path}"
        target.span = self._span(attribute)
        target.line = line
        target.submodule = path
        target.parent = class_node.name
        return target

    def variable_target_at(self, line: int, character: int) -> ModelTarget | None:
        """`model` in `model.eval()`, `model(x)`, `print(model)` after `model = Net(...)` in the
        same scope (or at module level): the construction's profile."""
        for node in self._on_line(line, ast.Name):
            assert isinstance(node, ast.Name)
            if not self._span(node).contains(line, character):
                continue
            target = self._model_bound_to(node)
            if target is None:
                return None
            return dataclasses.replace(target, span=self._span(node))
        return None

    def _model_bound_to(self, name: ast.Name) -> ModelTarget | None:
        value: ast.expr | None
        if isinstance(name.ctx, ast.Store):
            statement = self.parents.get(name)
            if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
                return None
            value = statement.value
        else:
            value = self._bound_value_at(name.id, name.lineno, name)
        for _ in range(_MAX_BINDING_STEPS):
            while (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and value.func.attr in CHAIN_METHODS
            ):
                value = value.func.value  # Net().to(device).eval()
            if not isinstance(value, ast.Call):
                return None
            if self.imports.resolve(value.func) not in _SAME_MODEL_WRAPPERS:
                return self.construction_target(value) or self.factory_target(value)
            inner = value.args[0] if value.args else None
            if isinstance(inner, ast.Name):  # model = nn.DataParallel(model)
                value = self._bound_value_at(inner.id, value.lineno, value)
            else:
                value = inner
        return None

    def _bound_value_at(self, name: str, line: int, at: ast.AST) -> ast.expr | None:
        """The value `name` certainly has at `line` where `at` is: its function's binding, or
        the module's when the function binds it nowhere (a parameter's value is the caller's)."""
        scope = _function_scope(self, at)
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = scope.args
            parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            if any(parameter.arg == name for parameter in parameters):
                return None
            bound, value = _binding(scope.body, name, line, self.bindings)
            if bound:
                return value
        if self.tree is None:
            return None
        return _binding(self.tree.body, name, line, self.bindings)[1]

    def factory_target(self, call: ast.Call) -> ModelTarget | None:
        """`build_model(cfg)`: a call of a workspace function whose body builds a model. The
        hover runs it, unless its body loads, downloads or writes something (then it says so)."""
        found = self._factory_of(call)
        if found is None:
            return None
        owner, function = found
        target = PlacedTarget(
            kind="construction",
            name=dotted_name(call.func) or function.name,
            span=self._span(call.func),
            line=call.lineno,
            ref=self._file_ref(owner.module, function.name),
            defining_file=owner.module,
            setting_key=function.name,
        )
        risky = _io_call(owner, function)
        if risky is not None:
            what, at = risky
            where = "" if owner is self else f" of {owner.module.path.rsplit('/', 1)[-1]}"
            target.refusal = (
                f"`{function.name}` calls `{what}` on line {at}{where}; torchls does not run "
                "functions that load, download or write files. Hover the model class it builds "
                "instead."
            )
            return target
        statement = self._statement_of(call)
        directives = read_directives(self.lines, statement.lineno, statement.lineno)
        if not self._apply_args_directive(target, directives):
            target.args, target.kwargs, target.problems = self._call_arguments(call)
            target.args_source = "the call"
        target.inputs = self._inputs_from_directive(
            target, directives
        ) or self._literal_call_inputs(self._variables_bound_to(call), _function_scope(self, call))
        return target

    def _factory_of(self, call: ast.Call) -> tuple[FileModels, ast.FunctionDef] | None:
        func = call.func
        owner: FileModels = self
        name = ""
        if isinstance(func, ast.Name) and self._top_function(func.id) is not None:
            name = func.id
        else:
            dotted = self.imports.resolve(func)
            local = self.project.resolve_symbol(dotted, self.module.path) if dotted else None
            if local is None or "." in local[1]:
                return None
            owner, name = models_of(self.project, local[0]), local[1]
        function = owner._top_function(name)
        if function is None:
            return None
        builds = any(
            isinstance(node, ast.Call) and owner._resolve_callee(node) is not None
            for node in walk(function)
        )
        return (owner, function) if builds else None

    def _top_function(self, name: str) -> ast.FunctionDef | None:
        found = None
        for statement in self.tree.body if self.tree is not None else []:
            if isinstance(statement, ast.FunctionDef) and statement.name == name:
                found = statement
        return found

    def _statement_of(self, node: ast.AST) -> ast.stmt:
        current: ast.AST = node
        while not isinstance(current, ast.stmt):
            current = self.parents[current]
        return current

    # -- arguments -----------------------------------------------------------------------------

    def _resolve_ref(self, node: ast.expr) -> Value | None:
        if isinstance(node, ast.Name) and node.id in self.classes:
            return {"ref": self._file_ref(self.module, node.id)}
        if isinstance(node, ast.Name) and self.tree is not None:
            for statement in self.tree.body:
                if (
                    isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and statement.name == node.id
                ):
                    return {"ref": self._file_ref(self.module, node.id)}
        # A method of a class of this file: `GPT.get_default_config`
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.classes
        ):
            return {"ref": self._file_ref(self.module, f"{node.value.id}.{node.attr}")}
        dotted = self.imports.resolve(node)
        if dotted is None:
            return None
        local = self.project.resolve_symbol(dotted, self.module.path)
        if local is not None:
            module, qualname = local
            return {"ref": self._file_ref(module, qualname)}
        return {"ref": {"import": dotted}}

    def _resolve_written(self, node: ast.expr, notes: list[str]) -> Value | None:
        """A name in an argument list the user writes (`--args`, `# torchls: args=`), where a
        workspace class the file does not import is as good as an imported one: `VanillaVAE`
        of `models/vanilla_vae.py` for a Lightning module that takes a built model. Found by
        its definition in the workspace (or written out as `models.vanilla_vae.VanillaVAE`);
        the worker imports its module by name, as `from models.vanilla_vae import VanillaVAE`
        run from the workspace root would. Where it came from goes to `notes`."""
        found = self._resolve_ref(node)
        if found is not None:
            return found
        attrs: list[str] = []
        head = node
        while isinstance(head, ast.Attribute):
            attrs.insert(0, head.attr)
            head = head.value
        if not isinstance(head, ast.Name) or head.id in self.module.top_level_names():
            return None
        if attrs:  # `pkg.module.Class`, written out as an absolute import would name it
            local = self.project.resolve_symbol(".".join([head.id, *attrs]), self.module.path)
            if local is not None and local[1].split(".")[0] in local[0].top_level_names():
                return {"ref": self._file_ref(local[0], local[1])}
        candidates = workspace_classes(self.project, head.id)
        if len(candidates) > 1:
            candidates = self._as_package_exports(head.id, candidates) or candidates
        if not candidates:
            return None
        if len(candidates) > 1:
            places = ", ".join(
                f"{self._shown_path(module)} line {line}" for module, line in candidates[:4]
            )
            return unknown_value(
                head,
                f"{len(candidates)} classes named `{head.id}` in the workspace ({places}); "
                f"write the one you mean as module.{head.id}, e.g. "
                f"`{candidates[0][0].module}.{head.id}`",
            )
        module, line = candidates[0]
        notes.append(
            f"`{head.id}` is the class on line {line} of {self._shown_path(module)}, which "
            f"{Path(self.module.path).name} does not import: imported as `from {module.module} "
            f"import {head.id}` would"
        )
        return {"ref": self._file_ref(module, ".".join([head.id, *attrs]))}

    def _as_package_exports(
        self, name: str, candidates: list[tuple[ModuleFile, int]]
    ) -> list[tuple[ModuleFile, int]]:
        """Of several classes of one name, the one the file's own package (or a package above
        it) exports by that name: `from pkg import Unet` picks pkg/__init__.py's `Unet`."""
        parts = self.module.module.split(".")
        packages = parts if self.module.is_package else parts[:-1]
        for cut in range(len(packages), 0, -1):
            found = self.project.resolve_symbol(".".join([*packages[:cut], name]), self.module.path)
            if found is None:
                continue
            chosen = [entry for entry in candidates if entry[0].path == found[0].path]
            if len(chosen) == 1 and found[1] == name:
                return chosen
        return []

    def _shown_path(self, module: ModuleFile) -> str:
        root = self.project.root
        path = Path(module.path)
        if root is not None and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
        return path.name

    def _lookup(self, name: str, before_line: int) -> ast.expr | None:
        """The value assigned to `name` at module level before `before_line`, when certain."""
        if self.tree is None:
            return None
        return _binding(self.tree.body, name, before_line, self.bindings)[1]

    def _call_arguments(
        self,
        call: ast.Call,
        loaded: Mapping[ast.AST, ast.expr] | None = None,
        resolve: Callable[[ast.expr], Value | None] | None = None,
    ) -> tuple[list[Value], dict[str, Value], list[str]]:
        args: list[Value] = []
        kwargs: dict[str, Value] = {}
        problems: list[str] = []
        local = _function_scope(self, call)
        lookup = self._scoped_lookup(local, loaded)
        edits = self._scoped_edits(local)
        resolve_ref = resolve or self._resolve_ref

        def read(node: ast.expr) -> Value:
            return read_value(node, resolve_ref, lookup, edits=edits)

        for arg in call.args:
            if isinstance(arg, ast.Starred):
                problems.append(f"`*{ast.unparse(arg.value)}` is passed; torchls cannot see it")
                continue
            args.append(read(arg))
        for keyword in call.keywords:
            if keyword.arg is None:
                # GPT(**model_args) with `model_args = dict(n_layer=12, ...)` in the scope
                expanded = keyword_dict(read(keyword.value))
                if expanded is None:
                    problems.append(
                        f"`**{ast.unparse(keyword.value)}` is passed; torchls cannot see it"
                    )
                else:
                    kwargs.update(expanded)
                continue
            kwargs[keyword.arg] = read(keyword.value)
        for value in [*args, *kwargs.values()]:
            if is_unknown(value):
                problems.append(f"`{value['unknown']}` is {value['why'] or 'not a literal'}")
        return args, kwargs, problems

    def _scoped_lookup(
        self, function: ast.AST | None, loaded: Mapping[ast.AST, ast.expr] | None = None
    ) -> Any:
        if loaded:
            plain = self._scoped_lookup(function)

            def substituted(name: str, before_line: int) -> ast.expr | None:
                value = plain(name, before_line)
                return loaded.get(value, value) if value is not None else None

            return substituted

        def lookup(name: str, before_line: int) -> ast.expr | None:
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = function.args
                parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
                parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
                if any(parameter.arg == name for parameter in parameters):
                    return None  # a parameter: its value is the caller's
                bound, value = _binding(function.body, name, before_line, self.bindings)
                if bound:
                    return value
            return self._lookup(name, before_line)

        return lookup

    def _scoped_edits(self, function: ast.AST | None) -> Any:
        """What the scope does to a name between its assignment and a use (values.EditLookup):
        `config.vocab_size = 50257`, `model_args["bias"] = False` in order; None when it may
        change otherwise (a method call on it, passed to a call, changed under an `if`)."""

        def edits(name: str, after_line: int, before_line: int) -> list[Any] | None:
            body: list[ast.stmt] = self.tree.body if self.tree is not None else []
            if (
                isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                and _binding(function.body, name, before_line, self.bindings)[0]
            ):
                body = function.body
            found: list[Any] = []
            for statement in straight_line(body):
                if isinstance(statement, ast.withitem):
                    line = statement.context_expr.lineno
                    if after_line < line < before_line and self._may_change(statement, name):
                        return None
                    continue
                if statement.lineno <= after_line:
                    continue
                if (statement.end_lineno or statement.lineno) >= before_line:
                    break
                change = _edit_of(statement, name)
                if change is not None:
                    found.append(change)
                elif self._may_change(statement, name):
                    return None
            return found

        return edits

    def _may_change(self, statement: ast.stmt | ast.withitem, name: str) -> bool:
        for node in _scope_walk(statement):
            if not (isinstance(node, ast.Name) and node.id == name):
                continue
            parent = self.parents.get(node)
            if isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is node:
                grand = self.parents.get(parent)
                stored = isinstance(parent.ctx, (ast.Store, ast.Del))
                called = isinstance(grand, ast.Call) and grand.func is parent
                if stored or called or isinstance(grand, ast.AugAssign):
                    return True
            elif isinstance(parent, (ast.Call, ast.keyword)):
                call = self.parents.get(parent) if isinstance(parent, ast.keyword) else parent
                callee = dotted_name(call.func) if isinstance(call, ast.Call) else None
                # from_pretrained(path, config=config) builds from a deep copy of the config
                copied = (
                    isinstance(parent, ast.keyword)
                    and parent.arg == "config"
                    and (callee or "").endswith(".from_pretrained")
                )
                if callee not in _READ_ONLY_CALLS and not copied:
                    return True
        return False

    def _apply_args_directive(self, target: ModelTarget, directives: dict[str, Directive]) -> bool:
        directive = directives.get("args")
        if directive is None:
            return False
        call = parse_argument_list(directive.value)
        if call is None:
            target.problems.append(
                f"the `# torchls: args=` comment on line {directive.line} is not an argument "
                "list; write it like `# torchls: args=(10, width=64)`"
            )
            return False
        notes: list[str] = []
        target.args, target.kwargs, problems = self._call_arguments(
            call, resolve=lambda node: self._resolve_written(node, notes)
        )
        target.problems += [*dict.fromkeys(notes), *problems]
        target.args_source = f"`# torchls: args=` on line {directive.line}"
        return True

    # -- inputs --------------------------------------------------------------------------------

    def _inputs_from_directive(
        self, target: ModelTarget, directives: dict[str, Directive]
    ) -> InputSpec | None:
        directive = directives.get("input")
        if directive is None:
            return None
        spec, problem = inputs_module.from_directive(directive.value, directive.line)
        if problem:
            target.problems.append(problem)
        return spec

    def _example_input_array(self, node: ast.ClassDef, lines: Lines, path: str) -> InputSpec | None:
        """inputs.example_input_array, once per class: every construction of it asks."""
        known = self._example_inputs.get(id(node))
        if known is None or known[0] is not node:
            known = (node, inputs_module.example_input_array(node, lines, path))
            self._example_inputs[id(node)] = known
        return known[1]

    def find_inputs(self, class_name: str, node: ast.ClassDef) -> InputSpec | None:
        """Inputs for a model class: Lightning's example_input_array, then a literal call."""
        spec = self._example_input_array(node, self.lines, self.module.path)
        if spec is not None:
            return spec
        for call in self._calls_to_local_class(class_name):
            found = self._literal_call_inputs(
                self._variables_bound_to(call), _function_scope(self, call)
            )
            if found is not None:
                return found
        return None

    def _literal_call_inputs(self, variables: set[str], scope: ast.AST | None) -> InputSpec | None:
        """A literal call of the model in the scope that built it (not another function's)."""
        if self.tree is None or not variables:
            return None
        lookup = self._scoped_lookup(scope)
        calls = self.calls_in(scope)
        for node in calls:
            spec = inputs_module.from_call_site(node, variables, self.imports, lookup)
            if spec is not None:
                return spec
        for node in calls:
            spec = self._helper_call_inputs(node, variables, lookup)
            if spec is not None:
                return spec
        return None

    def _helper_call_inputs(
        self, call: ast.Call, variables: set[str], lookup: Any
    ) -> InputSpec | None:
        """`get_pf(model, inputs)` where the file's own `def get_pf(model, input)` runs the
        model on its input (`profile(model, inputs=(input,))`, `model(input)`): the inputs
        followed one call deep, the helper's parameters bound to what the call passes."""
        if not isinstance(call.func, ast.Name):
            return None
        function = self._top_function(call.func.id)
        if function is None:
            return None
        parameters = [*function.args.posonlyargs, *function.args.args]
        every = {p.arg for p in [*parameters, *function.args.kwonlyargs]}
        passed: dict[str, ast.expr] = {}
        for index, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred) or index >= len(parameters):
                break
            passed[parameters[index].arg] = arg
        for keyword in call.keywords:
            if keyword.arg in every:
                passed[keyword.arg] = keyword.value
        models = {
            name
            for name, arg in passed.items()
            if isinstance(arg, ast.Name) and arg.id in variables
        }
        if not models:
            return None
        values = {
            name: inputs_module.follow(arg, lookup, call.lineno)
            for name, arg in passed.items()
            if name not in models
        }

        def inner(name: str, before_line: int) -> ast.expr | None:
            bound, value = _binding(function.body, name, before_line, self.bindings)
            if bound:
                return value
            if name in every:
                return values.get(name)  # a parameter: what this call passes, if anything
            found: ast.expr | None = lookup(name, before_line)
            return found

        for node in self.calls_in(function):
            spec = inputs_module.from_call_site(node, models, self.imports, inner)
            if spec is not None:
                code = ast.unparse(call)
                code = code if len(code) <= 40 else code[:37] + "..."
                return dataclasses.replace(
                    spec, source=f"{spec.source}, through `{code}` on line {call.lineno}"
                )
        return None


@dataclass(frozen=True)
class Directive:
    value: str
    line: int  # 1-based


_DIRECTIVE = re.compile(r"#\s*torchls:\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$")


def read_directives(lines: Lines, first_line: int, statement_line: int) -> dict[str, Directive]:
    """`# torchls: key=value` comments attached to a statement: on its first line (trailing),
    or in the block of comment lines right above it (lines are 1-based)."""
    found: dict[str, Directive] = {}
    candidates = [statement_line]
    index = first_line - 1
    while index >= 1 and lines.get(index - 1).lstrip().startswith("#"):
        candidates.append(index)
        index -= 1
    for line in candidates:
        text = lines.get(line - 1)
        at = text.find("# torchls:")
        if at < 0:
            at = text.find("#torchls:")
        if at < 0:
            continue
        match = _DIRECTIVE.search(text[at:])
        if match and match.group(1) not in found:
            found[match.group(1)] = Directive(match.group(2), line)
    return found


def is_model_base_name(dotted: str) -> bool:
    if dotted in _MODULE_BASES:
        return True
    parts = dotted.split(".")
    if parts[:2] == ["torch", "nn"] and parts[-1][:1].isupper():
        return parts[-1] not in _NOT_MODULES
    if parts[0] in {"lightning", "pytorch_lightning"} and parts[-1] == "LightningModule":
        return True
    return parts[0] == "transformers" and parts[-1].endswith(("PreTrainedModel", "Model"))


def models_of(project: Project, module: ModuleFile) -> FileModels:
    """One analysis per file per project view: class checks across files stay cheap."""
    found = project.memo.get(module.path)
    if not isinstance(found, FileModels) or found.module.text != module.text:
        found = FileModels(project, module)
        project.memo[module.path] = found
    return found


def is_model_factory(dotted: str) -> bool:
    """Whether a library callable builds a model, from its name alone.

    Deliberately narrow: a hover (and the warm-up when a file is opened) runs the callable, so
    `torch.load`, `torch.hub.load`, dataset classes and the like must never qualify. Qualify:
    transformers model classes and their from_config/from_pretrained, timm.create_model, and
    constructors in a library's `models` module (torchvision.models.resnet50).
    """
    parts = dotted.split(".")
    top = parts[0]
    if top in _STDLIB or top == "torch" or len(parts) < 2:
        return False
    method = parts[-1] if parts[-1] in _HF_FACTORIES else ""
    name = parts[-2] if method else parts[-1]
    if not name.isidentifier():
        return False
    if top == "transformers":
        return _is_hf_model_name(name)
    if method:
        return False
    if top == "timm" and parts[-1] == "create_model":
        return True
    if name.lower().startswith(_NOT_CONSTRUCTORS):
        return False
    return bool(_MODEL_SEGMENTS & set(parts[1:-1]))


def _is_hf_model_name(name: str) -> bool:
    """`AutoModel`, `AutoModelForCausalLM`, `BertModel`, `GPT2LMHeadModel`, `ViTForImage...`."""
    if any(word in name for word in _HF_NOT_MODELS):
        return False
    if name.startswith("AutoModel"):
        return True
    if name.endswith("Model"):
        return True
    return re.fullmatch(r"[A-Z][A-Za-z0-9]*For[A-Z][A-Za-z]*", name) is not None


def _is_inside(inner: ast.AST, outer: ast.AST) -> bool:
    return any(node is inner for node in ast.walk(outer))


def _binding(
    statements: list[ast.stmt],
    name: str,
    before_line: int,
    cache: dict[int, tuple[list[ast.stmt], dict[str, tuple[bool, list[Any]]]]] | None = None,
) -> tuple[bool, ast.expr | None]:
    """(whether the scope binds `name`, its value at `before_line` if that is certain).

    Certain means: the last binding before the line is a plain `name = value` at the top of the
    scope (or in a `with` body there, which runs whenever the scope does), and the scope binds
    the name in no other way (no `+=`, loop variable, assignment inside an `if`, `with ... as`,
    import, walrus). Otherwise the value is unknown.
    `cache` keeps each scope's index for the file's analysis (FileModels.bindings).
    """
    entry = _bindings_of(statements, cache).get(name)
    if entry is None:
        return False, None
    other, plain = entry
    if other:
        return True, None
    earlier = [value for line, value in plain if line < before_line]
    return True, (earlier[-1] if earlier else None)


def _bindings_of(
    statements: list[ast.stmt],
    cache: dict[int, tuple[list[ast.stmt], dict[str, tuple[bool, list[Any]]]]] | None = None,
) -> dict[str, tuple[bool, list[Any]]]:
    """Every name a scope binds, found in one walk of the scope: a file with thousands of
    loads asks about the same few names thousands of times."""
    cached = cache.get(id(statements)) if cache is not None else None
    if cached is not None and cached[0] is statements:
        return cached[1]
    other: set[str] = set()
    plain: dict[str, list[tuple[int, ast.expr]]] = {}
    for statement in straight_line(statements):
        if isinstance(statement, ast.withitem):
            for node in _scope_walk(statement):
                other.update(_bound_names(node))
            continue
        assigned: set[str] = set()
        if _single_target(statement):
            for name, value in _plain_assignments(statement):
                plain.setdefault(name, []).append((statement.lineno, value))
                assigned.add(name)
        for node in _scope_walk(statement):
            for name in _bound_names(node):
                if name not in assigned:
                    other.add(name)
    index = {name: (name in other, plain.get(name, [])) for name in other | set(plain)}
    if cache is not None:
        cache[id(statements)] = (statements, index)
    return index


def straight_line(statements: list[ast.stmt]) -> list[ast.stmt | ast.withitem]:
    """A scope's statements in the order they run, `with` bodies spliced in after their items
    (`with open(p, "rb") as f: sd = torch.load(f)` binds `sd` as surely as a plain line)."""
    found: list[ast.stmt | ast.withitem] = []
    for statement in statements:
        if isinstance(statement, (ast.With, ast.AsyncWith)):
            found += statement.items
            found += straight_line(statement.body)
        else:
            found.append(statement)
    return found


# Calls that read what they are given: passing a config to them leaves it as it was.
_READ_ONLY_CALLS = {"print", "len", "str", "repr", "isinstance", "type", "id", "vars"}


def _edit_of(statement: ast.stmt, name: str) -> tuple[str, str, ast.expr] | None:
    """`name.key = value` -> ("attr", key, value); `name["key"] = value` -> ("item", ...)."""
    if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
        return None
    target = statement.targets[0]
    if (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == name
    ):
        return ("attr", target.attr, statement.value)
    if (
        isinstance(target, ast.Subscript)
        and isinstance(target.value, ast.Name)
        and target.value.id == name
        and isinstance(target.slice, ast.Constant)
        and isinstance(target.slice.value, str)
    ):
        return ("item", target.slice.value, statement.value)
    return None


def _plain_assignments(statement: ast.stmt) -> list[tuple[str, ast.expr]]:
    if isinstance(statement, ast.Assign):
        return [
            (target.id, statement.value)
            for target in statement.targets
            if isinstance(target, ast.Name)
        ]
    if (
        isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and statement.value is not None
    ):
        return [(statement.target.id, statement.value)]
    return []


def _bound_names(node: ast.AST) -> list[str]:
    """The names a node binds: stores, imports, globals, except targets, defs."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
        return [node.id]
    if isinstance(node, ast.alias):
        return [node.asname or node.name.split(".")[0]]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return list(node.names)
    if isinstance(node, ast.ExceptHandler):
        return [node.name] if node.name else []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    return []


def _single_target(statement: ast.stmt) -> bool:
    return not isinstance(statement, ast.Assign) or len(statement.targets) == 1


def _children(node: ast.AST) -> list[ast.AST]:
    """ast.iter_child_nodes as a list, without its generators (the analyses call it a few
    million times on a large file)."""
    found: list[ast.AST] = []
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, list):
            found += [item for item in value if isinstance(item, ast.AST)]
        elif isinstance(value, ast.AST):
            found.append(value)
    return found


def walk(node: ast.AST) -> list[ast.AST]:
    """The nodes of `node`'s tree, in ast.walk's order (a list, made faster than ast.walk)."""
    found = [node]
    index = 0
    while index < len(found):
        found += _children(found[index])
        index += 1
    return found


_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _scope_walk(node: ast.AST) -> list[ast.AST]:
    """The nodes of a statement, without entering nested functions, classes or lambdas."""
    if isinstance(node, _NESTED_SCOPES):
        return [node]
    found: list[ast.AST] = []
    stack = [node]
    while stack:
        current = stack.pop()
        found.append(current)
        stack += [child for child in _children(current) if not isinstance(child, _NESTED_SCOPES)]
    return found


def _function_scope(models: FileModels, node: ast.AST) -> ast.AST | None:
    current: ast.AST | None = node
    while current is not None:
        if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return current
        current = models.parents.get(current)
    return None


def _io_call(owner: FileModels, function: ast.FunctionDef) -> tuple[str, int] | None:
    """The first call in the function's body that loads, downloads, writes or runs something:
    (how it is written, its line). `model.eval()` is no such call; `eval(...)` is."""
    for node in sorted(
        (node for node in walk(function) if isinstance(node, ast.Call)),
        key=lambda node: (node.lineno, node.col_offset),
    ):
        func = node.func
        resolved = owner.imports.resolve(func)
        written = resolved or dotted_name(func) or ast.unparse(func)
        last = written.rsplit(".", 1)[-1]
        is_builtin = isinstance(func, ast.Name) and resolved is None
        if (
            (resolved and resolved.split(".")[0] in _IO_MODULES)
            or last.startswith(_IO_PREFIXES)
            or (last in _IO_NAMES and (is_builtin or last not in {"eval", "exec", "open"}))
        ):
            return written, node.lineno
    return None


def _statement_blocks(statement: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists inside a compound statement: bodies, else, finally, handlers, cases."""
    blocks: list[list[ast.stmt]] = []
    for name in ("body", "orelse", "finalbody"):
        value = getattr(statement, name, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            blocks.append(value)
    for handler in getattr(statement, "handlers", None) or []:
        blocks.append(handler.body)
    for case in getattr(statement, "cases", None) or []:
        blocks.append(case.body)
    return blocks


def _first_line(statement: ast.stmt) -> int:
    """A statement's first line, its decorators' included."""
    decorators = getattr(statement, "decorator_list", None) or []
    first: int = statement.lineno
    return min([first, *(int(decorator.lineno) for decorator in decorators)])


# Folders that hold installed or generated code, not the workspace's own classes.
_NOT_WORKSPACE_FOLDERS = {
    "node_modules",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "venv",
    "env",
    "build",
    "dist",
}
_MAX_SCANNED_FILES = 5000
_MAX_LISTED_ENTRIES = 200_000


def workspace_classes(project: Project, name: str) -> list[tuple[ModuleFile, int]]:
    """Every top-level class named `name` in the workspace's Python files, with its line: a
    bounded walk (hidden folders, virtual environments and build output skipped), each file
    first searched as text so that only the few that mention the class are parsed."""
    key = f"workspace classes:{name}"
    known = project.memo.get(key)
    if isinstance(known, list):
        return known
    found: list[tuple[ModuleFile, int]] = []
    project.memo[key] = found
    if project.root is None or not name.isidentifier():
        return found
    pattern = re.compile(rf"^class\s+{re.escape(name)}\b", re.MULTILINE)
    scanned = listed = 0
    for folder, folders, files in os.walk(project.root):
        listed += len(files) + len(folders)
        if listed > _MAX_LISTED_ENTRIES:  # a folder of data (a million images) is no code
            return found
        folders[:] = sorted(
            f
            for f in folders
            if not f.startswith(".")
            and f not in _NOT_WORKSPACE_FOLDERS
            and not (Path(folder, f) / "pyvenv.cfg").exists()
        )
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            scanned += 1
            if scanned > _MAX_SCANNED_FILES:
                return found
            path = str(Path(folder) / file)
            text = project.read(path)
            if text is None or not pattern.search(text):
                continue
            module = project.module_file(path)
            tree = module.tree() if module is not None else None
            for statement in [] if tree is None else tree.body:
                if isinstance(statement, ast.ClassDef) and statement.name == name:
                    assert module is not None
                    found.append((module, statement.lineno))
                    break
    return found
