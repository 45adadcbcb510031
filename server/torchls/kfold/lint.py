"""A lint for hand-written k-fold loops: the bugs that make cross-validation scores lie.

A fold loop is `for ... in splitter.split(...)` (or `enumerate(splitter.split(...))`) where the
splitter is one of scikit-learn's KFold family. Findings:
- the splitter does not shuffle (`shuffle=True`), or shuffles without a `random_state`;
- the model or the optimizer is built once, before the fold loop, and used inside it: every fold
  after the first starts from the weights (and the optimizer state) the previous fold trained;
- a validation loader inside the fold loop shuffles;
- a scaler or normaliser is fitted on the whole dataset before the split (the validation folds
  leak into it).
Two training-loop mistakes that are not k-fold's own are found anywhere: `optimizer.step()` with no
`zero_grad()`, and `loss.fct(...)` written for `loss_fct(...)` (a name read before it is bound,
where the underscored name exists).
Pure: no LSP types, no I/O.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field

from torchls.loadcheck.analysis import INFORMATION, WARNING, Finding
from torchls.loadcheck.fixes import Edit
from torchls.source.imports import dotted_name
from torchls.source.models import FileModels, _bound_names, _children, _scope_walk, walk
from torchls.source.text import Span, indentation, line_ending, with_line_ending

SPLITTERS = {
    "KFold", "StratifiedKFold", "GroupKFold", "RepeatedKFold", "RepeatedStratifiedKFold",
    "StratifiedGroupKFold",
}  # fmt: skip
_SCALER_METHODS = {"fit", "fit_transform"}
_VALIDATION_WORDS = ("val", "valid", "test", "eval")


@dataclass
class LintFinding:
    finding: Finding
    fixes: list[tuple[str, list[Edit]]] = field(default_factory=list)  # (title, edits)


def lint(models: FileModels) -> list[LintFinding]:
    tree = models.tree
    if tree is None:
        return []
    found: list[LintFinding] = []
    splitters: dict[str, ast.Call] = {}  # name -> the splitter construction
    for node in models.nodes(ast.Assign):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and _splitter_name(models, node.value)
        ):
            splitters[node.targets[0].id] = node.value
    for name, call in splitters.items():
        found += _splitter_findings(models, name, call)
    found += _missing_zero_grad(models, tree)
    found += _underscore_typos(models, tree)
    named = {id(call) for call in splitters.values()}
    for loop in models.nodes(ast.For):
        assert isinstance(loop, ast.For)
        splitter = _fold_loop_splitter(models, loop, splitters)
        if splitter is None:
            continue
        if id(splitter) not in named:  # `for ... in KFold(...).split(X)`
            named.add(id(splitter))
            found += _splitter_findings(models, "", splitter)
        found += _built_outside(models, loop)
        found += _shuffled_validation(models, loop)
        found += _scaler_before(models, loop)
    # Fixes that add lines end them as the file does (a CRLF or lone-CR file stays one).
    ending = line_ending(models.module.text)
    for item in found:
        item.fixes = [
            (title, [Edit(e.span, with_line_ending(e.text, ending)) for e in edits])
            for title, edits in item.fixes
        ]
    return found


def _splitter_name(models: FileModels, call: ast.Call) -> str | None:
    dotted = models.imports.resolve(call.func) or dotted_name(call.func) or ""
    short = dotted.rsplit(".", 1)[-1]
    if short in SPLITTERS and (dotted.startswith("sklearn.") or dotted == short):
        return short
    return None


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def _splitter_findings(models: FileModels, name: str, call: ast.Call) -> list[LintFinding]:
    kind = _splitter_name(models, call) or "KFold"
    if kind.startswith("Repeated"):
        return []  # repeated splitters always shuffle
    shuffle = _keyword(call, "shuffle")
    seed = _keyword(call, "random_state")
    span = models._span(call)
    end = _end_of_arguments(models, call)
    comma = ", " if call.args or call.keywords else ""
    shuffles = (
        shuffle is not None
        and isinstance(shuffle.value, ast.Constant)
        and shuffle.value.value is True
    )
    if shuffle is None:
        message = (
            f"{kind} without shuffle=True makes its folds from the data in file order: sorted or "
            "grouped data gives folds that differ from each other, and scores that mislead."
        )
        added = "shuffle=True" + ("" if seed else ", random_state=0")
        title = f"Shuffle the folds: {kind}(..., {added})"
        edit = Edit(end, comma + added)
        return [LintFinding(Finding(WARNING, "kfold-no-shuffle", message, span), [(title, [edit])])]
    if shuffles and seed is None:
        message = (
            f"{kind} shuffles without a random_state: the folds, and so the scores, change on "
            "every run."
        )
        fix = ("Fix the folds: random_state=0", [Edit(end, comma + "random_state=0")])
        return [LintFinding(Finding(INFORMATION, "kfold-no-seed", message, span), [fix])]
    return []


def _end_of_arguments(models: FileModels, call: ast.Call) -> Span:
    """Where a keyword argument goes: after the last argument, or inside empty parentheses."""
    arguments = [*call.args, *(k.value for k in call.keywords)]
    if arguments:
        span = models._span(arguments[-1])
        return Span(span.end_line, span.end_char, span.end_line, span.end_char)
    span = models._span(call)
    return Span(span.end_line, span.end_char - 1, span.end_line, span.end_char - 1)


def _fold_loop_splitter(
    models: FileModels, loop: ast.For, splitters: dict[str, ast.Call]
) -> ast.Call | None:
    iterable = loop.iter
    if (
        isinstance(iterable, ast.Call)
        and isinstance(iterable.func, ast.Name)
        and iterable.func.id == "enumerate"
        and iterable.args
    ):
        iterable = iterable.args[0]
    if not (
        isinstance(iterable, ast.Call)
        and isinstance(iterable.func, ast.Attribute)
        and iterable.func.attr == "split"
    ):
        return None
    owner = iterable.func.value
    if isinstance(owner, ast.Name) and owner.id in splitters:
        return splitters[owner.id]
    if isinstance(owner, ast.Call) and _splitter_name(models, owner):
        return owner
    return None


def _named_in(body: list[ast.stmt], name: str, context: type[ast.expr_context]) -> bool:
    """Whether the body stores (ast.Store) or reads (ast.Load) `name`."""
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, context)
        for statement in body
        for node in _scope_walk(statement)
    )


def _built_outside(models: FileModels, loop: ast.For) -> list[LintFinding]:
    """The model, optimizer or scheduler built before the fold loop and trained in it with no
    fresh start per fold. Not said when the fold loop starts the object afresh itself
    (`load_state_dict`, `reset_parameters`, `apply`, a `reset...`/`init...` helper), when the
    model before the loop is only a template (`copy.deepcopy(base)`) or is never trained in it
    (a frozen feature extractor): no `.parameters()` of it in the loop, no stale optimizer on it."""
    constructions = _constructions_before(models, loop)
    used = [
        s
        for s in constructions.values()
        if _named_in(loop.body, _target_name(s), ast.Load)
        and not _named_in(loop.body, _target_name(s), ast.Store)
        and not _refreshed_in(loop, _target_name(s))
    ]
    stale_optimizer = constructions.get("optimizer") in used
    stale: list[ast.Assign] = []
    for kind, statement in constructions.items():
        if statement not in used:
            continue
        name = _target_name(statement)
        if kind == "model":
            optimizer = constructions.get("optimizer")
            trained = _parameters_read_in(loop.body, name) or (
                stale_optimizer and optimizer is not None and _parameters_read_in([optimizer], name)
            )
            if not trained:
                continue
        stale.append(statement)
    if not stale:
        return []
    names = [_target_name(s) for s in stale]
    listed = " and ".join(f"`{n}`" for n in names)
    lines = ", ".join(str(s.lineno) for s in stale)
    message = (
        f"{listed} {'is' if len(names) == 1 else 'are'} built once, before the fold loop (line "
        f"{lines}): every fold after the first starts from the weights and optimizer state the "
        "previous fold trained, so the folds are not independent and the scores are too high."
    )
    edit = _insert_before(models, loop.body[0], [models.segment(s) for s in stale])
    title = f"Build {listed} anew at the start of each fold"
    return [
        LintFinding(
            Finding(WARNING, "kfold-shared-model", message, models._span(loop.target)),
            [(title, [edit])],
        )
    ]


def _insert_before(models: FileModels, statement: ast.stmt, code: list[str]) -> Edit:
    """Statements put right before `statement`: lines of its indentation when it starts its
    line, else on its line (`for b in data: loss.backward()`, `y = 0; loss.backward()`), where
    a new line would land outside its block or before the statements ahead of it."""
    line = models.lines.get(statement.lineno - 1)
    ahead = line.encode()[: statement.col_offset].decode(errors="ignore")
    if not ahead.strip(" \t\f"):
        indent = indentation(line)
        at = Span(statement.lineno - 1, 0, statement.lineno - 1, 0)
        return Edit(at, "".join(f"{indent}{c}\n" for c in code))
    span = models.lines.span(
        statement.lineno, statement.col_offset, statement.lineno, statement.col_offset
    )
    return Edit(span, "".join(f"{c}; " for c in code))


def _parameters_read_in(body: list[ast.stmt], name: str) -> bool:
    """`name.parameters()` somewhere in these statements."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"parameters", "named_parameters"}
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == name
        for statement in body
        for node in ast.walk(statement)
    )


