"""What "Wrap in k-fold cross-validation" needs from the selected code, read with `ast`: the
loader its training loop iterates and that loader's own dataset, the optimizer(s) it steps, the
model they train, the schedulers it steps, and the loss it computes. Each of these is rebuilt per
fold from the very call that built it, under the name the selected code uses.

When any of that cannot be known for certain (a parameter, a name bound in several ways, a
dataset that is not a plain name, a helper that reads a global the fold would rebind), there is
no plan: a wrap that silently trains on every fold, or on one model for all folds, is worse than
none. Pure: no LSP types, no I/O."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from torchls.source.imports import dotted_name
from torchls.source.models import FileModels, _bound_names, _function_scope, _scope_walk
from torchls.source.text import split_lines_keepends

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _binding_index(models: FileModels, body: list[ast.stmt]) -> dict[str, list[ast.AST] | None]:
    """name -> its plain `name = <call>` statements in `body`, or None when the scope binds the
    name any other way too. Indexed once per scope and kept with the file's analysis (editors
    list code actions on every cursor move; a cache beside it would keep old trees alive)."""
    indexes: dict[int, tuple[list[ast.stmt], dict[str, list[ast.AST] | None]]] = (
        models.__dict__.setdefault("_wrap_indexes", {})
    )
    cached = indexes.get(id(body))
    if cached is not None and cached[0] is body:
        return cached[1]
    index: dict[str, list[ast.AST] | None] = {}
    for statement in body:
        for node in _scope_walk(statement):
            for name in _bound_names(node):
                found = index.setdefault(name, [])
                if found is None:
                    continue
                parent = models.parents.get(node)
                if (
                    isinstance(node, ast.Name)
                    and isinstance(parent, ast.Assign)
                    and len(parent.targets) == 1
                    and parent.targets[0] is node
                    and isinstance(parent.value, ast.Call)
                ):
                    found.append(parent)
                else:
                    index[name] = None
    indexes[id(body)] = (body, index)
    return index


_MULTICLASS = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss"}
_BINARY = {
    "BCEWithLogitsLoss", "BCELoss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
}  # fmt: skip
# Names the generated fold loop binds besides the ones it rebuilds.
TEMPLATE_NAMES = {
    "N_SPLITS", "splitter", "fold_labels", "fold_scores", "fold", "train_idx", "val_idx",
    "val_loader", "val_loss", "correct", "seen", "inputs", "targets", "outputs", "score",
    "scores", "EPOCHS", "BATCH_SIZE", "groups", "loss_fn", "labels", "dataset",
}  # fmt: skip


# The name an inline dataset (`DataLoader(TensorDataset(x, y))`) is bound to before the folds.
FOLD_DATASET = "fold_dataset"


def _reads_any(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


@dataclass
class WrapPlan:
    loader: str  # the name the selected code iterates
    dataset: str  # the loader's own dataset
    train_loader: str  # the loader's call, on the fold's training part, shuffled
    val_loader: str  # the same on the validation part, in order
    model: str
    rebuild: list[str] = field(default_factory=list)  # "net = Net(classes=2)", in order
    loss: str = ""  # a callable: "criterion", "F.mse_loss"
    multiclass: bool = False  # accuracy by argmax
    stratify: bool = False  # labels are classes
    labels: str | None = None  # an expression for the labels, when known cheaply
    prelude: list[str] = field(default_factory=list)  # bound once, before the folds


def plan(models: FileModels, statements: list[ast.stmt]) -> WrapPlan | None:
    tree = models.tree
    if tree is None or not statements:
        return None
    scope = _function_scope(models, statements[0])
    first_line = statements[0].lineno
    nodes = [node for statement in statements for node in _scope_walk(statement)]
    bound_inside = {name for node in nodes for name in _bound_names(node)}
    resolver = _Resolver(models, scope, statements)

    loader, loader_call = _training_loader(models, nodes, resolver)
    if loader is None or loader_call is None:
        return None
    dataset_node = _dataset_argument(loader_call)
    prelude: list[str] = []
    if isinstance(dataset_node, ast.Call) and not _reads_any(dataset_node, bound_inside):
        # DataLoader(TensorDataset(features, labels), ...): the dataset is bound to a name once,
        # before the folds, and each fold's loaders take their part of it.
        dataset = FOLD_DATASET
        prelude = [f"{dataset} = {models.segment(dataset_node)}"]
    elif isinstance(dataset_node, ast.Name):
        dataset = dataset_node.id
    else:
        return None
    if any(k.arg in {"sampler", "batch_sampler"} for k in loader_call.keywords):
        return None  # a sampler indexes the whole dataset, not the fold's part

    # Optimizers: what the code steps; each built on `model.parameters()`.
    stepped = sorted(
        {
            node.func.value.id
            for node in nodes
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"step", "zero_grad"}
            and isinstance(node.func.value, ast.Name)
        }
    )
    optimizers: dict[str, ast.Call] = {}
    schedulers: dict[str, ast.Call] = {}
    calls: dict[str, ast.Call] = {}
    for name in stepped:
        call = resolver.call(name, first_line)
        if call is None:
            return None  # a parameter, or bound in a way that cannot be rebuilt
        calls[name] = call
    model_names = set()
    for name, call in calls.items():
        parameters = _parameters_of(call)
        if parameters is not None:
            optimizers[name] = call
            model_names.add(parameters)
    for name, call in calls.items():
        if name in optimizers:
            continue
        first = call.args[0] if call.args else _keyword(call, "optimizer")
        if isinstance(first, ast.Name) and first.id in optimizers:
            schedulers[name] = call
        else:
            return None  # stepped, but neither an optimizer nor its scheduler
    if not optimizers or len(model_names) != 1:
        return None
    model = next(iter(model_names))
    model_call = resolver.call(model, first_line)
    if model_call is None:
        return None
    if not any(
        isinstance(n, ast.Name) and n.id == model and isinstance(n.ctx, ast.Load) for n in nodes
    ):
        return (
            None  # the model is trained through something else: a rebuilt name would not reach it
        )

    loss, short = _loss(models, nodes, resolver, first_line)
    if not loss:
        return None

    rebuilt = [model, *optimizers, *schedulers]
    if bound_inside & {loader, dataset, *rebuilt}:
        return None  # the selection builds these itself: rebinding before it would be undone
    if not resolver.safe_to_bind(
        [loader, *rebuilt, *TEMPLATE_NAMES, *([dataset] if prelude else [])]
    ):
        return None

    rebuild = [f"{model} = {models.segment(model_call)}"]
    rebuild += [f"{name} = {models.segment(call)}" for name, call in optimizers.items()]
    rebuild += [f"{name} = {models.segment(call)}" for name, call in schedulers.items()]
    dataset_call = (
        dataset_node
        if prelude and isinstance(dataset_node, ast.Call)
        else resolver.call(dataset, first_line)
    )
    labels = None
    if (
        dataset_call is not None
        and _short(models, dataset_call.func) == "TensorDataset"
        and len(dataset_call.args) >= 2
    ):
        labels = f"{dataset}.tensors[-1]"
    multiclass = short in _MULTICLASS
    return WrapPlan(
        loader=loader,
        dataset=dataset,
        train_loader=_loader_text(models, loader_call, dataset_node, dataset, "train_idx", True),
        val_loader=_loader_text(models, loader_call, dataset_node, dataset, "val_idx", False),
        prelude=prelude,
        model=model,
        rebuild=rebuild,
        loss=loss,
        multiclass=multiclass,
        stratify=multiclass or short in _BINARY,
        labels=labels,
    )


class _Resolver:
    """The call a name is bound to where the selection runs, when that is certain."""

    def __init__(self, models: FileModels, scope: ast.AST | None, statements: list[ast.stmt]):
        self.models = models
        self.scope = scope
        self.statements = statements
        tree = models.tree
        assert tree is not None
        self.tree = tree

    def _parameters(self, function: ast.AST) -> set[str]:
        if not isinstance(function, _FUNCTIONS):
            return set()
        arguments = function.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        return {a.arg for a in every}

    def _bindings(self, body: list[ast.stmt], name: str) -> list[ast.AST] | None:
        """The plain `name = <call>` statements of a scope; None when the scope binds the name
        any other way too (a loop target, `with ... as`, `+=`, an unpacking, an import)."""
        return _binding_index(self.models, body).get(name, [])

    def parameter(self, name: str) -> bool:
        return isinstance(self.scope, _FUNCTIONS) and name in self._parameters(self.scope)

    def local(self, name: str) -> bool:
        """Whether the selection's function binds `name` (its parameters too)."""
        if not isinstance(self.scope, _FUNCTIONS):
            return True
        if name in self._parameters(self.scope):
            return True
        return any(
            name in _bound_names(node)
            for statement in self.scope.body
            for node in _scope_walk(statement)
        )

    def call(self, name: str, before_line: int) -> ast.Call | None:
        scope = self.scope
        while isinstance(scope, _FUNCTIONS):
            if name in self._parameters(scope):
                return None
            bindings = self._bindings(scope.body, name)
            if bindings is None:
                return None
            if bindings:
                return self._last_before(bindings, before_line, scope is self.scope)
            scope = _function_scope(self.models, self.models.parents.get(scope))  # type: ignore[arg-type]
        bindings = self._bindings(self.tree.body, name)
        if not bindings:
            return None
        return self._last_before(bindings, before_line, self.scope is None)

    def _last_before(
        self, bindings: list[ast.AST], before_line: int, same_scope: bool
    ) -> ast.Call | None:
        if not same_scope:
            # Read from an enclosing scope: certain only when bound once.
            if len(bindings) != 1:
                return None
            statement = bindings[0]
        else:
            earlier = [b for b in bindings if getattr(b, "lineno", 0) < before_line]
            if not earlier:
                return None
            statement = max(earlier, key=lambda b: getattr(b, "lineno", 0))
            # It must run before the selection every time: in a block around it, not in a
            # branch or loop beside it.
            if not self._encloses(self.models.parents.get(statement)):
                return None
        value = getattr(statement, "value", None)
        return value if isinstance(value, ast.Call) else None

    def _encloses(self, block: ast.AST | None) -> bool:
        node: ast.AST | None = self.statements[0]
        while node is not None:
            parent = self.models.parents.get(node)
            if parent is block:
                return True
            node = parent
        return False

    def safe_to_bind(self, names: list[str]) -> bool:
        """Inside a function, the fold loop's assignments make these names local to it. A name
        that was a global there (read elsewhere in the function, or by a helper that would keep
        seeing the old object) makes the wrap wrong: refuse."""
        if not isinstance(self.scope, _FUNCTIONS):
            return True
        inside = {id(node) for statement in self.statements for node in ast.walk(statement)}
        wanted = {name for name in names if not self.local(name)}
        if not wanted:
            return True
        for node in ast.walk(self.scope):
            if isinstance(node, ast.Name) and node.id in wanted and id(node) not in inside:
                return False
        # A helper reading the same global would not see the fold's objects.
        nested = {id(node) for node in ast.walk(self.scope)}
        for node in ast.walk(self.tree):
            if isinstance(node, _FUNCTIONS) and id(node) not in nested:
                own = {n for s in node.body for x in _scope_walk(s) for n in _bound_names(x)}
                own |= self._parameters(node)
                for inner in ast.walk(node):
                    if (
                        isinstance(inner, ast.Name)
                        and inner.id in wanted - TEMPLATE_NAMES
                        and inner.id not in own
                    ):
                        return False
        return True


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _short(models: FileModels, func: ast.expr) -> str:
    dotted = models.imports.resolve(func) or dotted_name(func) or ""
    return dotted.rsplit(".", 1)[-1]


