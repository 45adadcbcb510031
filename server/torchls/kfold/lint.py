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
from torchls.source.models import FileModels, _bound_names, _scope_walk
from torchls.source.text import Span

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
    for node in ast.walk(tree):
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
    for loop in [n for n in ast.walk(tree) if isinstance(n, ast.For)]:
        splitter = _fold_loop_splitter(models, loop, splitters)
        if splitter is None:
            continue
        found += _built_outside(models, loop)
        found += _shuffled_validation(models, loop)
        found += _scaler_before(models, loop)
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
        added = ", shuffle=True" + ("" if seed else ", random_state=0")
        title = f"Shuffle the folds: {kind}(...{added})"
        return [
            LintFinding(
                Finding(WARNING, "kfold-no-shuffle", message, span), [(title, [Edit(end, added)])]
            )
        ]
    if shuffles and seed is None:
        message = (
            f"{kind} shuffles without a random_state: the folds, and so the scores, change on "
            "every run."
        )
        fix = ("Fix the folds: random_state=0", [Edit(end, ", random_state=0")])
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
    stale: list[ast.Assign] = []
    for statement in _constructions_before(models, loop):
        name = _target_name(statement)
        if _named_in(loop.body, name, ast.Load) and not _named_in(loop.body, name, ast.Store):
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
    first = loop.body[0]
    line = models.lines.get(first.lineno - 1)
    indent = line[: len(line) - len(line.lstrip())]
    text = "".join(f"{indent}{models.segment(s)}\n" for s in stale)
    at = Span(first.lineno - 1, 0, first.lineno - 1, 0)
    title = f"Build {listed} anew at the start of each fold"
    return [
        LintFinding(
            Finding(WARNING, "kfold-shared-model", message, models._span(loop.target)),
            [(title, [Edit(at, text)])],
        )
    ]


def _target_name(statement: ast.Assign) -> str:
    target = statement.targets[0]
    return target.id if isinstance(target, ast.Name) else ""


def _constructions_before(models: FileModels, loop: ast.For) -> list[ast.Assign]:
    """The model's construction, then the optimizer's (and a scheduler's) before the loop."""
    parent = models.parents.get(loop)
    body = getattr(parent, "body", None)
    if not isinstance(body, list) or loop not in body:
        return []
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
    return [found[k] for k in ("model", "optimizer", "scheduler") if k in found]


def _shuffled_validation(models: FileModels, loop: ast.For) -> list[LintFinding]:
    found = []
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
            validation = any(word in target.id.lower() for word in _VALIDATION_WORDS)
            if not validation or shuffle is None:
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


def _scaler_before(models: FileModels, loop: ast.For) -> list[LintFinding]:
    """`scaler.fit(X)` / `X = scaler.fit_transform(X)` before the loop that splits X."""
    parent = models.parents.get(loop)
    body = getattr(parent, "body", None)
    if not isinstance(body, list) or loop not in body:
        return []
    found = []
    for statement in body[: body.index(loop)]:
        for node in _scope_walk(statement):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _SCALER_METHODS
                and isinstance(node.func.value, ast.Name)
                and _scaler_like(models, node.func.value.id, body)
            ):
                message = (
                    f"`{node.func.value.id}.{node.func.attr}` sees the whole dataset before the "
                    "split, so every validation fold has leaked into it; fit it on each fold's "
                    "training part inside the loop."
                )
                found.append(
                    LintFinding(Finding(WARNING, "kfold-leak", message, models._span(node)))
                )
    return found


def _scaler_like(models: FileModels, name: str, body: list[ast.stmt]) -> bool:
    for statement in body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and statement.targets[0].id == name
            and isinstance(statement.value, ast.Call)
        ):
            dotted = models.imports.resolve(statement.value.func) or ""
            return dotted.startswith("sklearn.preprocessing.") or dotted.startswith(
                "sklearn.decomposition."
            )
    return False


