"""Where a file loads a checkpoint into a model, read without running it.

`model.load_state_dict(torch.load("ckpt.pt"))`, and the same through variables, subscripts and
the usual key rewrites (`sd = torch.load(p); sd = sd["state_dict"]`,
`{k.removeprefix("module."): v for k, v in sd.items()}`,
`consume_prefix_in_state_dict_if_present(sd, "module.")`), with `torch.load` or safetensors'
`load_file`; safetensors' `load_model(model, path)`. Each becomes a `LoadSite`: the call, the
checkpoint path as the user would run the file, what happens to the keys on the way (`steps`),
`strict=`, the model's construction, and the spans a quick fix edits.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.source.imports import dotted_name
from torchls.source.models import (
    CHAIN_METHODS,
    FileModels,
    ModelTarget,
    PlacedTarget,
    _function_scope,
    _scope_walk,
    _single_target,
)
from torchls.source.reaching import values_at, values_before_line
from torchls.source.syspath import path_value
from torchls.source.text import Span

_LOADERS = {"torch.load": "torch.load", "safetensors.torch.load_file": "safetensors"}
_LOAD_MODEL = {"safetensors.torch.load_model"}
_CONSUME_PREFIX = {"torch.nn.modules.utils.consume_prefix_in_state_dict_if_present"}
_MAX_STEPS = 12


@dataclass(frozen=True)
class Step:
    """What happens to the loaded object before `load_state_dict` sees it.

    kind: "key" (value: the subscript), "strip"/"add" (a prefix), "cut" (the first `value`
    characters of each key), "replace" (value: (old, new)), "keep_prefix" (only keys starting with
    it), "drop_prefix", "drop_suffix" (value: tuple of suffixes), "drop_keys" (value: tuple).
    """

    kind: str
    value: Any


@dataclass
class LoadSite:
    span: Span  # the load_state_dict (or load_model) call
    line: int
    kind: str = "load_state_dict"  # or "load_model" (safetensors)
    loader: str = ""  # "torch.load" or "safetensors"
    path: str | None = None  # as written, when torchls can read it
    path_span: Span | None = None
    candidates: list[str] = field(default_factory=list)  # where the file may be, first existing
    steps: list[Step] = field(default_factory=list)  # from the loaded object to the argument
    strict: bool | None = True  # None: not a literal
    strict_span: Span | None = None  # the `strict=...` value, when written
    keywords: dict[str, str] = field(default_factory=dict)  # map_location=..., weights_only=...
    keyword_spans: dict[str, Span] = field(default_factory=dict)  # their values
    loader_span: Span | None = None  # the torch.load(...) call
    loader_end: Span | None = None  # the end of its last argument: where a keyword goes
    argument: Span | None = None  # load_state_dict's first argument
    argument_text: str = ""
    call_end: Span | None = None  # the end of the call's last argument
    model: ModelTarget | None = None
    model_text: str = ""  # the receiver as written: "model"
    problems: list[str] = field(default_factory=list)
    open_call: bool = False  # the call passes **kwargs or *args: keywords are unknown
    open_loader: bool = False  # the same for the torch.load call
    keys_unknown: str | None = None  # why the keys cannot be followed (the dict is mutated)
    allowed_globals: frozenset[str] | None = frozenset()  # add_safe_globals; None: unknown
    model_changed: str | None = None  # why the model may differ from its construction
    # Why torchls cannot check this load at all (the state dict's source or the file's path is
    # not something it can follow), or None; `in_memory`: it is no file's (`other.state_dict()`).
    unchecked: str | None = None
    in_memory: bool = False
    # A bare torch.load: the simple statement it is in (lines, 0-based, first and last) and
    # the file's imports (bound name -> dotted), to wrap it in `with safe_globals([...]):`.
    statement_lines: tuple[int, int] | None = None
    imports: dict[str, str] = field(default_factory=dict)
    # from_pretrained: how its `config=` is given: "" (not given), "object" (a config, or an
    # expression torchls takes for one), "path" (a string literal). With a config, transformers
    # takes the path of the weights file itself (`pytorch_model.bin`), not only a folder.
    pretrained_config: str = ""
    # The nodes a check re-reads the model's construction from, with the checkpoint's saved
    # values standing in for what the torch.load call returns: GPT(GPTConfig(**ckpt["args"])).
    loader_call: ast.Call | None = field(default=None, repr=False, compare=False)
    # Why torchls cannot tell which model the state dict goes into, when it cannot: the keys
    # are then not checked, and the check says so.
    model_unknown: str | None = None
    construction: ast.Call | None = field(default=None, repr=False, compare=False)
    auto_class: bool = False  # from_pretrained of an Auto* class (it ignores a string config)

    @property
    def subscripts(self) -> list[str]:
        return [str(step.value) for step in self.steps if step.kind == "key"]


MAX_SITES = 64  # per file: each is followed through its scope, so the work stays bounded
_SITE_METHODS = {"load_state_dict", "from_pretrained", "load_from_checkpoint"}


def find_load_sites(models: FileModels, workspace: str | None) -> list[LoadSite]:
    if models.tree is None:
        return []
    sites: list[LoadSite] = []
    calls = [
        call
        for call in models.calls
        if (isinstance(call.func, ast.Attribute) and call.func.attr in _SITE_METHODS)
        or (models.imports.resolve(call.func) or "") in _LOAD_MODEL
    ]
    calls.sort(key=lambda call: (call.lineno, call.col_offset))
    for call in calls:
        if len(sites) >= MAX_SITES:
            break
        try:
            site = _site(models, call)
        except RecursionError:  # an absurdly deep expression: skip this call, keep the rest
            continue
        if site is None:
            continue
        site.candidates = _candidates(
            site.path, models.module.path, workspace, expand=site.loader == "lightning"
        )
        if site.kind == "from_pretrained" and not _is_folder_path(site):
            continue  # a Hub id: not checked
        sites.append(site)
    sites += _bare_loads(models, sites, workspace)
    sites.sort(key=lambda site: (site.span.start_line, site.span.start_char))
    return sites


def _bare_loads(models: FileModels, found: list[LoadSite], workspace: str | None) -> list[LoadSite]:
    """`model = torch.load("model.pt")`, `stats = torch.load(p)`: torch.load calls that feed no
    state-dict load. What torch.load itself does is checked (weights_only refusing a pickled
    model, CUDA storages, a missing file); there are no keys to compare."""
    taken = {
        (site.loader_span.start_line, site.loader_span.start_char)
        for site in found
        if site.loader_span is not None
    }
    bare: list[LoadSite] = []
    for call in models.calls_to("torch.load"):
        span = models._span(call)
        if (span.start_line, span.start_char) in taken or not call.args:
            continue
        if len(found) + len(bare) >= MAX_SITES:
            break
        site = LoadSite(span=span, line=call.lineno, kind="torch_load")
        try:
            _read_loader(models, call, call.args[0], site, "torch.load")
        except RecursionError:
            continue
        if site.path is None:
            site.unchecked = site.problems[0] if site.problems else "the path is not a literal"
        statement = models._statement_of(call)
        if isinstance(statement, (ast.Assign, ast.AnnAssign, ast.Expr, ast.Return)):
            last = statement.end_lineno or statement.lineno
            site.statement_lines = (statement.lineno - 1, last - 1)
            site.imports = dict(models.imports.names)
        site.candidates = _candidates(site.path, models.module.path, workspace)
        bare.append(site)
    return bare


def _construction(models: FileModels, call: ast.Call) -> ModelTarget | None:
    """construction_target (or, for `build_model()`, the workspace factory function the hover
    also runs), once per call: many loads into one model share its construction. Each site
    gets its own copy (it sets the copy's wrapper prefix). A factory that loads or writes
    files comes back with its `refusal`: it is never run."""
    cache: dict[int, tuple[ast.Call, ModelTarget | None]] | None = getattr(
        models, "_loads_targets", None
    )
    if cache is None:
        cache = {}
        models._loads_targets = cache  # type: ignore[attr-defined]
    entry = cache.get(id(call))
    if entry is None or entry[0] is not call:
        target = models.construction_target(call)
        if target is not None and target.problems:
            target = _fewer_problems(target, _inlined_target(models, call, {}))
        entry = (call, target or models.factory_target(call))
        cache[id(call)] = entry
    return copy.copy(entry[1]) if entry[1] is not None else None


def saved_construction(
    models: FileModels, call: ast.Call, loader: ast.Call, saved: ast.expr
) -> ModelTarget | None:
    """The construction `call` read again with `saved` (a literal of the checkpoint's plain
    values) standing in for what the `loader` torch.load call returns."""
    target = models.construction_target(call, {loader: saved})
    if target is None or target.problems:
        target = _fewer_problems(target, _inlined_target(models, call, {id(loader): saved}))
    return target


def _fewer_problems(first: ModelTarget | None, second: ModelTarget | None) -> ModelTarget | None:
    if first is None or second is None:
        return first or second
    return second if len(second.problems) < len(first.problems) else first


def _inlined_target(
    models: FileModels, call: ast.Call, substitutes: dict[int, ast.expr]
) -> ModelTarget | None:
    """The construction with its arguments' names replaced by the values certain on the path
    to it (`gptconf = GPTConfig(**model_args)` under `if init_from == 'resume':`, with
    `model_args` edited key by key from the checkpoint); None when that changes nothing."""
    inliner = _Inliner(models, substitutes)
    args = [inliner.inline(arg, 0) for arg in call.args]
    keywords = [ast.keyword(k.arg, inliner.inline(k.value, 0)) for k in call.keywords]
    if not inliner.changed:
        return None
    fresh = ast.Call(func=call.func, args=args, keywords=keywords)
    ast.copy_location(fresh, call)
    fresh.end_lineno, fresh.end_col_offset = call.end_lineno, call.end_col_offset
    parent = models.parents.get(call)
    if parent is not None:
        models.parents[fresh] = parent
    try:
        return models.construction_target(fresh)
    except RecursionError:
        return None


class _Inliner:
    """Names replaced by their one value on the path, dict edits applied, constant
    subscripts of dict literals taken: `GPTConfig(**model_args)` -> `GPTConfig(**{...})`."""

    def __init__(self, models: FileModels, substitutes: dict[int, ast.expr]) -> None:
        self.models = models
        self.substitutes = substitutes
        self.changed = False

    def inline(self, node: ast.expr, depth: int) -> ast.expr:
        if id(node) in self.substitutes:
            self.changed = True
            return self.substitutes[id(node)]
        if depth > _MAX_STEPS:
            return node
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            return self._name(node, depth)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            value = self.inline(node.value, depth + 1)
            key = node.slice
            if isinstance(value, ast.Dict) and isinstance(key, ast.Constant):
                for k, v in zip(value.keys, value.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == key.value:
                        return v
            if value is node.value:
                return node
            return ast.copy_location(ast.Subscript(value, key, ast.Load()), node)
        if isinstance(node, ast.Call):
            args = [self.inline(a, depth + 1) for a in node.args]
            keywords = [ast.keyword(k.arg, self.inline(k.value, depth + 1)) for k in node.keywords]
            if all(a is b for a, b in zip(args, node.args, strict=True)) and all(
                a.value is b.value for a, b in zip(keywords, node.keywords, strict=True)
            ):
                return node
            return ast.copy_location(ast.Call(node.func, args, keywords), node)
        if isinstance(node, ast.Starred):
            inner = self.inline(node.value, depth + 1)
            return node if inner is node.value else ast.copy_location(ast.Starred(inner), node)
        if isinstance(node, ast.Dict):
            values = [self.inline(v, depth + 1) for v in node.values]
            keys = [self.inline(k, depth + 1) if k is not None else None for k in node.keys]
            return ast.copy_location(ast.Dict(keys, values), node)
        if isinstance(node, (ast.List, ast.Tuple)):
            elts = [self.inline(e, depth + 1) for e in node.elts]
            return ast.copy_location(type(node)(elts, ast.Load()), node)
        return node

    def _name(self, node: ast.Name, depth: int) -> ast.expr:
        values = values_at(self.models, node.id, node)
        if values is None or len(values) != 1 or values[0].edits is None:
            return node
        binding = values[0]
        value = self.inline(binding.value, depth + 1)
        if binding.edits:
            merged = _as_dict(value)
            if merged is None:
                return node
            for key, edit in binding.edits:
                merged[key] = self.inline(edit, depth + 1)
            value = ast.Dict([ast.Constant(k) for k in merged], list(merged.values()))
            ast.copy_location(value, node)
        self.changed = True
        return value


def _as_dict(node: ast.expr) -> dict[str, ast.expr] | None:
    """`{"a": 1}` or `dict(a=1)` as its entries (keys all plain strings), else None."""
    if isinstance(node, ast.Dict):
        keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
        if all(isinstance(k, str) for k in keys):
            return {str(k): v for k, v in zip(keys, node.values, strict=True)}
        return None
    if (
        isinstance(node, ast.Call)
        and _is_name(node.func, "dict")
        and not node.args
        and all(k.arg for k in node.keywords)
    ):
        return {str(k.arg): k.value for k in node.keywords}
    return None


def _unparse(node: ast.AST, limit: int = 60) -> str:
    try:
        return ast.unparse(node)[:limit]
    except RecursionError:
        return "..."


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    """An argument given by position or by keyword."""
    if len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args):
        return call.args[position]
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _site(models: FileModels, call: ast.Call) -> LoadSite | None:
    func = call.func
    state_dict = _argument(call, 0, "state_dict")
    if isinstance(func, ast.Attribute) and func.attr == "load_state_dict" and state_dict:
        site = LoadSite(span=models._span(call), line=call.lineno)
        receiver: ast.expr = func.value
        argument = state_dict
        site.argument = models._span(argument)
        site.argument_text = models.segment(argument) or ""
        _follow_source(models, call, argument, site)
    elif (models.imports.resolve(func) or "") in _LOAD_MODEL and len(call.args) >= 2:
        site = LoadSite(span=models._span(call), line=call.lineno, kind="load_model")
        receiver = call.args[0]
        _read_loader(models, call, call.args[1], site, "safetensors")
    elif isinstance(func, ast.Attribute) and func.attr == "from_pretrained" and call.args:
        return _from_pretrained(models, call)
    elif isinstance(func, ast.Attribute) and func.attr == "load_from_checkpoint":
        return _from_checkpoint(models, call)
    else:
        return None
    if site.loader == "" and site.unchecked is None:
        return None
    if site.unchecked is None and site.path is None and site.problems:
        site.unchecked = site.problems[0]
    # load_state_dict(sd, strict) and load_model(model, path, strict) take strict by position too
    value = _argument(call, 1 if site.kind == "load_state_dict" else 2, "strict")
    if value is not None:
        site.strict_span = models._span(value)
        site.strict = (
            value.value
            if isinstance(value, ast.Constant) and isinstance(value.value, bool)
            else None
        )
    if any(k.arg is None for k in call.keywords) or any(
        isinstance(a, ast.Starred) for a in call.args
    ):
        site.open_call = True  # **kwargs: strict may be anything, and no keyword is added
        if value is None:
            site.strict = None
    last = [*call.args, *(k.value for k in call.keywords)]
    site.call_end = _end(models, last[-1])
    site.model, site.construction, site.model_unknown = _model_of(models, receiver, call)
    if isinstance(site.model, PlacedTarget) and site.model.refusal:
        site.model_unknown = site.model.refusal
        site.model, site.construction = None, None
    site.model_text = models.segment(receiver) or ""
    root = receiver.value if isinstance(receiver, ast.Attribute) else receiver
    if site.model is not None and isinstance(root, ast.Name):
        bound = _value_of(models, root) or site.construction
        changed = _mutated(models, root.id, getattr(bound, "lineno", 0), call.lineno, call, True)
        if changed is not None:
            site.model_changed = (
                f"`{root.id}` is changed after it is built (line {changed}), and torchls checks "
                "loads against the model as its constructor builds it"
            )
    return site


def _from_pretrained(models: FileModels, call: ast.Call) -> LoadSite | None:
    """`AutoModelForX.from_pretrained("./dir", ...)`: the weights of a local folder into the
    architecture its config.json describes. Hub names are not checked (torchls never
    downloads)."""
    target = models.construction_target(call)
    if target is None or target.ref.get("method") != "from_pretrained":
        return None
    site = LoadSite(span=models._span(call), line=call.lineno, kind="from_pretrained")
    _read_loader(models, call, call.args[0], site, "from_pretrained")
    if site.path is None:
        return None
    config = _keyword_value(call, "config")
    if config is not None:
        lookup = _lookup(models, call)
        site.pretrained_config = "path" if _path_text(models, config, lookup) else "object"
    owner = call.func.value if isinstance(call.func, ast.Attribute) else call.func
    site.auto_class = (dotted_name(owner) or "").rsplit(".", 1)[-1].startswith("Auto")
    value = site.keywords.get("ignore_mismatched_sizes")
    site.strict = value != "True"  # strict here: whether mismatched shapes raise
    if "ignore_mismatched_sizes" in site.keyword_spans:
        site.strict_span = site.keyword_spans["ignore_mismatched_sizes"]
    site.call_end = site.loader_end
    site.model = target
    site.model_text = models.segment(call.func) or ""
    return site


# load_from_checkpoint's own keywords; the others go to the class's __init__.
_LIGHTNING_KEYWORDS = {"checkpoint_path", "map_location", "hparams_file", "strict", "weights_only"}


def _from_checkpoint(models: FileModels, call: ast.Call) -> LoadSite | None:
    """Lightning's `Net.load_from_checkpoint(path, **kwargs)`: builds `Net(**hyper_parameters,
    **kwargs)` and loads `checkpoint["state_dict"]` into it, strictly unless `strict=False`."""
    assert isinstance(call.func, ast.Attribute)
    path = call.args[0] if call.args else None
    for keyword in call.keywords:
        if keyword.arg == "checkpoint_path":
            path = keyword.value
    if path is None:
        return None
    # The construction Lightning makes: the class called with the call's other keywords.
    init = ast.Call(
        func=call.func.value,
        args=[],
        keywords=[k for k in call.keywords if k.arg not in _LIGHTNING_KEYWORDS and k.arg],
    )
    ast.copy_location(init, call)
    init.end_lineno, init.end_col_offset = call.end_lineno, call.end_col_offset
    models.parents[init] = models.parents.get(call, call)
    target = models.construction_target(init)
    if target is None or "file" not in target.ref:
        return None  # only the workspace's own LightningModules
    site = LoadSite(span=models._span(call), line=call.lineno, kind="load_from_checkpoint")
    _read_loader(models, call, path, site, "lightning")
    if site.path is None:  # load_from_checkpoint(args.ckpt): counted, and said, not passed
        site.unchecked = site.problems[0] if site.problems else "the path is not a literal"
    site.steps = [Step("key", "state_dict")]
    for keyword in call.keywords:
        if keyword.arg == "strict":
            site.strict_span = models._span(keyword.value)
            value = keyword.value
            site.strict = (
                value.value
                if isinstance(value, ast.Constant) and isinstance(value.value, bool)
                else None
            )
    if site.strict_span is None and _sets_strict_loading_off(target):
        site.strict = False  # Lightning: strict=None means the module's `strict_loading`
    site.call_end = site.loader_end
    site.model = target
    site.model_text = models.segment(call.func.value) or ""
    return site


def _sets_strict_loading_off(target: ModelTarget) -> bool:
    """`strict_loading = False` in the class body or `self.strict_loading = False` in it."""
    defining = target.defining_file
    qualname = str(target.ref.get("qualname", ""))
    tree = defining.tree() if defining is not None else None
    if tree is None:
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == qualname:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Assign) and any(
                    (isinstance(t, ast.Name) and t.id == "strict_loading")
                    or (isinstance(t, ast.Attribute) and t.attr == "strict_loading")
                    for t in inner.targets
                ):
                    value = inner.value
                    return isinstance(value, ast.Constant) and value.value is False
    return False


def _is_folder_path(site: LoadSite) -> bool:
    """A local folder, or a local file (which transformers reads as the weights with a config
    and as the config without one): anything but a Hub id."""
    return _looks_local(site.path or "") or any(
        Path(c).is_dir() or Path(c).is_file() for c in site.candidates
    )


def _looks_local(path: str) -> bool:
    """ "./bert", "/models/x", "~/x", "runs\\x": a folder; "bert-base-uncased", "org/name": a
    Hub id, unless such a folder exists (checked by the caller through `candidates`)."""
    return path.startswith((".", "/", "~", "\\")) or ":" in path[:3]


def _end(models: FileModels, node: ast.AST) -> Span:
    span = models._span(node)
    return Span(span.end_line, span.end_char, span.end_line, span.end_char)


def _follow_source(models: FileModels, at: ast.AST, node: ast.expr, site: LoadSite) -> None:
    """Walk back from the argument to the load call: names, subscripts and key rewrites. Where
    the walk stops short of a file, `site.unchecked` says why."""
    steps: list[Step] = []
    for _ in range(_MAX_STEPS):
        if isinstance(node, ast.Name):
            use_line = getattr(node, "lineno", 1 << 30)
            found = _value_of(models, node)
            if found is None:
                site.unchecked = (
                    f"`{node.id}` cannot be followed back to a file (a parameter, a loop "
                    "variable, or assigned in a branch or in more than one way)"
                )
                return
            loops = _prefix_loops(models, node.id, getattr(found, "lineno", 0), use_line, at)
            ignored = {id(inner) for _, _, loop in loops for inner in ast.walk(loop)}
            changed = _mutated(
                models, node.id, getattr(found, "lineno", 0), use_line, at, False, ignored
            )
            if changed is not None:
                site.keys_unknown = (
                    f"`{node.id}` is changed in place on line {changed} before it is loaded"
                )
            consumed = _prefix_consumed(models, node.id, found, use_line, at)
            consumed += [(line, step) for line, step, _ in loops]
            steps[:0] = [step for _, step in sorted(consumed, key=lambda pair: pair[0])]
            node = found
            continue
        if isinstance(node, ast.Subscript):
            key = node.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                site.unchecked = f"the key `{_unparse(key)}` is not a string literal"
                return
            steps.insert(0, Step("key", key.value))
            node = node.value
            continue
        if isinstance(node, ast.DictComp):
            rewrite = _rewrite(node)
            if rewrite is None:
                site.unchecked = (
                    "torchls does not follow what this dict comprehension does to the keys"
                )
                return
            steps[:0] = rewrite[1]
            node = rewrite[0]
            continue
        if isinstance(node, ast.Call):
            dotted = models.imports.resolve(node.func) or dotted_name(node.func) or ""
            loader = _LOADERS.get(dotted)
            if loader is None or not node.args:
                if isinstance(node.func, ast.Attribute) and node.func.attr == "state_dict":
                    site.in_memory = True
                    site.unchecked = f"the state dict is `{_unparse(node)}`, in memory, not a file"
                else:
                    site.unchecked = (
                        f"the state dict comes from `{_unparse(node.func)}(...)`, a call torchls "
                        "does not follow"
                    )
                return
            site.steps = steps
            _read_loader(models, node, node.args[0], site, loader)
            return
        site.unchecked = f"the state dict is `{_unparse(node)}`, which torchls does not follow"
        return
    site.unchecked = "the state dict passes through more steps than torchls follows"


def _read_loader(
    models: FileModels, call: ast.Call, path: ast.expr, site: LoadSite, loader: str
) -> None:
    lookup = _lookup(models, call)
    site.loader = loader
    site.loader_call = call if loader == "torch.load" else None
    site.imports = dict(models.imports.names)  # for the safe_globals quick fix
    site.loader_span = models._span(call)
    site.loader_end = _end(models, [*call.args, *(k.value for k in call.keywords)][-1])
    site.path_span = models._span(path)
    if isinstance(path, ast.Name):
        # torch.load(f) inside `with open(p, "rb") as f:`, as the official examples write it
        opened = _opened_as(models, call, path.id)
        if opened is not None:
            path = opened
    site.path = _path_text(models, path, lookup)
    if site.path is None:
        site.problems.append(
            f"the checkpoint path `{_unparse(path)}` is not a literal torchls can read"
        )
    for keyword in call.keywords:
        if keyword.arg:
            site.keywords[keyword.arg] = _unparse(keyword.value)
            site.keyword_spans[keyword.arg] = models._span(keyword.value)
        else:
            site.open_loader = True  # **kwargs: map_location, weights_only may be in there
    if any(isinstance(a, ast.Starred) for a in call.args):
        site.open_loader = True
    # torch.load(f, map_location, ...) and load_from_checkpoint(path, map_location, ...)
    if loader in {"torch.load", "lightning"} and len(call.args) > 1:
        site.keywords.setdefault("map_location", _unparse(call.args[1]))
        site.keyword_spans.setdefault("map_location", models._span(call.args[1]))
    if loader in {"torch.load", "lightning"}:
        site.allowed_globals = _safe_globals(models, call)


_ADD_SAFE_GLOBALS = {"torch.serialization.add_safe_globals"}
_SAFE_GLOBALS = {"torch.serialization.safe_globals"}


def _safe_globals(models: FileModels, call: ast.Call) -> frozenset[str] | None:
    """Globals the file allows torch.load's weights_only unpickler: add_safe_globals([...])
    anywhere in the file (it is process-wide), `with safe_globals([...]):` around the call.
    None when a list is not made of names torchls can resolve."""
    allowed: set[str] = set()
    lists: list[ast.expr] = []
    for adder in _ADD_SAFE_GLOBALS:
        lists += [other.args[0] for other in models.calls_to(adder) if other.args]
    node: ast.AST | None = call
    while node is not None:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                expression = item.context_expr
                if (
                    isinstance(expression, ast.Call)
                    and (models.imports.resolve(expression.func) or "") in _SAFE_GLOBALS
                    and expression.args
                ):
                    lists.append(expression.args[0])
        node = models.parents.get(node)
    for listed in lists:
        if not isinstance(listed, (ast.List, ast.Tuple, ast.Set)):
            return None
        for element in listed.elts:
            if isinstance(element, ast.Tuple) and len(element.elts) == 2:
                element = element.elts[0]  # (obj, "name as saved")
            dotted = models.imports.resolve(element) or dotted_name(element)
            if not dotted:
                return None
            allowed.add(dotted)
    return frozenset(allowed)


# Methods that change a dict's keys in place, and a model's modules.
_DICT_MUTATORS = {"pop", "popitem", "update", "clear", "setdefault", "__setitem__", "__delitem__"}
_MODEL_MUTATORS = {
    "add_module", "register_module", "register_parameter", "register_buffer",
    "resize_token_embeddings", "reset_classifier", "tie_weights", "init_weights",
    "set_input_embeddings", "set_output_embeddings",
}  # fmt: skip
# Functions that take a model and leave its state dict as it was.
_MODEL_READERS = {"print", "len", "isinstance", "type", "id", "repr", "str", "hasattr", "getattr"}


def _mutated(
    models: FileModels,
    name: str,
    after: int,
    before: int,
    at: ast.AST,
    model: bool,
    ignored: set[int] | frozenset[int] = frozenset(),
) -> int | None:
    """The first line between `after` and `before`, in the scope of `at`, that may change what
    `name` holds: `sd[k] = ...`, `sd.pop(k)`, `model.fc = nn.Linear(...)`, `setattr(model, ..)`,
    `model.add_module(...)`, or (for a model) passing it to a function torchls does not know."""
    scope = _function_scope(models, at)
    body = scope.body if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if body is None and models.tree is not None:
        body = models.tree.body
    for statement in body or []:
        end = getattr(statement, "end_lineno", statement.lineno)
        if end < after or statement.lineno >= before:
            continue
        for node in _scope_walk(statement):
            line = getattr(node, "lineno", 0)
            if not after <= line < before or node is at or id(node) in ignored:
                continue
            if _changes(models, node, name, model):
                return line
    return None


def _is(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _changes(models: FileModels, node: ast.AST, name: str, model: bool) -> bool:
    if isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(
        node.ctx, (ast.Store, ast.Del)
    ):
        if isinstance(node, ast.Subscript) and not model:
            return _is(node.value, name)
        if isinstance(node, ast.Attribute) and model:
            return _is(node.value, name)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and _is(func.value, name):
        return func.attr in (_MODEL_MUTATORS if model else _DICT_MUTATORS)
    if not model:
        return False
    if any(_is(arg, name) for arg in node.args) or any(_is(k.value, name) for k in node.keywords):
        dotted = models.imports.resolve(func) or dotted_name(func) or ""
        if dotted in WRAPPERS or dotted in _CONSUME_PREFIX:
            return False
        return dotted not in _MODEL_READERS
    return False


def _prefix_consumed(
    models: FileModels, name: str, value: ast.expr, use_line: int, at: ast.AST
) -> list[tuple[int, Step]]:
    """`consume_prefix_in_state_dict_if_present(name, "module.")` between binding and use."""
    bound_line = getattr(value, "lineno", 0)
    scope = _function_scope(models, at)
    steps: list[tuple[int, Step]] = []
    consumers = [call for dotted in _CONSUME_PREFIX for call in models.calls_to(dotted)]
    for call in sorted(consumers, key=lambda call: (call.lineno, call.col_offset)):
        if not (bound_line <= call.lineno < use_line) or _function_scope(models, call) is not scope:
            continue
        if len(call.args) < 2 or not (isinstance(call.args[0], ast.Name)):
            continue
        prefix = call.args[1]
        if call.args[0].id == name and _string(prefix) is not None:
            steps.append((call.lineno, Step("strip", str(_string(prefix)))))
    return steps


def _rewrite(node: ast.DictComp) -> tuple[ast.expr, list[Step]] | None:
    """`{<key of k>: v for k, v in X.items() if <test of k>}` as (X, steps), when torchls knows
    what the key expression and the tests do."""
    if len(node.generators) != 1:
        return None
    loop = node.generators[0]
    target = loop.target
    if not (
        isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and all(isinstance(e, ast.Name) for e in target.elts)
        and isinstance(loop.iter, ast.Call)
        and isinstance(loop.iter.func, ast.Attribute)
        and loop.iter.func.attr == "items"
        and not loop.iter.args
        and not loop.is_async
    ):
        return None
    k, v = (e.id for e in target.elts if isinstance(e, ast.Name))
    if not (isinstance(node.value, ast.Name) and node.value.id == v):
        return None
    tests: list[ast.expr] = []
    for test in loop.ifs:  # `if a if b` and `if a and b` alike
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            tests.extend(test.values)
        else:
            tests.append(test)
    steps: list[Step] = []
    for test in tests:
        step = _key_test(test, k)
        if step is None:
            return None
        steps.append(step)
    key_step = _key_expression(node.key, k)
    if key_step is None:
        return None
    # Even `{k: v for k, v in sd.items()}` matters: a plain dict has no `_metadata`.
    steps.append(key_step if key_step.kind != "same" else Step("copy", None))
    return loop.iter.func.value, steps


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _strings(node: ast.expr) -> tuple[str, ...] | None:
    single = _string(node)
    if single is not None:
        return (single,)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_string(e) for e in node.elts]
        if all(item is not None for item in items):
            return tuple(item for item in items if item is not None)
    return None


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _method_on(node: ast.expr, name: str, method: str) -> ast.Call | None:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and _is_name(node.func.value, name)
        and not node.keywords
    ):
        return node
    return None


def _key_expression(node: ast.expr, k: str) -> Step | None:
    if _is_name(node, k):
        return Step("same", None)
    call = _method_on(node, k, "removeprefix")
    if call is not None and len(call.args) == 1 and _string(call.args[0]) is not None:
        return Step("strip", _string(call.args[0]))
    call = _method_on(node, k, "replace")
    if call is not None and len(call.args) == 2:
        old, new = _string(call.args[0]), _string(call.args[1])
        if old and new is not None:
            return Step("replace", (old, new))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _is_name(node.right, k):
        prefix = _string(node.left)
        if prefix is not None:
            return Step("add", prefix)
    if isinstance(node, ast.JoinedStr) and len(node.values) == 2:
        first, second = node.values
        if (
            isinstance(first, ast.Constant)
            and isinstance(second, ast.FormattedValue)
            and _is_name(second.value, k)
            and second.conversion == -1
            and second.format_spec is None
        ):
            return Step("add", str(first.value))
    if (
        isinstance(node, ast.Subscript)
        and _is_name(node.value, k)
        and isinstance(node.slice, ast.Slice)
        and node.slice.upper is None
        and node.slice.step is None
        and node.slice.lower is not None
    ):
        lower = node.slice.lower
        if isinstance(lower, ast.Constant) and isinstance(lower.value, int):
            return Step("cut", lower.value)
        if (
            isinstance(lower, ast.Call)
            and _is_name(lower.func, "len")
            and len(lower.args) == 1
            and _string(lower.args[0]) is not None
        ):
            return Step("cut", len(_string(lower.args[0]) or ""))
    return None


def _key_test(node: ast.expr, k: str) -> Step | None:
    negated = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    inner = node.operand if isinstance(node, ast.UnaryOp) and negated else node
    for method, kept, dropped in (
        ("startswith", "keep_prefix", "drop_prefix"),
        ("endswith", None, "drop_suffix"),
    ):
        call = _method_on(inner, k, method)
        if call is not None and len(call.args) == 1:
            values = _strings(call.args[0])
            if values is None:
                return None
            if negated:
                return Step(dropped, values)
            if kept is not None and len(values) == 1:
                return Step(kept, values[0])
            return None
    if (
        isinstance(inner, ast.Compare)
        and not negated
        and _is_name(inner.left, k)
        and len(inner.ops) == 1
        and isinstance(inner.ops[0], ast.NotIn)
    ):
        values = _strings(inner.comparators[0])
        return Step("drop_keys", values) if values is not None else None
    return None


def _path_text(models: FileModels, node: ast.expr, lookup: object, depth: int = 0) -> str | None:
    """A path from literals: "a.pt", f"a.pt", os.path.join("a", "b.pt"), Path("a") / "b.pt"."""
    if depth > _MAX_STEPS:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif (
                isinstance(value, ast.FormattedValue)
                and value.conversion == -1
                and value.format_spec is None
            ):
                part = _path_text(models, value.value, lookup, depth + 1)
                if part is None:
                    return None
                parts.append(part)
            else:
                return None
        return "".join(parts)
    if isinstance(node, ast.Name):
        if node.id == "__file__":
            return models.module.path
        found = lookup(node.id, getattr(node, "lineno", 1 << 30))  # type: ignore[operator]
        return _path_text(models, found, lookup, depth + 1) if found is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = _path_text(models, node.left, lookup, depth + 1)
        right = _path_text(models, node.right, lookup, depth + 1)
        return str(Path(left) / right) if left is not None and right is not None else None
    opened = _opened_path(models, node) if isinstance(node, ast.Call) else None
    if opened is not None:  # f = open(p, "rb"); torch.load(f)
        return _path_text(models, opened, lookup, depth + 1)
    if isinstance(node, ast.Call):
        dotted = models.imports.resolve(node.func) or ""
        args = [_path_text(models, arg, lookup, depth + 1) for arg in node.args]
        if any(part is None for part in args) or node.keywords:
            return None
        texts = [part for part in args if part is not None]
        if dotted in {"os.path.join", "posixpath.join"} and texts:
            return str(Path(*texts))
        if dotted in {"pathlib.Path", "pathlib.PurePath"} and texts:
            return str(Path(*texts))
    # os.path.dirname(__file__), Path(__file__).resolve().parent / "m.pt", ROOT.parents[1]
    return path_value(node, models.module.path, models.imports, lookup)  # type: ignore[arg-type]


_OPENERS = {"open", "io.open", "builtins.open"}


def _opened_path(models: FileModels, call: ast.Call) -> ast.expr | None:
    """The path a call opens for reading bytes: `open(p, "rb")`, `io.open(p, "rb")`,
    `Path(p).open("rb")`, `p.open("rb")`; None for anything else."""
    func = call.func
    dotted = models.imports.resolve(func) or dotted_name(func) or ""
    if dotted in _OPENERS and call.args:
        mode = call.args[1] if len(call.args) > 1 else _keyword_value(call, "mode")
        return call.args[0] if _reads_bytes(mode) else None
    if isinstance(func, ast.Attribute) and func.attr == "open" and dotted not in _OPENERS:
        mode = call.args[0] if call.args else _keyword_value(call, "mode")
        return func.value if _reads_bytes(mode) else None
    return None


def _keyword_value(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _reads_bytes(mode: ast.expr | None) -> bool:
    return (
        isinstance(mode, ast.Constant)
        and isinstance(mode.value, str)
        and "b" in mode.value
        and not any(c in mode.value for c in "wax+")
    )


def _opened_as(models: FileModels, at: ast.AST, name: str) -> ast.expr | None:
    """The path of `with open(p, "rb") as name:` around `at`, if that is where `name` is from."""
    node = models.parents.get(at)
    while node is not None:
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                target = item.optional_vars
                if isinstance(target, ast.Name) and target.id == name:
                    expression = item.context_expr
                    return (
                        _opened_path(models, expression)
                        if isinstance(expression, ast.Call)
                        else None
                    )
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
        node = models.parents.get(node)
    return None


def _candidates(
    path: str | None, document: str, workspace: str | None, expand: bool = False
) -> list[str]:
    """Where the file may be: as written if absolute, else next to the file and from the root.
    `~` is expanded only for loaders that expand it (Lightning's fsspec); torch.load does not."""
    if path is None or "\0" in path or len(path) > 4096:
        return []
    written = Path(path).expanduser() if expand else Path(path)
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


# Wrappers whose state dict adds a prefix to every key of the model they wrap.
WRAPPERS = {
    "torch.nn.DataParallel": "module.",
    "torch.nn.parallel.DataParallel": "module.",
    "torch.nn.parallel.data_parallel.DataParallel": "module.",
    "torch.nn.parallel.DistributedDataParallel": "module.",
    "torch.nn.parallel.distributed.DistributedDataParallel": "module.",
    "torch.compile": "_orig_mod.",
}


def _model_of(
    models: FileModels, receiver: ast.expr, call: ast.Call
) -> tuple[ModelTarget | None, ast.Call | None, str | None]:
    """The construction the receiver was built by (`model = Net(...)` in the same scope, or on
    the path to the load) and its call, through `.to(...)`-style chains and wrappers: after
    `model = nn.DataParallel(model)` the model's keys start with `module.`, which the target's
    `wrapper_prefix` says. The third item says why the model is not one torchls can tell."""
    found = _construction_of(models, receiver, call)
    if isinstance(found, str):
        return None, None, found
    return (found[0], found[1], None) if found is not None else (None, None, None)


def _construction_of(
    models: FileModels, receiver: ast.expr, call: ast.Call
) -> tuple[ModelTarget, ast.Call] | str | None:
    attribute = ""
    if isinstance(receiver, ast.Attribute) and receiver.attr in {"module", "_orig_mod"}:
        attribute = receiver.attr + "."  # model.module.load_state_dict: the wrapped model
        receiver = receiver.value
    start: ast.expr | None
    if isinstance(receiver, ast.Attribute):
        start = _member_value(models, receiver, call)  # self.model, built in __init__
    elif isinstance(receiver, ast.Name):
        start = receiver
    else:
        return None
    built = _built_by(models, start, 0) if start is not None else None
    if not built:
        return None
    written = models.segment(receiver) or "the model"
    if len({id(construction) for construction, _ in built}) > 1:
        lines = sorted({construction.lineno for construction, _ in built})
        return (
            f"`{written}` is built in {len(built)} ways (lines "
            f"{', '.join(map(str, lines))}), depending on the path the script takes"
        )
    if len({prefix for _, prefix in built}) > 1:
        shown = " or ".join(f"`{prefix}`" if prefix else "none" for _, prefix in built)
        return (
            f"`{written}` is wrapped on some paths only, so its keys' prefix ({shown}) depends "
            "on the path the script takes"
        )
    value, prefix = built[0]
    target = _construction(models, value)
    if target is None:
        return None
    if attribute:
        if not prefix.startswith(attribute):
            return None
        prefix = prefix[len(attribute) :]
    target.wrapper_prefix = prefix
    return target, value


def _built_by(models: FileModels, node: ast.expr, depth: int) -> list[tuple[ast.Call, str]] | None:
    """Each construction (and wrapper prefix) a model expression may come from: `model` after
    `model = Net()`, `if cuda: model = model.cuda()`, `model = nn.DataParallel(model)`."""
    if depth > _MAX_STEPS:
        return None
    if isinstance(node, ast.Name):
        plain = models._scoped_lookup(_function_scope(models, node))(
            node.id, getattr(node, "lineno", 1 << 30)
        )
        values = [plain] if plain is not None else None
        if values is None:
            reaching = values_at(models, node.id, node)
            values = [binding.value for binding in reaching] if reaching else None
        if not values:
            return None
        found: list[tuple[ast.Call, str]] = []
        for value in values:
            more = _built_by(models, value, depth + 1)
            if more is None:
                return None
            found += [pair for pair in more if pair not in found]
        return found
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in CHAIN_METHODS:
        return _built_by(models, func.value, depth + 1)  # Net().to(device), model.cuda()
    wrapper = WRAPPERS.get(models.imports.resolve(func) or "")
    if wrapper is None:
        return [(node, "")]
    inner = node.args[0] if node.args else None
    wrapped = _built_by(models, inner, depth + 1) if inner is not None else None
    return [(call, wrapper + prefix) for call, prefix in wrapped] if wrapped else None


def _member_value(models: FileModels, receiver: ast.Attribute, call: ast.Call) -> ast.expr | None:
    """`self.model` in a method: the value its class assigns to `self.model`, when one method
    assigns it once (`self.model = Net()` in `__init__`) and nothing else in the class binds it
    (another assignment, `+=`, a `del`, a `setattr`)."""
    owner = receiver.value
    method = _function_scope(models, call)
    if not (isinstance(owner, ast.Name) and isinstance(method, ast.FunctionDef)):
        return None
    arguments = [*method.args.posonlyargs, *method.args.args]
    klass = models.parents.get(method)
    if not arguments or arguments[0].arg != owner.id or not isinstance(klass, ast.ClassDef):
        return None
    found: list[ast.expr] = []
    for function in klass.body:
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = [*function.args.posonlyargs, *function.args.args][:1]
        if not first:
            continue
        self_name = first[0].arg
        for node in (node for statement in function.body for node in _scope_walk(statement)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == receiver.attr
                and isinstance(node.value, ast.Name)
                and node.value.id == self_name
                and isinstance(node.ctx, (ast.Store, ast.Del))
            ):
                statement = models.parents.get(node)
                if not (
                    isinstance(statement, (ast.Assign, ast.AnnAssign))
                    and statement.value is not None
                    and _single_target(statement)
                    and models.parents.get(statement) is function
                ):
                    return None  # bound under an `if`, in a loop, by `+=` or unpacking
                found.append(statement.value)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"setattr", "delattr"}
            ):
                return None
    return found[0] if len(found) == 1 else None


def _lookup(models: FileModels, at: ast.AST) -> Any:
    """The import model's lookup for the scope of `at` and, where it cannot tell, the value
    certain on the path to `at`: `ckpt_path = ...` and its use in the same `if` branch."""
    plain = models._scoped_lookup(_function_scope(models, at))

    def lookup(name: str, before_line: int) -> ast.expr | None:
        found: ast.expr | None = plain(name, before_line)
        if found is not None:
            return found
        values = values_before_line(models, name, before_line, at)
        return values[0].value if values is not None and len(values) == 1 else None

    return lookup


def _value_of(models: FileModels, name: ast.Name) -> ast.expr | None:
    """The one value `name` has where it is used, or None."""
    found: ast.expr | None = models._scoped_lookup(_function_scope(models, name))(
        name.id, getattr(name, "lineno", 1 << 30)
    )
    if found is not None:
        return found
    values = values_at(models, name.id, name)
    return values[0].value if values is not None and len(values) == 1 else None


def _prefix_loops(
    models: FileModels, name: str, after: int, before: int, at: ast.AST
) -> list[tuple[int, Step, ast.For]]:
    """The loops that strip a prefix from the keys in place, between binding and use, in a
    block the use is in (not in a branch beside it)::

        for k, v in list(sd.items()):
            if k.startswith(prefix):
                sd[k[len(prefix):]] = sd.pop(k)
    """
    scope = _function_scope(models, at)
    body = scope.body if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if body is None and models.tree is not None:
        body = models.tree.body
    around: set[int] = set()
    node: ast.AST | None = at
    while node is not None:
        around.add(id(node))
        node = models.parents.get(node)
    found: list[tuple[int, Step, ast.For]] = []
    lookup = _lookup(models, at)
    for statement in body or []:
        if (statement.end_lineno or statement.lineno) < after or statement.lineno >= before:
            continue
        for loop in _scope_walk(statement):
            if (
                isinstance(loop, ast.For)
                and after <= loop.lineno < before
                and id(models.parents.get(loop)) in around | {id(scope or models.tree)}
            ):
                step = _prefix_loop(loop, name, lookup)
                if step is not None:
                    found.append((loop.lineno, step, loop))
    return found


def _prefix_loop(loop: ast.For, name: str, lookup: Any) -> Step | None:
    # for k, v in list(sd.items()) / for k in list(sd.keys()) / for k in list(sd)
    iterated = loop.iter
    if not (
        isinstance(iterated, ast.Call)
        and _is_name(iterated.func, "list")
        and len(iterated.args) == 1
        and not loop.orelse
        and len(loop.body) == 1
    ):
        return None
    inner = iterated.args[0]
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and not inner.args:
        if inner.func.attr not in {"items", "keys"}:
            return None
        inner = inner.func.value
    target = loop.target
    if isinstance(target, ast.Tuple) and len(target.elts) == 2:
        target = target.elts[0]
    if not (_is_name(inner, name) and isinstance(target, ast.Name)):
        return None
    k = target.id
    statement = loop.body[0]
    guard: str | None = None
    if isinstance(statement, ast.If) and not statement.orelse and len(statement.body) == 1:
        test = _constant_names(statement.test, lookup)
        tested = _method_on(test, k, "startswith")
        if tested is None or len(tested.args) != 1 or _string(tested.args[0]) is None:
            return None
        guard = _string(tested.args[0])
        statement = statement.body[0]
    # sd[<new key of k>] = sd.pop(k)
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Subscript)
        and _is_name(statement.targets[0].value, name)
    ):
        return None
    popped = _method_on(statement.value, name, "pop")
    if popped is None or len(popped.args) != 1 or not _is_name(popped.args[0], k):
        return None
    step = _key_expression(_constant_names(statement.targets[0].slice, lookup), k)
    if step is None or step.kind == "same":
        return None
    if guard is None:
        return step if step.kind in {"add", "cut"} else None
    if step.kind == "cut" and step.value == len(guard):
        return Step("strip", guard)
    if step.kind == "strip" and step.value == guard:
        return step
    if step.kind == "replace" and step.value == (guard, ""):
        return None  # replaces every occurrence, not only the prefix: not followed
    return None


def _constant_names(node: ast.expr, lookup: Any) -> ast.expr:
    """`node` with names bound to string literals replaced by them (`unwanted_prefix`)."""

    class Replace(ast.NodeTransformer):
        def visit_Name(self, name: ast.Name) -> ast.expr:
            found = lookup(name.id, getattr(name, "lineno", 1 << 30))
            if isinstance(found, ast.Constant) and isinstance(found.value, str):
                return ast.copy_location(ast.Constant(found.value), name)
            return name

    result: ast.expr = Replace().visit(copy.deepcopy(node))
    return result