def _parameters_of(call: ast.Call) -> str | None:
    """`Adam(model.parameters(), ...)`: `model`."""
    first = call.args[0] if call.args else _keyword(call, "params")
    if (
        isinstance(first, ast.Call)
        and isinstance(first.func, ast.Attribute)
        and first.func.attr == "parameters"
        and isinstance(first.func.value, ast.Name)
        and not first.args
    ):
        return first.func.value.id
    return None


def _training_loader(
    models: FileModels, nodes: list[ast.AST], resolver: _Resolver
) -> tuple[str | None, ast.Call | None]:
    """The one loader iterated by a loop that calls `.backward()`, and its `DataLoader(...)`."""
    names: set[str] = set()
    for node in nodes:
        if not isinstance(node, (ast.For, ast.AsyncFor)):
            continue
        if not any(
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "backward"
            for s in node.body
            for n in ast.walk(s)
        ):
            continue
        iterable, target = node.iter, node.target
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Name)
            and iterable.func.id == "enumerate"
            and len(iterable.args) == 1
            and isinstance(target, ast.Tuple)
            and len(target.elts) == 2
        ):
            iterable, target = iterable.args[0], target.elts[1]
        if not isinstance(iterable, ast.Name):
            continue
        if isinstance(target, ast.Tuple) and len(target.elts) != 2:
            return None, None  # batches of three or more: the validation pass would not fit
        names.add(iterable.id)
    if len(names) != 1:
        return None, None
    name = next(iter(names))
    call = resolver.call(name, min(getattr(n, "lineno", 0) for n in nodes if hasattr(n, "lineno")))
    if call is None or not _short(models, call.func).endswith("DataLoader"):
        return None, None
    return name, call


