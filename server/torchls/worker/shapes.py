"""Shapes in the code: what each line of the workspace's `forward`s binds, recorded during one
counted forward by a line tracer (the `shapes` field of a profile job).

The tracer is a `sys.settrace` function that looks at each new frame once: a frame whose code
object comes from a workspace file gets a small per-frame tracer, every other frame (torch's own
code, the counters) gets None and costs only that look-up. In a traced frame each 'line' event
means the statement that ran before it has finished, so the names it bound hold their new values:
they are read (plain names from the frame's locals, `self.x` with a plain getattr) and described.
What a file's statements bind is read once per file from its AST, so a line that binds nothing
costs one list look-up. The text parsed is the text the worker executed (see `PinnedLoader`),
and its sha256 goes with the hints, so the editor shows them only on that version of the file.
Each file's entry also lists the functions a traced frame ran (`functions`) and, of their
statements that would have a hint, those that never ran (`unrun`): the editor says "not run"
there rather than nothing.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.worker.loading import _Loader

MAX_VALUES = 4  # distinct descriptions kept per hint; the rest are counted
MAX_ELEMENTS = 6  # elements of a tuple or list described
MAX_DEPTH = 3
_MISSING = object()
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PinnedLoader(_Loader):
    """The job's loader, with every workspace file it executes pinned to the text it read:
    the file's bytes decoded as they are (newlines untranslated, as an editor holds them), so
    the sha256 of a file's hints is that of the exact text that ran."""

    def _skeleton(self, path: str) -> tuple[Any, set[int]]:
        real = os.path.realpath(path)
        if real not in self.sources:
            # what cannot be read, the loader reads again and says why
            with contextlib.suppress(OSError, UnicodeDecodeError):
                self.sources[real] = Path(path).read_bytes().decode("utf-8")
        return super()._skeleton(path)


# -- what a file's statements bind --------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One name a statement binds: where its hint goes and how to read its value."""

    name: str  # as written: `x`, `self.h`
    line: int  # 0-based
    character: int  # code points
    local: str  # the local to read, or "self" for an attribute target
    attribute: str | None  # `self.<attribute>`, else None


@dataclass
class _Step:
    """The statements of a line (or of a multi-line statement): what they bind, and where a
    `return`'s value ends."""

    targets: list[_Target] = field(default_factory=list)
    returns: tuple[int, int] | None = None  # (line, character) of a return's value end
    simple: bool = False  # a simple statement's, not a compound statement's header
    ran: bool = False  # a traced frame reached it

    def hint_position(self) -> tuple[int, int] | None:
        """Where this statement's first hint goes (its first target's end, or its return's)."""
        if self.targets:
            return (self.targets[0].line, self.targets[0].character)
        return self.returns


