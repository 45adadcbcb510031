"""The values a name may hold where it is used, following the branch the use is in.

The import model's bindings (models._binding) are certain in straight-line code only: a name
assigned under an `if` is unknown everywhere. Real scripts choose what they load under
`if init_from == 'resume':` and load it in that same branch, where the branch's own
assignments are as certain as straight-line ones. Here a scope is run in order: a branch that
holds the use is entered alone (its siblings never run with it), a branch that does not is
run both ways and the outcomes are joined, and anything else that may bind the name (a loop,
`try`, `+=`, unpacking, an import) makes it unknown.

Along the way the plain edits of a dict are kept (`args["vocab"] = 50`, and the key-copying
loop `for k in ["a", "b"]: args[k] = saved[k]`), so a caller can see the dict a constructor
receives; any other change to it (a method call, passing it to a function) loses them.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable
from dataclasses import dataclass

from torchls.source.models import FileModels, _bound_names, _function_scope, _scope_walk

_MAX_VALUES = 8
_DICT_MUTATORS = {"pop", "popitem", "update", "clear", "setdefault", "__setitem__", "__delitem__"}
_READERS = {"print", "len", "str", "repr", "isinstance", "type", "id", "list", "sorted", "dict"}
_LOOPS = (ast.For, ast.AsyncFor, ast.While)


@dataclass(frozen=True)
class Binding:
    value: ast.expr  # the assigned expression
    # `name[key] = value` after the assignment, in order; None when the dict is changed in a
    # way torchls does not follow.
    edits: tuple[tuple[str, ast.expr], ...] | None = ()

    def same(self, other: Binding) -> bool:
        if self.value is not other.value or (self.edits is None) != (other.edits is None):
            return False
        mine, theirs = self.edits or (), other.edits or ()
        return len(mine) == len(theirs) and all(
            a[0] == b[0] and a[1] is b[1] for a, b in zip(mine, theirs, strict=True)
        )


State = list[Binding] | None  # None: unknown; []: not bound yet
Contains = Callable[[ast.AST], bool]


def values_at(models: FileModels, name: str, at: ast.AST) -> State:
    """The bindings of `name` that may reach node `at` (None: unknown, or not bound here)."""
    chain: set[int] = set()
    node: ast.AST | None = at
    while node is not None:
        chain.add(id(node))
        node = models.parents.get(node)
    return _values(models, name, at, lambda statement: id(statement) in chain)


def values_before_line(models: FileModels, name: str, line: int, at: ast.AST) -> State:
    """The same for a use on `line` in the scope of `at` (for readers that know only lines)."""
    return _values(
        models,
        name,
        at,
        lambda node: getattr(node, "lineno", 0) <= line <= (getattr(node, "end_lineno", 0) or 0),
    )


def _values(models: FileModels, name: str, at: ast.AST, contains: Contains) -> State:
    if models.tree is None:
        return None
    runner = _Runner(models, name, contains)
    scope = _function_scope(models, at)
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
        arguments = scope.args
        parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
        if any(parameter.arg == name for parameter in parameters):
            return None  # the caller's value
        if any(runner.binds(statement) for statement in scope.body):
            found = runner.until(scope.body, [])
            return found or None
        # A global: its module-level value where the function is defined.
        top: ast.AST = scope
        while models.parents.get(top) is not None and models.parents.get(top) is not models.tree:
            top = models.parents[top]
        runner = _Runner(models, name, lambda statement: statement is top)
    return runner.until(models.tree.body, []) or None


def _join(first: State, second: State) -> State:
    if first is None or second is None or bool(first) != bool(second):
        return None  # unknown on one path, or bound on one path only
    joined = list(first)
    for binding in second:
        if not any(binding.same(other) for other in joined):
            joined.append(binding)
    return joined if len(joined) <= _MAX_VALUES else None


def _edited(state: State, edits: tuple[tuple[str, ast.expr], ...] | None) -> State:
    """Each binding with `edits` after its own (None: its edits are lost)."""
    if not state:
        return state
    return [
        Binding(b.value, None if b.edits is None or edits is None else b.edits + edits)
        for b in state
    ]


class _Runner:
    def __init__(self, models: FileModels, name: str, contains: Contains) -> None:
        self.models = models
        self.name = name
        self.contains = contains

    def _names(self, statement: ast.AST) -> tuple[frozenset[str], frozenset[str]]:
        """(names bound, names bound or used) in a statement, once per statement of the file:
        a file with many loads asks about the same statements many times."""
        cache: dict[int, tuple[ast.AST, frozenset[str], frozenset[str]]] | None = getattr(
            self.models, "_reaching_names", None
        )
        if cache is None:
            cache = {}
            self.models._reaching_names = cache  # type: ignore[attr-defined]
        entry = cache.get(id(statement))
        if entry is None or entry[0] is not statement:
            bound: set[str] = set()
            used: set[str] = set()
            for node in _scope_walk(statement):
                bound.update(_bound_names(node))
                if isinstance(node, ast.Name):
                    used.add(node.id)
            entry = (statement, frozenset(bound), frozenset(bound | used))
            cache[id(statement)] = entry
        return entry[1], entry[2]

    def binds(self, statement: ast.AST) -> bool:
        return self.name in self._names(statement)[0]

    def mentions(self, statement: ast.AST) -> bool:
        return self.name in self._names(statement)[1]

    def until(self, statements: list[ast.stmt], state: State) -> State:
        """The state right before the use, which is inside one of `statements`."""
        for statement in statements:
            if not self.contains(statement):
                state = self.through(statement, state)
                continue
            if isinstance(statement, ast.If):
                if self.contains(statement.test):
                    return state
                inside = any(self.contains(s) for s in statement.body)
                return self.until(statement.body if inside else statement.orelse, state)
            if isinstance(statement, (ast.With, ast.AsyncWith)):
                for item in statement.items:
                    if self.contains(item.context_expr):
                        return state
                    if item.optional_vars is not None and self.binds(item.optional_vars):
                        state = None
                return self.until(statement.body, state)
            if isinstance(statement, (*_LOOPS, ast.Try)):
                # Earlier rounds of a loop, and a `try` left half-way, may have bound it.
                if self.binds(statement):
                    return None
                if self._changes(statement):
                    state = _edited(state, None)
                for block in _blocks(statement):
                    if any(self.contains(s) for s in block):
                        return self.until(block, state)
                return state
            return state  # the use is in this simple statement (or its header)
        return state

    def through(self, statement: ast.stmt, state: State) -> State:
        """The state after `statement`, which does not hold the use."""
        if not self.mentions(statement):
            return state
        name = self.name
        if isinstance(statement, ast.Assign):
            targets = statement.targets
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                plain = all(isinstance(t, ast.Name) for t in targets)
                return [Binding(statement.value)] if plain else None
            if len(targets) == 1:
                edit = self._edit(targets[0], statement.value)
                if edit is not None:
                    return _edited(state, (edit,)) if not self._reads(statement.value) else None
        elif isinstance(statement, ast.AnnAssign):
            if isinstance(statement.target, ast.Name) and statement.target.id == name:
                return [Binding(statement.value)] if statement.value is not None else state
        elif isinstance(statement, ast.If):
            return _join(
                self.run(statement.body, state),
                self.run(statement.orelse, state) if statement.orelse else state,
            )
        elif isinstance(statement, (ast.With, ast.AsyncWith)):
            if any(
                item.optional_vars is not None and self.binds(item.optional_vars)
                for item in statement.items
            ):
                return None
            return self.run(statement.body, state)
        elif isinstance(statement, (ast.For, ast.AsyncFor)):
            copied = self._key_copies(statement)
            if copied is not None:
                return _edited(state, copied)
        elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return None if statement.name == name else state
        if self.binds(statement):
            return None
        return _edited(state, None) if self._changes(statement) else state

    def run(self, statements: list[ast.stmt], state: State) -> State:
        for statement in statements:
            state = self.through(statement, state)
        return state

    def _edit(self, target: ast.expr, value: ast.expr) -> tuple[str, ast.expr] | None:
        """`name["key"] = value`."""
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == self.name
            and isinstance(target.slice, ast.Constant)
            and isinstance(target.slice.value, str)
        ):
            return (target.slice.value, value)
        return None

    def _reads(self, value: ast.expr) -> bool:
        return any(isinstance(n, ast.Name) and n.id == self.name for n in ast.walk(value))

    def _key_copies(self, loop: ast.For | ast.AsyncFor) -> tuple[tuple[str, ast.expr], ...] | None:
        """`for k in ["a", "b"]: name[k] = saved[k]` as the edits it makes, key by key."""
        if (
            isinstance(loop, ast.AsyncFor)
            or loop.orelse
            or not isinstance(loop.target, ast.Name)
            or not isinstance(loop.iter, (ast.List, ast.Tuple))
            or len(loop.body) != 1
            or not isinstance(loop.body[0], ast.Assign)
            or len(loop.body[0].targets) != 1
        ):
            return None
        keys = [
            e.value
            for e in loop.iter.elts
            if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
        if len(keys) != len(loop.iter.elts):
            return None
        variable = loop.target.id
        assign = loop.body[0]
        target = assign.targets[0]
        if not (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == self.name
            and isinstance(target.slice, ast.Name)
            and target.slice.id == variable
        ) or self._reads(assign.value):
            return None
        return tuple((key, _replaced(assign.value, variable, key)) for key in keys)

    def _changes(self, statement: ast.stmt) -> bool:
        """Whether the statement may change what the name holds, without rebinding it."""
        for node in _scope_walk(statement):
            if (
                isinstance(node, (ast.Subscript, ast.Attribute))
                and isinstance(node.ctx, (ast.Store, ast.Del))
                and isinstance(node.value, ast.Name)
                and node.value.id == self.name
            ):
                return True
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == self.name
                and func.attr in _DICT_MUTATORS
            ):
                return True
            passed = [*node.args, *(k.value for k in node.keywords)]
            if any(isinstance(a, ast.Name) and a.id == self.name for a in passed) and not (
                isinstance(func, ast.Name) and func.id in _READERS
            ):
                return True
        return False


def _blocks(statement: ast.stmt) -> list[list[ast.stmt]]:
    if isinstance(statement, ast.Try):
        return [
            statement.body,
            *(handler.body for handler in statement.handlers),
            statement.orelse,
            statement.finalbody,
        ]
    if isinstance(statement, _LOOPS):
        return [statement.body, statement.orelse]
    return []


def _replaced(node: ast.expr, variable: str, key: str) -> ast.expr:
    """`node` with the loop variable replaced by the key; the other nodes are the file's own
    (a later lookup finds their scope through them)."""
    if isinstance(node, ast.Name) and node.id == variable:
        return ast.copy_location(ast.Constant(key), node)
    if not any(isinstance(n, ast.Name) and n.id == variable for n in ast.walk(node)):
        return node
    fresh = copy.copy(node)
    for field, value in ast.iter_fields(node):
        if isinstance(value, ast.expr):
            setattr(fresh, field, _replaced(value, variable, key))
        elif isinstance(value, list):
            setattr(
                fresh,
                field,
                [_replaced(v, variable, key) if isinstance(v, ast.expr) else v for v in value],
            )
    return fresh