_REFRESHING_METHODS = {"load_state_dict", "reset_parameters", "apply"}


def _refreshed_in(loop: ast.For, name: str) -> bool:
    """The loop starts `name` afresh, or hands it to something that may: `name.load_state_dict(
    ...)`, `reset(name)`, `init_weights(name)`, `copy.deepcopy(name)` (a template copied)."""
    for node in ast.walk(loop):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _REFRESHING_METHODS
            and isinstance(func.value, ast.Name)
            and func.value.id == name
        ):
            return True
        callee = (dotted_name(func) or "").rsplit(".", 1)[-1].lower()
        passed = any(isinstance(a, ast.Name) and a.id == name for a in node.args)
        if passed and ("reset" in callee or "init" in callee or "copy" in callee):
            return True
    return False


def _target_name(statement: ast.Assign) -> str:
    target = statement.targets[0]
    return target.id if isinstance(target, ast.Name) else ""


def _constructions_before(models: FileModels, loop: ast.For) -> dict[str, ast.Assign]:
    """The model's construction, then the optimizer's (and a scheduler's) before the loop."""
    parent = models.parents.get(loop)
    body = getattr(parent, "body", None)
    if not isinstance(body, list) or loop not in body:
        return {}
    found: dict[str, ast.Assign] = {}
    for statement in body[: body.index(loop)]:
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and isinstance(statement.value, ast.Call)
        ):
            continue
        call = statement.value
        dotted = models.imports.resolve(call.func) or dotted_name(call.func) or ""
        if models.construction_target(call) is not None:
            found["model"] = statement
        elif dotted.startswith("torch.optim.lr_scheduler."):
            found["scheduler"] = statement
        elif dotted.startswith("torch.optim."):
            found["optimizer"] = statement
    return {k: found[k] for k in ("model", "optimizer", "scheduler") if k in found}


