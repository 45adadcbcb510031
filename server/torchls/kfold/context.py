"""What a training script already names, read with `ast` (nothing runs): the dataset or the
tensors and labels, the model's construction, the optimizer, scheduler and loss, the number of
epochs and the batch size. The k-fold templates reuse these, so the inserted loop fits the file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from torchls.source.imports import ImportTable, dotted_name
from torchls.source.models import FileModels, _scope_walk

_OPTIMIZER_PREFIX = "torch.optim."
_SCHEDULER_PREFIX = "torch.optim.lr_scheduler."
_CLASSIFICATION_LOSSES = {
    "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss", "cross_entropy", "nll_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits",
}  # fmt: skip
_MULTICLASS = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss"}
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass
class Found:
    """A name the file binds, the call that binds it, and that call's source text."""

    name: str
    call: str  # "SmallConvNet(num_classes=10)"
    callee: str = ""  # "SmallConvNet", "torch.optim.Adam"
    arguments: str = ""  # the call's arguments after the first: ", lr=1e-3"
    functional: bool = False  # a function used as is (`F.mse_loss`), not a call to make
    inline: bool = False  # built inside another call (`DataLoader(TensorDataset(x, y))`): no name


@dataclass
class TrainingContext:
    dataset: Found | None = None  # dataset = TensorDataset(x, y)
    inputs: str | None = None  # x
    labels: str | None = None  # y
    model: Found | None = None
    optimizer: Found | None = None
    scheduler: Found | None = None
    loss: Found | None = None
    epochs: str | None = None  # "2" or "EPOCHS"
    batch_size: str | None = None
    imports: ImportTable = field(default_factory=ImportTable)
    top_level: dict[str, str] = field(default_factory=dict)  # names bound by top-level imports

    @property
    def classification(self) -> bool:
        return self.loss is not None and self.loss.callee.rsplit(".", 1)[-1] in (
            _CLASSIFICATION_LOSSES
        )

    @property
    def multiclass(self) -> bool:
        """Outputs with one score per class: accuracy is the argmax."""
        return self.loss is not None and self.loss.callee.rsplit(".", 1)[-1] in _MULTICLASS


def read_context(models: FileModels, line: int | None = None) -> TrainingContext:
    """What the file names where code goes before `line` (0-based; the end of the file when
    None): only what is bound there (in the functions around the line, then at module level,
    before it), never a name local to another function. The model is the one the optimizer
    trains (any call bound to that name), else the first construction source/models.py
    recognises."""
    context = TrainingContext(imports=models.imports)
    tree = models.tree
    if tree is None:
        return context
    context.top_level = top_level_imports(tree)
    end = len(models.lines.lines) if line is None else line
    nodes = _visible_nodes(models, tree, end)
    calls: dict[str, ast.Call] = {}
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Call):
                calls.setdefault(target.id, node.value)
                _assignment(context, models, target.id, node.value)
    for node in nodes:
        if isinstance(node, ast.For) and context.epochs is None:
            _epochs(context, models, node)
        elif isinstance(node, ast.Call) and context.batch_size is None:
            for keyword in node.keywords:
                if keyword.arg == "batch_size":
                    context.batch_size = models.segment(keyword.value)
    if context.dataset is None:
        _inline_dataset(context, models, nodes)
    if context.loss is None:
        _functional_loss(context, models, nodes)
    if context.optimizer is not None:
        trained = _parameters_owner(context.optimizer)
        call = calls.get(trained) if trained else None
        if call is not None:
            found = Found(trained or "", models.segment(call), models.segment(call.func))
            context.model = found
    return context


def top_level_imports(tree: ast.Module) -> dict[str, str]:
    """Names bound by the module's own top-level imports (not a function's)."""
    names: dict[str, str] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
            for alias in statement.names:
                names[alias.asname or alias.name] = f"{statement.module}.{alias.name}"
    return names


def _visible_nodes(models: FileModels, tree: ast.Module, line: int) -> list[ast.AST]:
    """The nodes of the statements that run before `line` in its scopes: the functions around
    it, innermost first, then the module; not entering other functions or classes."""
    scopes: list[list[ast.stmt]] = []
    for node in ast.walk(tree):
        if isinstance(node, _FUNCTIONS) and node.lineno - 1 < line <= (node.end_lineno or 0) - 1:
            scopes.append(node.body)
    scopes.sort(key=lambda body: -body[0].lineno)
    scopes.append(tree.body)
    found: list[ast.AST] = []
    for body in scopes:
        for statement in body:
            if (statement.end_lineno or statement.lineno) - 1 >= line:
                break
            found += _scope_walk(statement)
    return found