def _dataset_argument(call: ast.Call) -> ast.expr | None:
    return call.args[0] if call.args else _keyword(call, "dataset")


def _loader_text(
    models: FileModels,
    call: ast.Call,
    dataset: ast.expr,
    dataset_name: str,
    indices: str,
    shuffle: bool,
) -> str:
    """The user's own `DataLoader(...)` call on `Subset(dataset, indices)`, shuffled or not."""
    text = models.segment(call)
    call_start = _offset(models, call.lineno, call.col_offset)
    replacements: list[tuple[int, int, str]] = []

    def replace(node: ast.expr, new: str) -> None:
        start = _offset(models, node.lineno, node.col_offset) - call_start
        end = _offset(models, node.end_lineno or node.lineno, node.end_col_offset or 0) - call_start
        replacements.append((start, end, new))

    replace(dataset, f"Subset({dataset_name}, {indices}.tolist())")
    shuffled = _keyword(call, "shuffle")
    if shuffled is not None:
        replace(shuffled, str(shuffle))
    encoded = text.encode()
    for start, end, new in sorted(replacements, reverse=True):
        encoded = encoded[:start] + new.encode() + encoded[end:]
    result = encoded.decode()
    if shuffled is None:
        result = result[: result.rstrip().rfind(")")].rstrip()
        comma = "" if result.endswith(("(", ",")) else ","
        result += f"{comma} shuffle={shuffle})"
    return result


