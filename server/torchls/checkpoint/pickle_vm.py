"""A pickle interpreter that never imports, calls or looks up anything the pickle names.

`pickle.Unpickler` resolves globals and calls them: that is how a checkpoint runs code. This
interpreter executes the pickle opcodes itself. A global becomes an inert `Global` record; calling
one (REDUCE, NEWOBJ, INST, OBJ) produces an inert `Opaque` record, unless the caller registered a
*reducer* for that name -- plain functions of ours that turn, say, `torch._utils._rebuild_tensor_v2`
arguments into a tensor record. Nothing from the file is ever executed.

Every run is bounded by a `Budget`: opcodes, memo entries, nesting depth. Large byte and text
payloads are kept as their size, not copied. Malformed input raises `PickleError` with one line.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class PickleError(Exception):
    """The pickle is malformed, hostile or over budget; the message is one sentence."""


@dataclass(frozen=True)
class Budget:
    max_objects: int = 20_000_000  # objects on the stack, plus open marks
    max_memo: int = 10_000_000
    max_depth: int = 1_000  # nested MARKs
    max_inline_bytes: int = 64 * 1024  # longer str/bytes payloads are kept as their size only


class Global:
    """A `module.name` the pickle refers to. Never imported."""

    __slots__ = ("fullname", "module", "name", "reducer")

    def __init__(self, module: str, name: str, reducer: Reducer | None = None) -> None:
        self.module = module
        self.name = name
        self.fullname = f"{module}.{name}"
        self.reducer = reducer  # ours, registered for this name; never anything from the file

    def __repr__(self) -> str:
        return f"<global {self.fullname}>"


class Opaque:
    """What calling or instantiating a global would have produced; nothing was called.

    `target` is the Global (or other value) that would have been called, `args` its arguments,
    `state` what BUILD would have set, `items`/`entries` what APPEND/SETITEM would have added.
    """

    __slots__ = ("args", "entries", "items", "kind", "state", "target")

    def __init__(self, target: Any, args: tuple[Any, ...], kind: str) -> None:
        self.target = target
        self.args = args
        self.kind = kind  # "call" or "new"
        self.state: Any = None
        self.items: list[Any] | None = None
        self.entries: dict[Any, Any] | None = None

    @property
    def type_name(self) -> str:
        # Iterative: a hostile pickle can call the result of a call of a call ... thousands deep.
        target = self.target
        calls = 0
        while isinstance(target, Opaque) and calls < 8:
            target = target.target
            calls += 1
        if isinstance(target, Opaque):
            return "<call>(...)" * calls
        name = target.fullname if isinstance(target, Global) else type(target).__name__
        return name + "(...)" * calls

    def __repr__(self) -> str:
        return f"<{self.kind} {self.type_name}>"


class LargePayload:
    """A str or bytes payload longer than the budget's inline limit: its kind and size only."""

    __slots__ = ("kind", "size")

    def __init__(self, kind: str, size: int) -> None:
        self.kind = kind
        self.size = size

    def __repr__(self) -> str:
        return f"<{self.kind} of {self.size} bytes>"


class PersistentRef:
    """A persistent id with no handler registered."""

    __slots__ = ("pid",)

    def __init__(self, pid: Any) -> None:
        self.pid = pid


Reducer = Callable[["RestrictedUnpickler", tuple[Any, ...]], Any]

_CHECK_EVERY = 64 * 1024
_u8 = struct.Struct("<Q").unpack_from
_u4 = struct.Struct("<I").unpack_from
_i4 = struct.Struct("<i").unpack_from
_u2 = struct.Struct("<H").unpack_from
_f8 = struct.Struct(">d").unpack_from


