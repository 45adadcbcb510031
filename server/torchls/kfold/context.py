"""What a training script already names, read with `ast` (nothing runs): the dataset or the
tensors and labels, the model's construction, the optimizer, scheduler and loss, the number of
epochs and the batch size. The k-fold templates reuse these, so the inserted loop fits the file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from torchls.source.imports import ImportTable, dotted_name
from torchls.source.models import FileModels

_OPTIMIZER_PREFIX = "torch.optim."
_SCHEDULER_PREFIX = "torch.optim.lr_scheduler."
_CLASSIFICATION_LOSSES = {"CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss"}


@dataclass
class Found:
    """A name the file binds, the call that binds it, and that call's source text."""

    name: str
    call: str  # "SmallConvNet(num_classes=10)"
    callee: str = ""  # "SmallConvNet", "torch.optim.Adam"
    arguments: str = ""  # the call's arguments after the first: ", lr=1e-3"


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
    top_level_imports: list[ast.stmt] = field(default_factory=list)

    @property
    def classification(self) -> bool:
        return self.loss is not None and self.loss.callee.rsplit(".", 1)[-1] in (
            _CLASSIFICATION_LOSSES
        )


def read_context(models: FileModels) -> TrainingContext:
    """What the file names; the model is the first construction source/models.py recognises."""
    context = TrainingContext(imports=models.imports)
    tree = models.tree
    if tree is None:
        return context
    context.top_level_imports = [
        s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Call):
                _assignment(context, models, target.id, node.value)
        elif isinstance(node, ast.For) and context.epochs is None:
            _epochs(context, models, node)
        elif isinstance(node, ast.Call) and context.batch_size is None:
            for keyword in node.keywords:
                if keyword.arg == "batch_size":
                    context.batch_size = models.segment(keyword.value)
    return context


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