def _missing_zero_grad(models: FileModels, tree: ast.Module) -> list[LintFinding]:
    """A batch loop that calls `optimizer.step()` and `.backward()` but never `zero_grad()`:
    gradients add up across batches (and folds)."""
    optimizers = {
        statement.targets[0].id
        for statement in ast.walk(tree)
        if isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
        and isinstance(statement.value, ast.Call)
        and (models.imports.resolve(statement.value.func) or "").startswith("torch.optim.")
        and not (models.imports.resolve(statement.value.func) or "").startswith(
            "torch.optim.lr_scheduler."
        )
    }
    found = []
    for loop in [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))]:
        calls = {
            (node.func.value.id if isinstance(node.func.value, ast.Name) else "", node.func.attr)
            for statement in loop.body
            for node in _own_nodes(statement)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        stepped = sorted(name for name, attr in calls if attr == "step" and name in optimizers)
        if not stepped or not any(attr == "backward" for _, attr in calls):
            continue
        if _zero_grad_around(models, loop):
            continue
        backward = _backward_statement(loop)
        name = stepped[0]
        message = (
            f"`{name}.step()` runs without `{name}.zero_grad()`: each batch's gradients are added "
            "to the ones before, so every step after the first uses the wrong gradient."
        )
        fixes = []
        if backward is not None:
            line = models.lines.get(backward.lineno - 1)
            indent = line[: len(line) - len(line.lstrip())]
            at = Span(backward.lineno - 1, 0, backward.lineno - 1, 0)
            edit = Edit(at, f"{indent}{name}.zero_grad()\n")
            fixes.append((f"Clear the gradients first: {name}.zero_grad()", [edit]))
        where = models._span(loop.target if isinstance(loop, ast.For) else loop.test)
        found.append(LintFinding(Finding(WARNING, "no-zero-grad", message, where), fixes))
    return found


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
        stack.extend(c for c in ast.iter_child_nodes(current) if not isinstance(c, nested))
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


def _zero_grad_around(models: FileModels, loop: ast.AST) -> bool:
    """zero_grad anywhere in the loop, or in a loop around it, or in the function around it."""
    node: ast.AST | None = loop
    while node is not None:
        if isinstance(node, (ast.For, ast.While, ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Attribute)
                    and inner.func.attr in {"zero_grad", "zero_"}
                ):
                    return True
        node = models.parents.get(node)
    return False


def _underscore_typos(models: FileModels, tree: ast.Module) -> list[LintFinding]:
    """`loss = loss.fct(out, y)` where `loss_fct = nn.CrossEntropyLoss()` was meant: `loss` is read
    before anything binds it (a NameError on the first pass), and `loss_fct` is bound in scope.
    Only reads that are certain to fail are reported, so a real attribute is never flagged."""
    if any(isinstance(n, ast.alias) and n.name == "*" for n in ast.walk(tree)):
        return []  # a star import may bind anything
    found = []
    module_bound = _first_bindings(tree.body)
    scopes: list[tuple[ast.AST, list[ast.stmt]]] = [(tree, tree.body)]
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    scopes += [(n, n.body) for n in ast.walk(tree) if isinstance(n, functions)]
    for scope, body in scopes:
        own = _first_bindings(body)
        visible = dict(module_bound)
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = scope.args
            for argument in [
                *arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                arguments.vararg, arguments.kwarg,
            ]:  # fmt: skip
                if argument is not None:
                    own.setdefault(argument.arg, 0)
            visible.update(_enclosing_bindings(models, scope))
            visible.update(own)
        for statement in body:
            for node in _scope_walk(statement):
                if not (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and isinstance(node.ctx, ast.Load)
                ):
                    continue
                name, meant = node.value.id, f"{node.value.id}_{node.attr}"
                if meant not in visible or hasattr(builtins, name):
                    continue
                first = own.get(name) if name in own else visible.get(name)
                if first is not None and first < node.lineno:
                    continue  # bound before: the attribute may well exist
                if scope is not tree and name not in own and name in module_bound:
                    continue  # a module-level name read from a function: bound by the call
                span = models._span(node)
                message = (
                    f"`{name}.{node.attr}` reads `{name}` before anything assigns it (a NameError "
                    f"here); `{meant}` (line {visible[meant]}) was probably meant."
                )
                fix = (f"Use `{meant}`", [Edit(span, meant)])
                found.append(LintFinding(Finding(WARNING, "underscore-typo", message, span), [fix]))
    return found


def _first_bindings(body: list[ast.stmt]) -> dict[str, int]:
    """Each name a scope binds, with the line of its first binding."""
    first: dict[str, int] = {}
    for statement in body:
        for node in _scope_walk(statement):
            for name in _bound_names(node):
                line = getattr(node, "lineno", statement.lineno)
                if name not in first or line < first[name]:
                    first[name] = line
    return first


def _enclosing_bindings(models: FileModels, function: ast.AST) -> dict[str, int]:
    """Names bound by the functions around a nested function (their parameters too): visible in
    it from the moment it is called, so they count as bound before any line of it."""
    bound: dict[str, int] = {}
    node = models.parents.get(function)
    while node is not None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for name in _first_bindings(node.body):
                bound.setdefault(name, 0)
            for argument in ast.walk(node.args):
                if isinstance(argument, ast.arg):
                    bound.setdefault(argument.arg, 0)
        node = models.parents.get(node)
    return bound