def _validation_indices(loop: ast.For) -> str | None:
    """The name the fold loop gives the validation indices: `val_idx` in
    `for fold, (train_idx, val_idx) in enumerate(...)` or `for train_idx, val_idx in ...`."""
    target = loop.target
    if isinstance(target, ast.Tuple) and len(target.elts) == 2:
        pair = target.elts[1] if isinstance(target.elts[1], ast.Tuple) else target
        if (
            isinstance(pair, ast.Tuple)
            and len(pair.elts) == 2
            and isinstance(pair.elts[1], ast.Name)
        ):
            return pair.elts[1].id
    return None


def _used_for_validation(
    models: FileModels, loop: ast.For, name: str, call: ast.Call, indices: str | None
) -> bool:
    """A loader is a validation loader by what it is, whatever its name: built on the fold's
    validation indices, or handed to an evaluation (`evaluate(model, dev_loader)`)."""
    if any(word in name.lower() for word in _VALIDATION_WORDS):
        return True
    dataset = call.args[0] if call.args else _keyword_value(call, "dataset")
    if (
        indices
        and dataset is not None
        and any(isinstance(n, ast.Name) and n.id == indices for n in walk(dataset))
    ):
        return True
    for statement in loop.body:
        for node in _scope_walk(statement):
            if not isinstance(node, ast.Call):
                continue
            callee = (dotted_name(node.func) or "").rsplit(".", 1)[-1].lower()
            passed = [*node.args, *(k.value for k in node.keywords)]
            if any(word in callee for word in _VALIDATION_WORDS) and any(
                isinstance(arg, ast.Name) and arg.id == name for arg in passed
            ):
                return True
    return False


def _keyword_value(call: ast.Call, name: str) -> ast.expr | None:
    keyword = _keyword(call, name)
    return keyword.value if keyword is not None else None


