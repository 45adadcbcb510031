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

from dataclasses import dataclass

from torchls.kfold.context import TrainingContext

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
    """Code the user selected, to run once per fold: its lines relative to its block, the
    training loader it iterates, and the names it trains with."""

    lines: list[str]
    loader: str = "train_loader"
    unit: str = "    "  # one indentation level, as the file writes it


def render(
    kind: str, context: TrainingContext, indent: str = "", wrapped: Wrapped | None = None
) -> Inserted:
    splitter = SPLITTERS[kind]
    lines: list[str] = []
    add = lines.append
    unit = wrapped.unit if wrapped else "    "

    dataset = context.dataset.name if context.dataset else None
    labels = context.labels
    how = "wrapped" if wrapped else "inserted"
    add(f"# k-fold cross-validation ({how} by torchls): a fresh model and optimizer per fold")
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
    if wrapped is None:
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
    loader = wrapped.loader if wrapped else "train_loader"
    put(
        f"{loader} = DataLoader(Subset({dataset}, train_idx.tolist()), "
        "batch_size=BATCH_SIZE, shuffle=True)"
    )
    put(
        f"val_loader = DataLoader(Subset({dataset}, val_idx.tolist()), "
        "batch_size=BATCH_SIZE, shuffle=False)"
    )
    model = context.model.name if wrapped and context.model else "model"
    optimizer = context.optimizer.name if wrapped and context.optimizer else "optimizer"
    model_call = context.model.call if context.model else "torch.nn.LazyLinear(2)"
    note = "" if context.model else "  # torchls: your model"
    put(f"{model} = {model_call}{note}")
    if context.optimizer:
        put(
            f"{optimizer} = {_callee(context.optimizer.call)}({model}.parameters()"
            f"{context.optimizer.arguments})"
        )
    else:
        put(f"{optimizer} = torch.optim.Adam({model}.parameters(), lr=1e-3)")
    if context.scheduler:
        name = context.scheduler.name if wrapped else "scheduler"
        put(f"{name} = {_callee(context.scheduler.call)}({optimizer}{context.scheduler.arguments})")
    loss_fn = context.loss.name if wrapped and context.loss else "loss_fn"
    if not (wrapped and context.loss):
        loss = context.loss.call if context.loss else "torch.nn.CrossEntropyLoss()"
        put(f"{loss_fn} = {loss}")
    if wrapped:
        body += wrapped.lines
    else:
        put("for epoch in range(EPOCHS):")
        put("    model.train()")
        put("    for inputs, targets in train_loader:")
        put("        optimizer.zero_grad()")
        put("        loss = loss_fn(model(inputs), targets)")
        put("        loss.backward()")
        put("        optimizer.step()")
        if context.scheduler:
            put("    scheduler.step()")
    put(f"{model}.eval()")
    put("val_loss, correct, seen = 0.0, 0, 0")
    put("with torch.no_grad():")
    put("    for inputs, targets in val_loader:")
    put(f"        outputs = {model}(inputs)")
    put(f"        val_loss += {loss_fn}(outputs, targets).item() * len(targets)")
    classification = context.classification or context.loss is None
    if classification:
        put("        correct += (outputs.argmax(dim=1) == targets).sum().item()")
    put("        seen += len(targets)")
    if classification:
        put("score = correct / seen  # accuracy")
    else:
        put("score = val_loss / seen  # validation loss")
    put("fold_scores.append(score)")
    put('print(f"fold {fold}: validation loss {val_loss / seen:.4f}, score {score:.4f}")')
    put(f'torch.save({model}.state_dict(), f"model_fold{{fold}}.pt")')
    lines += [(unit + line) if line.strip() else line for line in body]
    add("scores = torch.tensor(fold_scores)")
    add('print(f"{N_SPLITS}-fold cross-validation: {scores.mean():.4f} +- {scores.std():.4f}")')
    code = "".join(f"{indent}{line}\n" if line.strip() else "\n" for line in lines)
    return Inserted(code, _missing_imports(kind, context))


def _callee(call: str) -> str:
    return call.split("(", 1)[0]


def _missing_imports(kind: str, context: TrainingContext) -> list[str]:
    """`import torch` and `from module import a, b` lines for the names the loop uses that the
    file does not bind to the same thing already, one line per module."""
    wanted = [f"sklearn.model_selection.{SPLITTERS[kind]}", "torch.utils.data.DataLoader"]
    wanted.append("torch.utils.data.Subset")
    if context.dataset is None:
        wanted.append("torch.utils.data.TensorDataset")
    bound = context.imports.names
    lines = [] if bound.get("torch") == "torch" else ["import torch"]
    by_module: dict[str, list[str]] = {}
    for dotted in wanted:
        module, name = dotted.rsplit(".", 1)
        if bound.get(name) != dotted:
            by_module.setdefault(module, []).append(name)
    lines += [f"from {module} import {', '.join(names)}" for module, names in by_module.items()]
    return lines