def _parameters_owner(optimizer: Found) -> str | None:
    """`Adam(net.parameters(), ...)`: `net`."""
    try:
        call = ast.parse(optimizer.call, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call) or not call.args:
        return None
    first = call.args[0]
    if (
        isinstance(first, ast.Call)
        and isinstance(first.func, ast.Attribute)
        and first.func.attr == "parameters"
        and isinstance(first.func.value, ast.Name)
    ):
        return first.func.value.id
    return None


def _inline_dataset(context: TrainingContext, models: FileModels, nodes: list[ast.AST]) -> None:
    """`DataLoader(TensorDataset(x, y), ...)`: the dataset is built in the loader's call and has
    no name; the inserted loop builds the same one (`dataset = TensorDataset(x, y)`)."""
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        dotted = context.imports.resolve(node.func) or dotted_name(node.func) or ""
        if not dotted.endswith("DataLoader"):
            continue
        given = node.args[0] if node.args else None
        given = given or next((k.value for k in node.keywords if k.arg == "dataset"), None)
        if not isinstance(given, ast.Call):
            continue
        callee = context.imports.resolve(given.func) or dotted_name(given.func) or ""
        if not callee.endswith("Dataset"):
            continue
        context.dataset = Found("dataset", models.segment(given), callee, inline=True)
        if callee.endswith("TensorDataset") and len(given.args) >= 2:
            context.inputs = models.segment(given.args[0])
            context.labels = models.segment(given.args[-1])
        return


def _functional_loss(context: TrainingContext, models: FileModels, nodes: list[ast.AST]) -> None:
    """`F.mse_loss(out, y)` called where no `...Loss()` is built: that function is the loss."""
    for node in nodes:
        if isinstance(node, ast.Call):
            dotted = context.imports.resolve(node.func) or ""
            short = dotted.rsplit(".", 1)[-1]
            if dotted.startswith("torch.nn.functional.") and (
                short.endswith("loss") or short in _CLASSIFICATION_LOSSES
            ):
                text = models.segment(node.func)
                context.loss = Found(text, text, dotted, functional=True)
                return


def _assignment(context: TrainingContext, models: FileModels, name: str, call: ast.Call) -> None:
    dotted = context.imports.resolve(call.func) or dotted_name(call.func) or ""
    short = dotted.rsplit(".", 1)[-1]
    found = Found(name, models.segment(call), dotted, _rest_arguments(models, call))
    if short == "TensorDataset" and context.dataset is None:
        context.dataset = found
        if len(call.args) >= 2:
            context.inputs = models.segment(call.args[0])
            context.labels = models.segment(call.args[-1])
    elif dotted.startswith(_SCHEDULER_PREFIX) and context.scheduler is None:
        context.scheduler = found
    elif dotted.startswith(_OPTIMIZER_PREFIX) and context.optimizer is None:
        context.optimizer = found
    elif dotted.startswith("torch.nn.") and short.endswith("Loss") and context.loss is None:
        context.loss = found
    elif context.model is None and models.construction_target(call) is not None:
        context.model = found
    elif short.endswith("Dataset") and short != "TensorDataset" and context.dataset is None:
        context.dataset = found


def _epochs(context: TrainingContext, models: FileModels, loop: ast.For) -> None:
    """`for epoch in range(N)`: N."""
    target = loop.target
    call = loop.iter
    if (
        isinstance(target, ast.Name)
        and "epoch" in target.id
        and isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "range"
        and len(call.args) == 1
    ):
        context.epochs = models.segment(call.args[0])


def _rest_arguments(models: FileModels, call: ast.Call) -> str:
    """The arguments after the first, as written: `, lr=1e-3` of `Adam(model.parameters(),
    lr=1e-3)`."""
    rest = [models.segment(a) for a in call.args[1:]]
    rest += [
        f"{k.arg}={models.segment(k.value)}" if k.arg else f"**{models.segment(k.value)}"
        for k in call.keywords
    ]
    return "".join(f", {part}" for part in rest)