class RestrictedUnpickler:
    """Interprets one pickle from `data` starting at `pos`.

    reducers: `"module.name" -> function(unpickler, args)`, used for REDUCE and NEWOBJ of that
    global. persistent_load: turns a persistent id into a value (torch's storages).
    After `load()`, `globals_seen` holds every global the pickle named (even ones never called)
    with how often it was named, `opcodes_seen` the less common opcodes it used (the common ones,
    which torch's weights-only unpickler implements, are not tracked), and `pos` the offset just
    past the STOP opcode.
    """

    def __init__(
        self,
        data: bytes,
        *,
        pos: int = 0,
        budget: Budget | None = None,
        reducers: dict[str, Reducer] | None = None,
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> None:
        self.data = data
        self.pos = pos
        self.budget = budget or Budget()
        self.reducers = reducers or {}
        self.persistent_load = persistent_load
        self.globals_seen: dict[str, int] = {}
        self.opcodes_seen: set[int] = set()
        self.protocol = 0
        self._globals: dict[tuple[str, str], Global] = {}

    # -- helpers used by reducers --------------------------------------------------------------

    def call(self, target: Any, args: Any) -> Any:
        """What REDUCE does: a registered reducer's result, or an inert record of the call."""
        if type(args) is not tuple:
            raise PickleError(f"REDUCE arguments must be a tuple, not {type(args).__name__}")
        if type(target) is Global:
            reducer = target.reducer
            if reducer is not None:
                try:
                    return reducer(self, args)
                except PickleError:
                    raise
                except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
                    raise PickleError(f"bad arguments for {target.fullname}: {exc}") from None
        return Opaque(target, args, "call")

    def _new(self, target: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise PickleError("NEWOBJ arguments must be a tuple")
        if isinstance(target, Global) and target.fullname in self.reducers:
            return self.call(target, args)
        return Opaque(target, args, "new")

    def _global(self, module: str, name: str) -> Global:
        if self.protocol < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        found = self._globals.get(key)
        if found is None:
            found = self._globals[key] = Global(module, name)
            found.reducer = self.reducers.get(found.fullname)
        fullname = found.fullname
        self.globals_seen[fullname] = self.globals_seen.get(fullname, 0) + 1
        return found

    def _text(self, start: int, size: int, encoding: str) -> Any:
        if size > self.budget.max_inline_bytes:
            return LargePayload("text", size)
        return str(self.data[start : start + size], encoding, "surrogatepass")

    def _bytes(self, start: int, size: int, kind: str = "bytes") -> Any:
        if size > self.budget.max_inline_bytes:
            return LargePayload(kind, size)
        chunk = self.data[start : start + size]
        return bytearray(chunk) if kind == "bytearray" else bytes(chunk)

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self.data.find(b"\n", pos)
        if end < 0:
            raise PickleError("pickle data ended inside a text line")
        return self.data[pos:end], end + 1

    # -- the interpreter -----------------------------------------------------------------------

    def load(self) -> Any:
        try:
            return self._load()
        except PickleError:
            raise
        except IndexError:
            raise PickleError("malformed pickle: the stack or a mark ran out") from None
        except KeyError as exc:
            raise PickleError(f"malformed pickle: memo entry {exc} was never stored") from None
        except TypeError as exc:
            raise PickleError(f"malformed pickle: {exc}") from None
        except (ValueError, struct.error, UnicodeDecodeError, OverflowError) as exc:
            raise PickleError(f"malformed pickle: {exc}") from None
        except RecursionError:
            raise PickleError("malformed pickle: structure too deep") from None
        except MemoryError:
            raise PickleError("pickle needs more memory than allowed") from None

    def _load(self) -> Any:
        data = self.data
        end = len(data)
        items: list[Any]
        pos = self.pos
        budget = self.budget
        max_depth = budget.max_depth
        max_memo = budget.max_memo
        max_inline = budget.max_inline_bytes
        seen = self.opcodes_seen
        memo: dict[int, Any] = {}
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        push = stack.append
        call = self.call
        persistent_load = self.persistent_load
        # Budgets other than nesting are checked every _CHECK_EVERY bytes, not per opcode: the
        # loop's one bounds test (`pos >= limit`) serves both the end of data and the checks.
        limit = min(end, pos + _CHECK_EVERY)
        while True:
            if pos >= limit:
                if pos >= end:
                    raise PickleError("pickle data ended before its STOP opcode (truncated file?)")
                if len(memo) > max_memo:
                    raise PickleError(f"pickle memo exceeds {max_memo:,} entries (budget)")
                if len(stack) + len(metastack) > budget.max_objects:
                    raise PickleError(
                        f"pickle holds more than {budget.max_objects:,} objects (budget)"
                    )
                limit = min(end, pos + _CHECK_EVERY)
            op = data[pos]
            pos += 1
            # The branches are ordered by how often torch.save's pickles use each opcode. Only
            # opcodes that torch's weights-only unpickler does not implement are recorded in
            # `seen` (the common ones below all are implemented), to keep the hot path short.
            if op == 0x72:  # LONG_BINPUT
                memo[_u4(data, pos)[0]] = stack[-1]
                pos += 4
            elif op == 0x68:  # BINGET
                push(memo[data[pos]])
                pos += 1
            elif op == 0x4B:  # BININT1
                push(data[pos])
                pos += 1
            elif op == 0x28:  # MARK
                metastack.append(stack)
                if len(metastack) > max_depth:
                    raise PickleError(f"pickle nests deeper than {max_depth} levels (budget)")
                stack = []
                push = stack.append
            elif op == 0x58:  # BINUNICODE
                size = _u4(data, pos)[0]
                pos += 4
                if pos + size > end:
                    raise PickleError("pickle data ended inside a string (truncated file?)")
                text: Any
                if size <= max_inline:
                    text = str(data[pos : pos + size], "utf-8", "surrogatepass")
                else:
                    text = LargePayload("text", size)
                push(text)
                pos += size
                if pos < end and data[pos] == 0x72:  # fused: LONG_BINPUT of the value just made
                    memo[_u4(data, pos + 1)[0]] = text
                    pos += 5
            elif op == 0x74:  # TUPLE
                frozen = tuple(stack)
                stack = metastack.pop()
                push = stack.append
                push(frozen)
                if pos < end and data[pos] == 0x72:  # fused LONG_BINPUT
                    memo[_u4(data, pos + 1)[0]] = frozen
                    pos += 5
            elif op == 0x85:  # TUPLE1
                frozen = stack[-1] = (stack[-1],)
                if pos < end and data[pos] == 0x72:  # fused LONG_BINPUT
                    memo[_u4(data, pos + 1)[0]] = frozen
                    pos += 5
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                target = stack[-1]
                # The common case inline: a registered reducer of ours for a torch global.
                if type(target) is Global and target.reducer is not None and type(args) is tuple:
                    try:  # free in Python 3.11+ unless it raises
                        result = stack[-1] = target.reducer(self, args)
                    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
                        raise PickleError(f"bad arguments for {target.fullname}: {exc}") from None
                else:
                    result = stack[-1] = call(target, args)
                if pos < end and data[pos] == 0x72:  # fused LONG_BINPUT
                    memo[_u4(data, pos + 1)[0]] = result
                    pos += 5
            elif op == 0x51:  # BINPERSID
                pid = stack.pop()
                push(persistent_load(pid) if persistent_load else PersistentRef(pid))
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x71:  # BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x6A:  # LONG_BINGET
                push(memo[_u4(data, pos)[0]])
                pos += 4
            elif op == 0x86:  # TUPLE2
                second = stack.pop()
                stack[-1] = (stack[-1], second)
            elif op == 0x87:  # TUPLE3
                third = stack.pop()
                second = stack.pop()
                stack[-1] = (stack[-1], second, third)
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x63:  # GLOBAL
                module, pos = self._line(pos)
                name, pos = self._line(pos)
                push(self._global(module.decode("utf-8"), name.decode("utf-8")))
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                push = stack.append
                _set_items(stack[-1], items)
            elif op == 0x7D:  # EMPTY_DICT
                push({})
            else:
                seen.add(op)
                if op == 0x4D:  # BININT2
                    push(_u2(data, pos)[0])
                    pos += 2
                elif op == 0x4A:  # BININT
                    push(_i4(data, pos)[0])
                    pos += 4
                elif op == 0x94:  # MEMOIZE
                    if len(memo) >= max_memo:
                        raise PickleError(f"pickle memo exceeds {max_memo:,} entries (budget)")
                    memo[len(memo)] = stack[-1]
                elif op == 0x8C:  # SHORT_BINUNICODE
                    size = data[pos]
                    pos += 1
                    if pos + size > end:
                        raise PickleError("pickle data ended inside a string (truncated file?)")
                    push(self._text(pos, size, "utf-8"))
                    pos += size
                elif op == 0x93:  # STACK_GLOBAL
                    name = stack.pop()
                    module = stack.pop()
                    if not isinstance(module, str) or not isinstance(name, str):
                        raise PickleError("STACK_GLOBAL needs two strings")
                    push(self._global(module, name))
                elif op == 0x95:  # FRAME
                    pos += 8
                elif op == 0x80:  # PROTO
                    self.protocol = data[pos]
                    pos += 1
                    if self.protocol > 5:
                        raise PickleError(f"unsupported pickle protocol {self.protocol}")
                elif op == 0x2E:  # STOP
                    self.pos = pos
                    if metastack:
                        raise PickleError("malformed pickle: STOP inside an open mark")
                    return stack.pop()
                elif op == 0x4E:  # NONE
                    push(None)
                elif op == 0x5D:  # EMPTY_LIST
                    push([])
                elif op == 0x61:  # APPEND
                    value = stack.pop()
                    _append(stack[-1], [value])
                elif op == 0x65:  # APPENDS
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    _append(stack[-1], items)
                elif op == 0x73:  # SETITEM
                    value = stack.pop()
                    key = stack.pop()
                    _set_items(stack[-1], [key, value])
                elif op == 0x62:  # BUILD
                    state = stack.pop()
                    _build(stack[-1], state)
                elif op == 0x81:  # NEWOBJ
                    args = stack.pop()
                    stack[-1] = self._new(stack[-1], args)
                elif op == 0x92:  # NEWOBJ_EX
                    kwargs = stack.pop()
                    args = stack.pop()
                    target = stack.pop()
                    obj = self._new(target, args)
                    if isinstance(obj, Opaque):
                        obj.state = {"kwargs": kwargs}
                    push(obj)
                elif op == 0x47:  # BINFLOAT
                    push(_f8(data, pos)[0])
                    pos += 8
                elif op == 0x8A:  # LONG1
                    size = data[pos]
                    pos += 1
                    push(int.from_bytes(data[pos : pos + size], "little", signed=True))
                    pos += size
                elif op == 0x8B:  # LONG4
                    size = _i4(data, pos)[0]
                    pos += 4
                    if size < 0 or pos + size > end:
                        raise PickleError("malformed pickle: bad LONG4 length")
                    push(int.from_bytes(data[pos : pos + size], "little", signed=True))
                    pos += size
                elif op in (0x42, 0x43, 0x8E, 0x96, 0x54, 0x55, 0x8D):
                    # BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8, BINSTRING, SHORT_BINSTRING,
                    # BINUNICODE8
                    if op in (0x43, 0x55):
                        size, width = data[pos], 1
                    elif op in (0x8E, 0x96, 0x8D):
                        size, width = _u8(data, pos)[0], 8
                    elif op == 0x54:
                        size, width = _i4(data, pos)[0], 4
                    else:
                        size, width = _u4(data, pos)[0], 4
                    pos += width
                    if size < 0 or pos + size > end:
                        raise PickleError(
                            "pickle data ended inside a byte string (truncated file?)"
                        )
                    if op == 0x8D:
                        push(self._text(pos, size, "utf-8"))
                    elif op in (0x54, 0x55):  # Python 2 str: torch reads them as latin-1 text
                        push(self._text(pos, size, "latin-1"))
                    else:
                        push(self._bytes(pos, size, "bytearray" if op == 0x96 else "bytes"))
                    pos += size
                elif op == 0x8F:  # EMPTY_SET
                    push(set())
                elif op == 0x90:  # ADDITEMS
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    target = stack[-1]
                    if not isinstance(target, set):
                        raise PickleError("ADDITEMS on something that is not a set")
                    target.update(check_hashable(item) for item in items)
                elif op == 0x91:  # FROZENSET
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    push(frozenset(check_hashable(item) for item in items))
                elif op == 0x6C:  # LIST
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    push(items)
                elif op == 0x64:  # DICT
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    mapping: dict[Any, Any] = {}
                    _set_items(mapping, items)
                    push(mapping)
                elif op == 0x30:  # POP
                    if stack:
                        stack.pop()
                    else:
                        stack = metastack.pop()
                        push = stack.append
                elif op == 0x31:  # POP_MARK
                    stack = metastack.pop()
                    push = stack.append
                elif op == 0x32:  # DUP
                    push(stack[-1])
                elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4: the copyreg extension registry
                    width = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                    code = int.from_bytes(data[pos : pos + width], "little")
                    pos += width
                    push(self._global("copyreg.extension", str(code)))
                elif op == 0x50:  # PERSID
                    line, pos = self._line(pos)
                    pid = line.decode("ascii")
                    push(self.persistent_load(pid) if self.persistent_load else PersistentRef(pid))
                elif op in (0x49, 0x4C):  # INT, LONG (text)
                    line, pos = self._line(pos)
                    if op == 0x49 and line in (b"00", b"01"):
                        push(line == b"01")
                    else:
                        push(int(line.rstrip(b"L")))
                elif op == 0x46:  # FLOAT
                    line, pos = self._line(pos)
                    push(float(line))
                elif op == 0x53:  # STRING
                    line, pos = self._line(pos)
                    if len(line) < 2 or line[0] != line[-1] or line[0] not in b"\"'":
                        raise PickleError("malformed pickle: bad STRING quoting")
                    push(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))
                elif op == 0x56:  # UNICODE
                    line, pos = self._line(pos)
                    push(line.decode("raw-unicode-escape"))
                elif op in (0x67, 0x70):  # GET, PUT
                    line, pos = self._line(pos)
                    index = int(line)
                    if op == 0x67:
                        push(memo[index])
                    else:
                        if len(memo) >= max_memo:
                            raise PickleError(f"pickle memo exceeds {max_memo:,} entries (budget)")
                        memo[index] = stack[-1]
                elif op == 0x69:  # INST
                    module, pos = self._line(pos)
                    name, pos = self._line(pos)
                    args = tuple(stack)
                    stack = metastack.pop()
                    push = stack.append
                    target = self._global(module.decode("utf-8"), name.decode("utf-8"))
                    push(self._new(target, args))
                elif op == 0x6F:  # OBJ
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    push(self._new(items[0], tuple(items[1:])))
                elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                    raise PickleError("pickle uses out-of-band buffers, which checkpoints never do")
                else:
                    raise PickleError(
                        f"malformed pickle: unknown opcode 0x{op:02x} at byte {pos - 1}"
                    )


def _append(target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, Opaque):
        if target.items is None:
            target.items = []
        target.items.extend(items)
    else:
        raise PickleError(f"malformed pickle: APPEND to a {type(target).__name__}")


_MAX_KEY_NODES = 10_000


def check_hashable(value: Any) -> Any:
    """`value`, once it is known to be cheap to hash.

    Hashing a tuple (or frozenset) walks it recursively in C: one nested a million levels deep
    overflows the C stack (a segfault), and one that shares sub-tuples exponentially takes
    forever. Keys and set members are checked before they are hashed: at most 10,000 nodes as a
    tree, counted with each shared node's size memoised.
    """
    if type(value) is not tuple and type(value) is not frozenset:
        return value
    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        if not expanded:
            stack.append((node, True))
            if len(stack) > _MAX_KEY_NODES:
                raise PickleError("malformed pickle: a dict key or set member nested too deeply")
            for child in node:
                if (type(child) is tuple or type(child) is frozenset) and id(child) not in sizes:
                    stack.append((child, False))
            continue
        total = 1
        for child in node:
            total += sizes.get(id(child), 1)
        if total > _MAX_KEY_NODES:
            raise PickleError("malformed pickle: a dict key or set member is too large to hash")
        sizes[id(node)] = total
    return value


def _set_items(target: Any, flat: list[Any]) -> None:
    if len(flat) % 2:
        raise PickleError("malformed pickle: SETITEMS with an odd number of items")
    if isinstance(target, dict):
        for index in range(0, len(flat), 2):
            key = flat[index]
            if type(key) is tuple or type(key) is frozenset:
                check_hashable(key)
            target[key] = flat[index + 1]
    elif isinstance(target, Opaque):
        if target.entries is None:
            target.entries = {}
        for index in range(0, len(flat), 2):
            target.entries[check_hashable(flat[index])] = flat[index + 1]
    else:
        raise PickleError(f"malformed pickle: SETITEM on a {type(target).__name__}")


def _build(target: Any, state: Any) -> None:
    setter = getattr(target, "set_pickle_state", None)
    if setter is not None:
        setter(state)
    elif isinstance(target, Opaque):
        target.state = state
    # BUILD on plain data (a list, a str) has no meaning for us: the state is dropped, as the
    # records that matter (tensors, dicts) all define set_pickle_state.