class _FileStatements:
    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.sha256 = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        self.lines = _LINE_BREAK.split(text)
        # by 1-based line number: the step a line belongs to, None where nothing runs
        self.steps: list[_Step | None] = [None] * (len(self.lines) + 2)
        try:
            tree = ast.parse(text, filename=path)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        self._index(tree)

    def _column(self, line: int, offset: int) -> int:
        """A UTF-8 byte offset of the AST, as code points."""
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        if text.isascii():
            return offset
        return len(text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "replace"))

    def _index(self, tree: ast.AST) -> None:
        statements = [node for node in ast.walk(tree) if isinstance(node, ast.stmt)]
        # Outer statements first: a compound statement keeps only its header lines, the
        # statements of its body take theirs.
        statements.sort(key=lambda node: (node.lineno, -(node.end_lineno or node.lineno)))
        steps = self.steps
        for statement in statements:
            if hasattr(statement, "body"):
                header = _Step()
                for line in _span(statement):
                    steps[line] = header
        for statement in statements:
            if hasattr(statement, "body"):
                continue
            # Statements sharing a line (`a = f(x); b = g(a)`) finish together: one step.
            shared = [s for s in {id(steps[n]): steps[n] for n in _span(statement)}.values()]
            simple = [s for s in shared if s is not None and s.simple]
            step = simple[0] if simple else _Step(simple=True)
            for other in simple[1:]:
                step.targets += other.targets
                step.returns = step.returns or other.returns
                for line, found in enumerate(steps):
                    if found is other:
                        steps[line] = step
            self._describe_statement(statement, step)
            for line in _span(statement):
                steps[line] = step

    def _describe_statement(self, statement: ast.stmt, step: _Step) -> None:
        if isinstance(statement, ast.Assign):
            for target in statement.targets:
                self._targets(target, step.targets)
        elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
            if isinstance(statement, ast.AnnAssign) and statement.value is None:
                return
            self._targets(statement.target, step.targets)
        elif isinstance(statement, ast.Return) and statement.value is not None:
            value = statement.value
            end_line = value.end_lineno or value.lineno
            end = self._column(end_line, value.end_col_offset or 0)
            step.returns = (end_line - 1, end)

    def _targets(self, target: ast.expr, found: list[_Target]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._targets(element, found)
            return
        if isinstance(target, ast.Starred):
            self._targets(target.value, found)
            return
        end_line = target.end_lineno or target.lineno
        end = self._column(end_line, target.end_col_offset or 0)
        if isinstance(target, ast.Name):
            found.append(_Target(target.id, end_line - 1, end, target.id, None))
        elif (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            found.append(_Target(f"self.{target.attr}", end_line - 1, end, "self", target.attr))
        # subscripts (`out[0] = ...`) and other targets are not read: reading them may run code


def _span(statement: ast.stmt) -> range:
    return range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)


# -- describing values --------------------------------------------------------------------------


class _Describer:
    def __init__(self, torch: Any) -> None:
        self.tensor = torch.Tensor
        self.plain = torch.float32
        self.dtypes: dict[Any, str] = {}

    def __call__(self, value: Any, depth: int = 0) -> str | None:
        """The contract's description, or None when the value holds no tensor."""
        if isinstance(value, self.tensor):
            return self._tensor(value)
        if depth >= MAX_DEPTH:
            return None
        if isinstance(value, (tuple, list)):
            parts: list[str] = []
            tensors = False
            for item in value[:MAX_ELEMENTS]:
                described = self(item, depth + 1)
                if described is None:
                    parts.append(_plain(item))
                else:
                    tensors = True
                    parts.append(described)
            if not tensors:
                return None
            if len(value) > MAX_ELEMENTS:
                parts.append("…")
            inner = ", ".join(parts)
            if isinstance(value, list):
                return f"[{inner}]"
            return f"({inner},)" if len(parts) == 1 else f"({inner})"
        if isinstance(value, dict):
            items: list[str] = []
            tensors = False
            for index, (key, item) in enumerate(value.items()):
                if index >= MAX_ELEMENTS:
                    items.append("…")
                    break
                described = self(item, depth + 1)
                if described is None:
                    described = _plain(item)
                else:
                    tensors = True
                items.append(f"{key}: {described}")
            return "{" + ", ".join(items) + "}" if tensors else None
        return None

    def _tensor(self, value: Any) -> str:
        shape = tuple(value.shape)
        text = str(tuple(int(size) for size in shape)) if shape else "()"
        dtype = value.dtype
        if dtype is self.plain:
            return text
        name = self.dtypes.get(dtype)
        if name is None:
            name = self.dtypes[dtype] = str(dtype).removeprefix("torch.")
        return f"{text} {name}"


def _plain(value: Any) -> str:
    if value is None or isinstance(value, (bool, int)):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return type(value).__name__


# -- the tracer ---------------------------------------------------------------------------------


@dataclass
class _Hint:
    kind: str
    name: str
    function: str
    values: list[str] = field(default_factory=list)
    others: set[str] = field(default_factory=set)
    calls: int = 0

    def add(self, description: str | None) -> None:
        self.calls += 1
        if description is None or description in self.values:
            return
        if len(self.values) < MAX_VALUES:
            self.values.append(description)
        elif len(self.others) < 10_000:
            self.others.add(description)


class ShapeTracer:
    """A context manager: while it is entered, the current thread's workspace frames are traced.
    `result()` gives the contract's `shapes` list. The trace function in place before (a
    debugger's, coverage's) is put back on exit; nothing the tracer meets escapes into the
    forward it watches."""

    def __init__(self, torch: Any, loader: _Loader) -> None:
        self.loader = loader
        self.torch = torch
        self.trace: Any = None
        self.untraced: Any = None
        self.handles: list[Any] = []
        self.describe = _Describer(torch)
        self.files: dict[str, _FileStatements | None] = {}  # by co_filename
        self.codes: dict[types.CodeType, _FileStatements | None] = {}
        self.hints: dict[str, dict[tuple[int, int, str, str], _Hint]] = {}
        self.entered: dict[types.CodeType, _FileStatements] = {}  # functions a frame ran
        self.previous: Any = None

    def __enter__(self) -> ShapeTracer:
        self.previous = sys.gettrace()
        self.trace = self._call  # one bound method: `sys.gettrace() is self.trace` holds
        self.untraced = _untraced_ops(self.torch, self.trace)
        if self.untraced is not None:
            self.untraced.__enter__()
        self.handles = self._untraced_modules()
        sys.settrace(self.trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self.previous)
        for handle in self.handles:
            handle.remove()
        if self.untraced is not None:
            self.untraced.__exit__(None, None, None)

    def _untraced_modules(self) -> list[Any]:
        """Global module hooks that switch the tracer off for the call of a module whose
        forward is not workspace code (nn.Conv2d: its Python and the hooks around it), and on
        for one that is (a workspace block inside an nn.Sequential)."""
        try:
            from torch.nn.modules import module as torch_module
        except ImportError:
            return []
        trace, settrace, gettrace = self.trace, sys.settrace, sys.gettrace
        stack: list[tuple[int, Any]] = []
        workspace: dict[type, bool] = {}
        codes = self.codes
        statements_of = self._statements

        def before(module: Any, args: Any) -> None:
            try:
                kind = type(module)
                traced = workspace.get(kind)
                if traced is None:
                    code = getattr(getattr(kind, "forward", None), "__code__", None)
                    if code is not None and code not in codes:
                        codes[code] = statements_of(code)
                    traced = workspace[kind] = code is not None and codes[code] is not None
                now = gettrace()
                if now is not trace and now is not None:
                    return  # someone else's tracer: leave it be
                stack.append((id(module), now))
                settrace(trace if traced else None)
            except Exception:
                pass

        def after(module: Any, args: Any, output: Any) -> None:
            try:
                key = id(module)
                if not any(entry[0] == key for entry in stack):
                    return  # not switched by `before` (another tracer was active)
                while stack:  # a module that raised (and was caught) left its entry behind
                    entry, state = stack.pop()
                    if entry == key:
                        settrace(state)
                        return
            except Exception:
                pass

        handles = [
            torch_module.register_module_forward_pre_hook(before),
            torch_module.register_module_forward_hook(after),
        ]
        # first among the global pre-hooks, so that the counters' own (FlopCounterMode's
        # module tracker) run untraced too
        with contextlib.suppress(Exception):
            hooks: Any = torch_module._global_forward_pre_hooks  # an OrderedDict
            hooks.move_to_end(handles[0].id, last=False)
        return handles

    def _call(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        try:
            code = frame.f_code
            statements = self.codes.get(code, _MISSING)
            if statements is _MISSING:
                statements = self.codes[code] = self._statements(code)
            if statements is None:
                return None
            self.entered[code] = statements  # type: ignore[assignment]
            return _FrameTracer(self, statements, _qualname(code))  # type: ignore[arg-type]
        except Exception:
            return None

    def _statements(self, code: types.CodeType) -> _FileStatements | None:
        # comprehensions, lambdas and generator expressions bind nothing of the statement
        # they run in; their frames would see its line but not its end
        if code.co_name.startswith("<"):
            return None
        # reading a file (its AST) is the tracer's work, not the forward's: not traced
        now = sys.gettrace()
        sys.settrace(None)
        try:
            return self._read(code)
        finally:
            sys.settrace(now)

    def _read(self, code: types.CodeType) -> _FileStatements | None:
        filename = code.co_filename
        if filename in self.files:
            return self.files[filename]
        statements: _FileStatements | None = None
        if filename and not filename.startswith("<") and self.loader.is_user_file(filename):
            real = os.path.realpath(filename)
            text = self.loader.sources.get(real)
            if text is None:
                try:
                    text = Path(filename).read_bytes().decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    text = None
            if text is not None:
                statements = _FileStatements(str(Path(filename).absolute()), text)
        self.files[filename] = statements
        return statements

    def record(self, frame: types.FrameType, step: _Step, statements: _FileStatements) -> None:
        function = _qualname(frame.f_code)
        hints = self.hints.setdefault(statements.path, {})
        local_values = frame.f_locals
        for target in step.targets:
            value = local_values.get(target.local, _MISSING)
            if value is _MISSING:
                continue
            if target.attribute is not None:
                value = getattr(value, target.attribute, _MISSING)
                if value is _MISSING:
                    continue
            key = (target.line, target.character, "bind", target.name)
            hint = hints.get(key)
            if hint is None:
                hint = hints[key] = _Hint("bind", target.name, function)
            hint.add(self.describe(value))

    def record_return(
        self, frame: types.FrameType, step: _Step, statements: _FileStatements, value: Any
    ) -> None:
        assert step.returns is not None
        line, character = step.returns
        hints = self.hints.setdefault(statements.path, {})
        key = (line, character, "return", "")
        hint = hints.get(key)
        if hint is None:
            hint = hints[key] = _Hint("return", "", _qualname(frame.f_code))
        hint.add(self.describe(value))

    def result(self) -> list[dict[str, Any]]:
        shapes: list[dict[str, Any]] = []
        shas = {s.path: s.sha256 for s in self.files.values() if s is not None}
        for path, hints in self.hints.items():
            rows = []
            for (line, character, kind, name), hint in sorted(hints.items()):
                if not hint.values:
                    continue  # no tensor was ever bound there
                values = list(hint.values)
                if hint.others:
                    values.append(f"… {len(hint.others)} more")
                rows.append(
                    {
                        "line": line,
                        "character": character,
                        "kind": kind,
                        "name": name,
                        "values": values,
                        "function": hint.function,
                        "calls": hint.calls,
                    }
                )
            if rows:
                shapes.append({"file": path, "sha256": shas[path], "hints": rows})
        self._add_unrun(shapes, shas)
        return shapes

    def _add_unrun(self, shapes: list[dict[str, Any]], shas: dict[str, str]) -> None:
        """For each file, the functions a traced frame ran (`functions`) and their statements
        that would have a hint but never ran (`unrun`: a branch this input does not take, a
        loop that ran zero times): where no shape can be shown, the editor says why."""
        by_path = {entry["file"]: entry for entry in shapes}
        for code, statements in self.entered.items():
            entry = by_path.get(statements.path)
            if entry is None:
                entry = by_path[statements.path] = {
                    "file": statements.path,
                    "sha256": shas[statements.path],
                    "hints": [],
                }
                shapes.append(entry)
            function = _qualname(code)
            functions: list[str] = entry.setdefault("functions", [])
            if function not in functions:
                functions.append(function)
            unrun: list[dict[str, Any]] = entry.setdefault("unrun", [])
            steps = statements.steps
            seen: set[int] = set()
            for line in sorted({n for _, _, n in code.co_lines() if n is not None}):
                step = steps[line] if 0 < line < len(steps) else None
                if step is None or not step.simple or step.ran or id(step) in seen:
                    continue
                seen.add(id(step))
                position = step.hint_position()
                if position is not None:
                    unrun.append(
                        {"line": position[0], "character": position[1], "function": function}
                    )


def _untraced_ops(torch: Any, trace: Any) -> Any:
    """A torch-function mode that switches the tracer off while a torch function runs (a
    tensor op, a functional call): torch's Python below it (its dispatch, the meta kernels,
    the FlopCounterMode) makes tens of calls per op, and each would otherwise cost a trace
    event. The workspace's frames keep their line events; what a torch function calls back
    into workspace code (a checkpointed function) is not traced."""
    try:
        from torch.overrides import TorchFunctionMode
    except ImportError:
        return None
    settrace, gettrace = sys.settrace, sys.gettrace

    class Untraced(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            if gettrace() is not trace:
                return func(*args, **(kwargs or {}))
            settrace(None)
            try:
                return func(*args, **(kwargs or {}))
            finally:
                settrace(trace)

    return Untraced()


def _qualname(code: types.CodeType) -> str:
    return str(getattr(code, "co_qualname", code.co_name))  # Python 3.11+: `Net.forward`


class _FrameTracer:
    """The local trace function of one workspace frame: the statement it is in, and whether
    that statement raised (then what it would have bound was not bound)."""

    __slots__ = ("current", "failed", "function", "owner", "statements", "steps")

    def __init__(self, owner: ShapeTracer, statements: _FileStatements, function: str) -> None:
        self.owner = owner
        self.statements = statements
        self.steps = statements.steps
        self.current: _Step | None = None
        self.failed = False
        self.function = function

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> Any:
        try:
            if event == "line":
                line = frame.f_lineno
                steps = self.steps
                step = steps[line] if 0 < line < len(steps) else None
                current = self.current
                if step is not current:
                    if current is not None and current.targets and not self.failed:
                        self.owner.record(frame, current, self.statements)
                    if step is not None:
                        step.ran = True
                    self.current = step
                    self.failed = False
            elif event == "return":
                current = self.current
                if current is not None and not self.failed:
                    if current.targets:
                        self.owner.record(frame, current, self.statements)
                    if current.returns is not None:
                        self.owner.record_return(frame, current, self.statements, arg)
                self.current = None
            elif event == "exception":
                self.failed = True
        except Exception:
            pass
        return self