def _shuffled_validation(models: FileModels, loop: ast.For) -> list[LintFinding]:
    found = []
    indices = _validation_indices(loop)
    for statement in loop.body:
        for node in _scope_walk(statement):
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            target = node.targets[0]
            call = node.value
            dotted = models.imports.resolve(call.func) or dotted_name(call.func) or ""
            if not dotted.endswith("DataLoader") or not isinstance(target, ast.Name):
                continue
            shuffle = _keyword(call, "shuffle")
            if shuffle is None or not _used_for_validation(models, loop, target.id, call, indices):
                continue
            if isinstance(shuffle.value, ast.Constant) and shuffle.value.value is True:
                message = (
                    f"`{target.id}` shuffles the validation data: the fold's score is the same, "
                    "but per-sample results cannot be matched to samples; use shuffle=False."
                )
                where = models._span(shuffle.value)
                found.append(
                    LintFinding(
                        Finding(INFORMATION, "kfold-shuffled-validation", message, where),
                        [("Validate in order: shuffle=False", [Edit(where, "False")])],
                    )
                )
    return found


_LABEL_ENCODERS = {"LabelEncoder", "LabelBinarizer", "MultiLabelBinarizer"}


def _scaler_before(models: FileModels, loop: ast.For) -> list[LintFinding]:
    """`scaler.fit(X)` / `X = StandardScaler().fit_transform(X)` before the loop that splits X.
    Not a label encoder (fitting it on every label leaks nothing a model learns from), and not a
    fit inside another loop before (most likely another per-fold loop)."""
    parent = models.parents.get(loop)
    body = getattr(parent, "body", None)
    if not isinstance(body, list) or loop not in body:
        return []
    found = []
    loops = (ast.For, ast.AsyncFor, ast.While)
    for statement in body[: body.index(loop)]:
        if isinstance(statement, loops):
            continue
        for node in _scope_walk(statement):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _SCALER_METHODS
            ):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name):
                scaler = _scaler_like(models, _construction_of(owner.id, body))
            elif isinstance(owner, ast.Call):
                scaler = _scaler_like(models, owner)
            else:
                continue
            if not scaler or any(isinstance(p, loops) for p in _ancestors(models, node, parent)):
                continue
            message = (
                f"`{models.segment(owner)}.{node.func.attr}` sees the whole dataset before the "
                "split, so every validation fold has leaked into it; fit it on each fold's "
                "training part inside the loop."
            )
            found.append(LintFinding(Finding(WARNING, "kfold-leak", message, models._span(node))))
    return found


def _ancestors(models: FileModels, node: ast.AST, stop: ast.AST | None) -> list[ast.AST]:
    """The nodes around `node`, up to (not including) `stop`."""
    found = []
    current = models.parents.get(node)
    while current is not None and current is not stop:
        found.append(current)
        current = models.parents.get(current)
    return found


def _construction_of(name: str, body: list[ast.stmt]) -> ast.Call | None:
    for statement in body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id == name
            and isinstance(statement.value, ast.Call)
        ):
            return statement.value
    return None


def _scaler_like(models: FileModels, call: ast.Call | None) -> bool:
    if call is None:
        return False
    dotted = models.imports.resolve(call.func) or ""
    if dotted.rsplit(".", 1)[-1] in _LABEL_ENCODERS:
        return False
    return dotted.startswith("sklearn.preprocessing.") or dotted.startswith(
        "sklearn.decomposition."
    )


