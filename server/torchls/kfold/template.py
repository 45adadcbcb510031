"""The k-fold cross-validation loop torchls inserts, fitted to what the file names.

What every generated loop does right (the bugs hand-written loops repeat):
- the splitter has `n_splits`, `shuffle=True` and a `random_state`;
- each fold builds a fresh model and optimizer (and scheduler), so no fold starts from weights
  another fold trained;
- `optimizer.zero_grad()` before each backward pass;
- `model.train()` for training, `model.eval()` and `torch.no_grad()` for validation;
- the training loader is shuffled, the validation loader is not;
- the fold index is in the checkpoint path;
- each fold's score is kept and the scores are printed as mean +- std.

Where the file does not name something, a placeholder that is still valid Python stands in, with
a `# torchls:` comment saying what to put there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchls.kfold.context import TrainingContext
from torchls.kfold.wrapping import WrapPlan

SPLITTERS = {
    "stratified": "StratifiedKFold",
    "kfold": "KFold",
    "group": "GroupKFold",
}


@dataclass(frozen=True)
class Inserted:
    code: str  # the loop, indented for where it goes, ending with a newline
    imports: list[str]  # import lines the file lacks


@dataclass(frozen=True)
class Wrapped:
    """Code the user selected, to run once per fold: its lines relative to its block, and what
    it trains with (see wrapping.py)."""

    lines: list[str]
    plan: WrapPlan
    unit: str = "    "  # one indentation level, as the file writes it
    imports: dict[str, str] = field(default_factory=dict)  # the file's top-level imports


_PLACEHOLDER_MODEL = (
    "torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear({outputs}))"
    "  # torchls: PLACEHOLDER, put your model here"
)


def render(
    kind: str, context: TrainingContext, indent: str = "", wrapped: Wrapped | None = None
) -> Inserted:
    if wrapped is not None:
        return _render_wrapped(kind, wrapped, indent)
    splitter = SPLITTERS[kind]
    lines: list[str] = []
    add = lines.append

    dataset = context.dataset.name if context.dataset else None
    dataset_placeholder = dataset is None
    labels = context.labels
    add("# k-fold cross-validation (inserted by torchls): a fresh model and optimizer per fold")
    if context.dataset is not None and context.dataset.inline:
        add(f"{dataset} = {context.dataset.call}  # the dataset your DataLoader is built on")
    if dataset is None:
        add(
            "dataset = TensorDataset(torch.randn(100, 8), torch.randint(0, 2, (100,)))"
            "  # torchls: your dataset"
        )
        dataset = "dataset"
        labels = labels or "dataset.tensors[1]"
    if labels is None:
        add(f"labels = torch.tensor([int({dataset}[i][1]) for i in range(len({dataset}))])")
        labels = "labels"
    add("N_SPLITS = 5")
    add(f"EPOCHS = {context.epochs or '10'}")
    add(f"BATCH_SIZE = {context.batch_size or '32'}")
    add(f"fold_labels = torch.as_tensor({labels}).cpu().numpy()")
    add(f"splitter = {splitter}(n_splits=N_SPLITS, shuffle=True, random_state=0)")
    if kind == "group":
        add(f"groups = torch.arange(len({dataset})).numpy()  # torchls: one group id per sample")
        split = "splitter.split(fold_labels, fold_labels, groups)"
    else:
        split = "splitter.split(fold_labels, fold_labels)"
    add("fold_scores = []")
    add(f"for fold, (train_idx, val_idx) in enumerate({split}):")
    body: list[str] = []
    put = body.append
    put(
        f"train_loader = DataLoader(Subset({dataset}, train_idx.tolist()), "
        "batch_size=BATCH_SIZE, shuffle=True)"
    )
    put(
        f"val_loader = DataLoader(Subset({dataset}, val_idx.tolist()), "
        "batch_size=BATCH_SIZE, shuffle=False)"
    )
    multiclass = context.multiclass or context.loss is None
    if context.model:
        put(f"model = {context.model.call}")
    else:
        outputs = "int(fold_labels.max()) + 1" if multiclass else "1"
        put("model = " + _PLACEHOLDER_MODEL.format(outputs=outputs))
    if context.optimizer:
        put(
            f"optimizer = {_callee(context.optimizer.call)}(model.parameters()"
            f"{context.optimizer.arguments})"
        )
    else:
        put("optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)")
    plateau = False
    if context.scheduler:
        plateau = context.scheduler.callee.endswith("ReduceLROnPlateau")
        put(
            f"scheduler = {_callee(context.scheduler.call)}(optimizer{context.scheduler.arguments})"
        )
    if context.loss and context.loss.functional:
        put(f"loss_fn = {context.loss.call}")
    else:
        put(f"loss_fn = {context.loss.call if context.loss else 'torch.nn.CrossEntropyLoss()'}")
    put("for epoch in range(EPOCHS):")
    put("    model.train()")
    put("    for inputs, targets in train_loader:")
    put("        optimizer.zero_grad()")
    put("        loss = loss_fn(model(inputs), targets)")
    put("        loss.backward()")
    put("        optimizer.step()")
    if context.scheduler:
        # ReduceLROnPlateau steps on a metric: the epoch's last training loss.
        put("    scheduler.step(loss.item())" if plateau else "    scheduler.step()")
    body += _validation("model", "loss_fn", multiclass)
    lines += [("    " + line) if line.strip() else line for line in body]
    lines += _summary()
    code = "".join(f"{indent}{line}\n" if line.strip() else "\n" for line in lines)
    return Inserted(
        code, _missing_imports(kind, context.top_level, dataset_placeholder=dataset_placeholder)
    )


def _render_wrapped(kind: str, wrapped: Wrapped, indent: str) -> Inserted:
    plan = wrapped.plan
    splitter = SPLITTERS[kind]
    lines: list[str] = []
    add = lines.append
    add("# k-fold cross-validation (wrapped by torchls): a fresh model and optimizer per fold")
    add("N_SPLITS = 5")
    lines += plan.prelude
    if plan.stratify:
        labels = plan.labels or (f"[int({plan.dataset}[i][1]) for i in range(len({plan.dataset}))]")
        add(f"fold_labels = torch.as_tensor({labels}).cpu().numpy()")
        split = "splitter.split(fold_labels, fold_labels)"
    else:
        split = f"splitter.split(torch.arange(len({plan.dataset})).numpy())"
    add(f"splitter = {splitter}(n_splits=N_SPLITS, shuffle=True, random_state=0)")
    add("fold_scores = []")
    add(f"for fold, (train_idx, val_idx) in enumerate({split}):")
    body = [f"{plan.loader} = {plan.train_loader}", f"val_loader = {plan.val_loader}"]
    body += plan.rebuild
    body += wrapped.lines
    body += _validation(plan.model, plan.loss, plan.multiclass)
    unit = wrapped.unit
    lines += [(unit + line) if line.strip() else line for line in body]
    lines += _summary()
    code = "".join(f"{indent}{line}\n" if line.strip() else "\n" for line in lines)
    return Inserted(code, _missing_imports(kind, wrapped.imports, loader=False))


def _validation(model: str, loss_fn: str, multiclass: bool) -> list[str]:
    body = [f"{model}.eval()", "val_loss, correct, seen = 0.0, 0, 0", "with torch.no_grad():"]
    body += [
        "    for inputs, targets in val_loader:",
        f"        outputs = {model}(inputs)",
        f"        val_loss += {loss_fn}(outputs, targets).item() * len(targets)",
    ]
    if multiclass:
        body.append("        correct += (outputs.argmax(dim=1) == targets).sum().item()")
    body.append("        seen += len(targets)")
    if multiclass:
        body.append("score = correct / seen  # accuracy")
    else:
        body.append("score = val_loss / seen  # validation loss")
    body += [
        "fold_scores.append(score)",
        'print(f"fold {fold}: validation loss {val_loss / seen:.4f}, score {score:.4f}")',
        f'torch.save({model}.state_dict(), f"model_fold{{fold}}.pt")',
    ]
    return body


def _summary() -> list[str]:
    return [
        "scores = torch.tensor(fold_scores)",
        'print(f"{N_SPLITS}-fold cross-validation: {scores.mean():.4f} +- {scores.std():.4f}")',
    ]


def _callee(call: str) -> str:
    return call.split("(", 1)[0]


def _missing_imports(
    kind: str, bound: dict[str, str], dataset_placeholder: bool = False, loader: bool = True
) -> list[str]:
    """`import torch` and `from module import a, b` lines for the names the loop uses that the
    file does not bind to the same thing already, one line per module."""
    wanted = [f"sklearn.model_selection.{SPLITTERS[kind]}"]
    if loader:
        wanted.append("torch.utils.data.DataLoader")
    wanted.append("torch.utils.data.Subset")
    if dataset_placeholder:
        wanted.append("torch.utils.data.TensorDataset")
    lines = [] if bound.get("torch") == "torch" else ["import torch"]
    by_module: dict[str, list[str]] = {}
    for dotted in wanted:
        module, name = dotted.rsplit(".", 1)
        if bound.get(name) != dotted:
            by_module.setdefault(module, []).append(name)
    lines += [f"from {module} import {', '.join(names)}" for module, names in by_module.items()]
    return lines