def _offset(models: FileModels, lineno: int, col: int) -> int:
    """A byte offset into the file from ast's 1-based line and UTF-8 column."""
    lines = split_lines_keepends(models.module.text)
    return sum(len(line.encode()) for line in lines[: lineno - 1]) + col


def _loss(
    models: FileModels, nodes: list[ast.AST], resolver: _Resolver, before_line: int
) -> tuple[str, str]:
    """The loss the selected code takes `.backward()` of: a name bound to a `...Loss(...)`, a
    `torch.nn.functional` loss, or a parameter named like a loss. Else the one loss the scope
    builds (the seed's `loss.fct(...)`, a typo for `loss_fct(...)`). ("", "") when unknown."""
    assigned: dict[str, ast.expr] = {}
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                assigned[target.id] = node.value
    for node in nodes:
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "backward"
        ):
            continue
        receiver = node.func.value
        value = assigned.get(receiver.id) if isinstance(receiver, ast.Name) else receiver
        for inner in ast.walk(value) if value is not None else []:
            if isinstance(inner, ast.Call):
                found = _loss_callable(models, inner.func, resolver, before_line)
                if found[0]:
                    return found
    # The loss the scope builds, when there is exactly one.
    losses = set()
    scopes = [resolver.tree.body]
    if isinstance(resolver.scope, _FUNCTIONS):
        scopes.append(resolver.scope.body)
    for body in scopes:
        for statement in body:
            for node in _scope_walk(statement):
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Call)
                    and _short(models, node.value.func).endswith("Loss")
                ):
                    losses.add((node.targets[0].id, _short(models, node.value.func)))
    if len(losses) == 1:
        name, short = next(iter(losses))
        if resolver.call(name, before_line) is not None:
            return name, short
    return "", ""


def _loss_callable(
    models: FileModels, func: ast.expr, resolver: _Resolver, before_line: int
) -> tuple[str, str]:
    dotted = models.imports.resolve(func) or ""
    if dotted.startswith("torch.nn.functional."):
        short = dotted.rsplit(".", 1)[-1]
        if short.endswith("loss") or short in _MULTICLASS | _BINARY:
            return models.segment(func), short
        return "", ""
    if not isinstance(func, ast.Name):
        return "", ""
    call = resolver.call(func.id, before_line)
    if call is not None:
        short = _short(models, call.func)
        return (func.id, short) if short.endswith("Loss") else ("", "")
    if resolver.parameter(func.id) and any(w in func.id.lower() for w in ("loss", "criterion")):
        return func.id, ""  # a parameter: a loss of unknown kind
    return "", ""