def _missing_zero_grad(models: FileModels, tree: ast.Module) -> list[LintFinding]:
    """A batch loop that calls `optimizer.step()` and `.backward()` but never clears the
    gradients in that loop: they add up across batches (and folds). Gradients count as cleared
    by `zero_grad()`, `.zero_()`, `p.grad = None`, a step with a closure, or a call to a helper
    of this file that does any of these."""
    optimizers = {
        statement.targets[0].id
        for statement in models.nodes(ast.Assign)
        if isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
        and isinstance(statement.value, ast.Call)
        and (models.imports.resolve(statement.value.func) or "").startswith("torch.optim.")
        and not (models.imports.resolve(statement.value.func) or "").startswith(
            "torch.optim.lr_scheduler."
        )
    }
    # Optimizers passed in: parameters named like one.
    optimizers |= {
        argument.arg
        for node in models.nodes(ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for argument in ast.walk(node.args)
        if isinstance(argument, ast.arg)
        and (argument.arg in {"opt", "optim"} or argument.arg.startswith("optimizer"))
    }
    clearing = {
        node.name
        for node in models.nodes(ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _clears_gradients(node)
    }
    found = []
    for loop in models.nodes(ast.For, ast.While):
        assert isinstance(loop, (ast.For, ast.While))
        calls = {
            (node.func.value.id if isinstance(node.func.value, ast.Name) else "", node.func.attr)
            for statement in loop.body
            for node in _own_nodes(statement)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        stepped = sorted(name for name, attr in calls if attr == "step" and name in optimizers)
        if not stepped or not any(attr == "backward" for _, attr in calls):
            continue
        if _clears_gradients(loop) or _calls_any(loop, clearing):
            continue
        backward = _backward_statement(loop)
        name = stepped[0]
        message = (
            f"`{name}.step()` runs without `{name}.zero_grad()`: each batch's gradients are added "
            "to the ones before, so every step after the first uses the wrong gradient."
        )
        fixes = []
        if backward is not None:
            edit = _insert_before(models, backward, [f"{name}.zero_grad()"])
            fixes.append((f"Clear the gradients first: {name}.zero_grad()", [edit]))
        where = models._span(loop.target if isinstance(loop, ast.For) else loop.test)
        found.append(LintFinding(Finding(WARNING, "no-zero-grad", message, where), fixes))
    return found


def _clears_gradients(node: ast.AST) -> bool:
    for inner in walk(node):
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and (
                inner.func.attr in {"zero_grad", "zero_"}
                or (inner.func.attr == "step" and (inner.args or inner.keywords))
            )
        ):
            return True
        targets = inner.targets if isinstance(inner, ast.Assign) else []
        if isinstance(inner, (ast.AnnAssign, ast.AugAssign)):
            targets = [inner.target]
        if isinstance(inner, ast.Delete):
            targets = inner.targets
        if any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in targets):
            return True
    return False


def _calls_any(node: ast.AST, names: set[str]) -> bool:
    """Whether `node` calls a function named one of `names` (`f()`, `self.f()`)."""
    for inner in walk(node):
        if isinstance(inner, ast.Call):
            func = inner.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in names:
                return True
    return False


def _own_nodes(statement: ast.stmt) -> list[ast.AST]:
    """The nodes of a statement of a loop's body, not entering loops (or functions) nested in
    it: the batch loop inside an epoch loop is checked on its own."""
    nested = (ast.For, ast.While, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    if isinstance(statement, nested):
        return [statement]
    found: list[ast.AST] = []
    stack: list[ast.AST] = [statement]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(c for c in _children(current) if not isinstance(c, nested))
    return found


def _backward_statement(loop: ast.For | ast.While) -> ast.stmt | None:
    """The statement of the loop's body that calls `.backward()`."""
    for statement in loop.body:
        for node in _own_nodes(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "backward"
            ):
                return statement
    return None


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# Calls through which a file can bind names torchls cannot see.
_DYNAMIC = {"globals", "locals", "vars", "exec", "eval"}
# The node types _binder_names finds names in (besides ast.Name and ast.arg).
_BINDING_KINDS = {
    "alias", "ExceptHandler", "FunctionDef", "AsyncFunctionDef", "ClassDef", "MatchAs",
    "MatchStar", "MatchMapping", "TypeVar", "ParamSpec", "TypeVarTuple",
}  # fmt: skip


def _underscore_typos(models: FileModels, tree: ast.Module) -> list[LintFinding]:
    """`loss = loss.fct(out, y)` where `loss_fct = nn.CrossEntropyLoss()` was meant. Strictly
    conservative: said only where the read must fail, that is where nothing in the scopes the
    read can see binds the name except the very assignment the read is part of (so the first
    time it runs, the name is unbound), and the underscored name is bound there."""
    if any(isinstance(n, ast.alias) and n.name == "*" for n in models.nodes(ast.alias)):
        return []  # a star import may bind anything
    if models.nodes(ast.Global) or models.nodes(ast.Nonlocal):
        return []
    names = models.nodes(ast.Name)
    if any(isinstance(n, ast.Name) and n.id in _DYNAMIC for n in names):
        return []
    # Every name bound anywhere (a superset of what any one scope binds): most reads of
    # `x.attr` have no `x_attr` in the file at all, and need no scope analysis.
    bound_anywhere = {n.id for n in names if isinstance(n, ast.Name) and not _is_load(n)}
    bound_anywhere |= {a.arg for a in models.nodes(ast.arg) if isinstance(a, ast.arg)}
    for kind, nodes in models.by_type.items():
        if kind is not ast.Name and kind.__name__ in _BINDING_KINDS:
            bound_anywhere.update(name for node in nodes for name in _binder_names(node))
    found = []
    bindings: dict[int, dict[str, list[ast.AST]]] = {}  # per scope, each name's binding nodes
    for node in models.nodes(ast.Attribute):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and isinstance(node.ctx, ast.Load)
        ):
            continue
        name, meant = node.value.id, f"{node.value.id}_{node.attr}"
        if meant not in bound_anywhere or hasattr(builtins, name) or name.startswith("__"):
            continue
        chain = _scope_chain(models, node)
        binders: list[ast.AST] = []
        meant_line = None
        for scope in chain:
            table = bindings.get(id(scope))
            if table is None:
                table = bindings[id(scope)] = _scope_bindings(scope)
            binders += table.get(name, [])
            if meant_line is None and table.get(meant):
                meant_line = min(getattr(b, "lineno", 0) for b in table[meant])
        if meant_line is None or not _bound_only_by_its_own_assignment(models, node, binders):
            continue
        span = models._span(node)
        message = (
            f"`{name}.{node.attr}` reads `{name}` before anything assigns it (a NameError "
            f"here); `{meant}` (line {meant_line}) was probably meant."
        )
        fix = (f"Use `{meant}`", [Edit(span, meant)])
        found.append(LintFinding(Finding(WARNING, "underscore-typo", message, span), [fix]))
    return found


def _is_load(node: ast.Name) -> bool:
    return isinstance(node.ctx, ast.Load)


def _scope_chain(models: FileModels, node: ast.AST) -> list[ast.AST]:
    """The scopes a read can see, innermost first: functions, lambdas and classes around it,
    then the module. (Comprehensions count as part of the scope around them: their bindings
    then count for more reads than they reach, which only makes the lint say less.)"""
    chain: list[ast.AST] = []
    current = models.parents.get(node)
    while current is not None:
        if isinstance(current, (*_SCOPES, ast.Module)):
            chain.append(current)
        current = models.parents.get(current)
    return chain


def _scope_bindings(scope: ast.AST) -> dict[str, list[ast.AST]]:
    """Every node that binds a name in this scope (parameters, targets of any kind, imports,
    defs, except and match captures, comprehension targets), not entering nested scopes."""
    table: dict[str, list[ast.AST]] = {}
    roots: list[ast.AST] = []
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for argument in ast.walk(scope.args):
            if isinstance(argument, ast.arg):
                table.setdefault(argument.arg, []).append(argument)
        roots = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    elif isinstance(scope, (ast.ClassDef, ast.Module)):
        roots = list(scope.body)
    stack = roots
    while stack:
        current = stack.pop()
        for name in _binder_names(current):
            table.setdefault(name, []).append(current)
        if isinstance(current, _SCOPES):
            continue  # its name is bound here; its insides are its own scope
        stack.extend(ast.iter_child_nodes(current))
    return table


def _binder_names(node: ast.AST) -> list[str]:
    names = list(_bound_names(node))
    if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
        names.append(node.name)
    if isinstance(node, ast.MatchMapping) and node.rest:
        names.append(node.rest)
    if isinstance(node, ast.Lambda):
        return []
    type_name = getattr(node, "name", None)  # type parameters (3.12)
    if type(node).__name__ in {"TypeVar", "ParamSpec", "TypeVarTuple"} and type_name:
        names.append(type_name)
    return names


def _bound_only_by_its_own_assignment(
    models: FileModels, read: ast.AST, binders: list[ast.AST]
) -> bool:
    """Whether every binding of the name is a plain target of the one `name = ...` statement
    whose value contains the read, evaluated there and then (not in a lambda), and not under a
    `try` that could catch the NameError."""
    if not binders:
        return False  # unbound anywhere: a runtime name (builtins, injected), not this typo
    statement = models.parents.get(binders[0])
    targets = (
        statement.targets
        if isinstance(statement, ast.Assign)
        else [statement.target]
        if isinstance(statement, ast.AnnAssign)
        else []
    )
    if not (
        isinstance(statement, (ast.Assign, ast.AnnAssign))
        and statement.value is not None
        and all(models.parents.get(b) is statement for b in binders)
        and all(isinstance(b, ast.Name) and any(b is t for t in targets) for b in binders)
    ):
        return False
    node = models.parents.get(read)
    while node is not None and node is not statement:
        if isinstance(node, _SCOPES):
            return False
        node = models.parents.get(node)
    if node is None:
        return False  # the read is not in that statement
    while node is not None:
        if isinstance(node, ast.Try) and node.handlers:
            return False
        node = models.parents.get(node)
    return True
