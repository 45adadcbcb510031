"""Would `torch.load(path, weights_only=True)` -- torch's default since 2.6 -- accept this file?

torch's weights-only unpickler accepts a fixed set of globals and a subset of pickle opcodes.
The set below is torch 2.13's (`torch._weights_only_unpickler._get_allowed_globals()`); a test
compares it with the installed torch, so an update to torch that changes it fails loudly.
"""

from __future__ import annotations

import _compat_pickle
from dataclasses import dataclass

WEIGHTS_ONLY_ALLOWED: frozenset[str] = frozenset(
    (
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.BFloat16Storage",
        "torch.BFloat16Tensor",
        "torch.BoolStorage",
        "torch.BoolTensor",
        "torch.ByteStorage",
        "torch.ByteTensor",
        "torch.CharStorage",
        "torch.CharTensor",
        "torch.ComplexDoubleStorage",
        "torch.ComplexFloatStorage",
        "torch.DoubleStorage",
        "torch.DoubleTensor",
        "torch.FloatStorage",
        "torch.FloatTensor",
        "torch.HalfStorage",
        "torch.HalfTensor",
        "torch.IntStorage",
        "torch.IntTensor",
        "torch.LongStorage",
        "torch.LongTensor",
        "torch.QInt32Storage",
        "torch.QInt8Storage",
        "torch.QUInt2x4Storage",
        "torch.QUInt4x2Storage",
        "torch.QUInt8Storage",
        "torch.ShortStorage",
        "torch.ShortTensor",
        "torch.Size",
        "torch.Tensor",
        "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_wrapper_subclass",
        "torch.bfloat16",
        "torch.bits16",
        "torch.bits1x8",
        "torch.bits2x4",
        "torch.bits4x2",
        "torch.bits8",
        "torch.bool",
        "torch.complex128",
        "torch.complex32",
        "torch.complex64",
        "torch.cuda.BFloat16Storage",
        "torch.cuda.BFloat16Tensor",
        "torch.cuda.BoolStorage",
        "torch.cuda.BoolTensor",
        "torch.cuda.ByteStorage",
        "torch.cuda.ByteTensor",
        "torch.cuda.CharStorage",
        "torch.cuda.CharTensor",
        "torch.cuda.ComplexDoubleStorage",
        "torch.cuda.ComplexFloatStorage",
        "torch.cuda.DoubleStorage",
        "torch.cuda.DoubleTensor",
        "torch.cuda.FloatStorage",
        "torch.cuda.FloatTensor",
        "torch.cuda.HalfStorage",
        "torch.cuda.HalfTensor",
        "torch.cuda.IntStorage",
        "torch.cuda.IntTensor",
        "torch.cuda.LongStorage",
        "torch.cuda.LongTensor",
        "torch.cuda.ShortStorage",
        "torch.cuda.ShortTensor",
        "torch.cuda.sparse.BFloat16Tensor",
        "torch.cuda.sparse.ByteTensor",
        "torch.cuda.sparse.CharTensor",
        "torch.cuda.sparse.DoubleTensor",
        "torch.cuda.sparse.FloatTensor",
        "torch.cuda.sparse.HalfTensor",
        "torch.cuda.sparse.IntTensor",
        "torch.cuda.sparse.LongTensor",
        "torch.cuda.sparse.ShortTensor",
        "torch.device",
        "torch.float16",
        "torch.float32",
        "torch.float4_e2m1fn_x2",
        "torch.float64",
        "torch.float8_e4m3fn",
        "torch.float8_e4m3fnuz",
        "torch.float8_e5m2",
        "torch.float8_e5m2fnuz",
        "torch.float8_e8m0fnu",
        "torch.int1",
        "torch.int16",
        "torch.int2",
        "torch.int3",
        "torch.int32",
        "torch.int4",
        "torch.int5",
        "torch.int6",
        "torch.int64",
        "torch.int7",
        "torch.int8",
        "torch.nn.parameter.Parameter",
        "torch.per_channel_affine",
        "torch.per_channel_affine_float_qparams",
        "torch.per_channel_symmetric",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.qint32",
        "torch.qint8",
        "torch.quint2x4",
        "torch.quint4x2",
        "torch.quint8",
        "torch.serialization._get_layout",
        "torch.sparse.BFloat16Tensor",
        "torch.sparse.ByteTensor",
        "torch.sparse.CharTensor",
        "torch.sparse.DoubleTensor",
        "torch.sparse.FloatTensor",
        "torch.sparse.HalfTensor",
        "torch.sparse.IntTensor",
        "torch.sparse.LongTensor",
        "torch.sparse.ShortTensor",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.uint1",
        "torch.uint16",
        "torch.uint2",
        "torch.uint3",
        "torch.uint32",
        "torch.uint4",
        "torch.uint5",
        "torch.uint6",
        "torch.uint64",
        "torch.uint7",
        "torch.uint8",
    )
)

# Opcodes torch's weights-only unpickler implements (protocol 2, as torch.save writes).
WEIGHTS_ONLY_OPCODES: frozenset[str] = frozenset(
    (
        "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
        "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE",
        "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2",
        "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET",
        "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP",
    )
)  # fmt: skip

# Modules torch refuses by name even if someone allow-listed them.
BLOCKED_MODULES = frozenset(("sys", "os", "posix", "nt"))

# Globals that mean "this pickle runs code" when torch.load(weights_only=False) loads it.
_DANGEROUS_PREFIXES = (
    "os.", "posix.", "nt.", "sys.", "subprocess.", "builtins.eval", "builtins.exec",
    "builtins.compile", "builtins.getattr", "builtins.__import__", "builtins.open",
    "builtins.setattr", "builtins.globals", "importlib.", "pickle.", "_pickle.", "marshal.",
    "runpy.", "shutil.", "socket.", "pty.", "code.", "types.CodeType", "types.FunctionType",
    "copyreg.extension",
)  # fmt: skip

# pickletools' names for the opcode bytes (kept here: importing pickletools costs 20 ms).
_OPCODE_NAMES = {
    0x28: "MARK",
    0x29: "EMPTY_TUPLE",
    0x2E: "STOP",
    0x30: "POP",
    0x31: "POP_MARK",
    0x32: "DUP",
    0x42: "BINBYTES",
    0x43: "SHORT_BINBYTES",
    0x46: "FLOAT",
    0x47: "BINFLOAT",
    0x49: "INT",
    0x4A: "BININT",
    0x4B: "BININT1",
    0x4C: "LONG",
    0x4D: "BININT2",
    0x4E: "NONE",
    0x50: "PERSID",
    0x51: "BINPERSID",
    0x52: "REDUCE",
    0x53: "STRING",
    0x54: "BINSTRING",
    0x55: "SHORT_BINSTRING",
    0x56: "UNICODE",
    0x58: "BINUNICODE",
    0x5D: "EMPTY_LIST",
    0x61: "APPEND",
    0x62: "BUILD",
    0x63: "GLOBAL",
    0x64: "DICT",
    0x65: "APPENDS",
    0x67: "GET",
    0x68: "BINGET",
    0x69: "INST",
    0x6A: "LONG_BINGET",
    0x6C: "LIST",
    0x6F: "OBJ",
    0x70: "PUT",
    0x71: "BINPUT",
    0x72: "LONG_BINPUT",
    0x73: "SETITEM",
    0x74: "TUPLE",
    0x75: "SETITEMS",
    0x7D: "EMPTY_DICT",
    0x80: "PROTO",
    0x81: "NEWOBJ",
    0x82: "EXT1",
    0x83: "EXT2",
    0x84: "EXT4",
    0x85: "TUPLE1",
    0x86: "TUPLE2",
    0x87: "TUPLE3",
    0x88: "NEWTRUE",
    0x89: "NEWFALSE",
    0x8A: "LONG1",
    0x8B: "LONG4",
    0x8C: "SHORT_BINUNICODE",
    0x8D: "BINUNICODE8",
    0x8E: "BINBYTES8",
    0x8F: "EMPTY_SET",
    0x90: "ADDITEMS",
    0x91: "FROZENSET",
    0x92: "NEWOBJ_EX",
    0x93: "STACK_GLOBAL",
    0x94: "MEMOIZE",
    0x95: "FRAME",
    0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}  # fmt: skip


@dataclass(frozen=True)
class WeightsOnlyVerdict:
    accepted: bool
    refused_globals: tuple[str, ...]
    unsupported_opcodes: tuple[str, ...]
    dangerous_globals: tuple[str, ...]
    # A reason torch.load fails on the file whatever its arguments (set by the format reader).
    unloadable: str | None = None

    @property
    def reason(self) -> str:
        if self.unloadable:
            return f"torch.load cannot load this file: {self.unloadable}"
        if self.accepted:
            return "torch.load(weights_only=True) accepts this file"
        parts = []
        if self.refused_globals:
            parts.append("globals it does not allow: " + ", ".join(self.refused_globals))
        if self.unsupported_opcodes:
            parts.append(
                "pickle opcodes it does not implement: " + ", ".join(self.unsupported_opcodes)
            )
        return "torch.load(weights_only=True) refuses this file: " + "; ".join(parts)


def opcode_names(opcodes: set[int]) -> list[str]:
    return sorted(_OPCODE_NAMES.get(op, f"0x{op:02x}") for op in opcodes)


def is_dangerous(name: str) -> bool:
    return name.startswith(_DANGEROUS_PREFIXES)


def _as_torch_reads_it(name: str) -> str:
    """torch's weights-only unpickler maps Python 2 names (`__builtin__.set`) at any protocol."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def weights_only_allows(name: str) -> bool:
    torch_name = _as_torch_reads_it(name)
    return torch_name in WEIGHTS_ONLY_ALLOWED and torch_name.split(".", 1)[0] not in BLOCKED_MODULES


def weights_only_verdict(
    globals_seen: list[str], opcodes: set[int], unloadable: str | None = None
) -> WeightsOnlyVerdict:
    refused = tuple(sorted(name for name in globals_seen if not weights_only_allows(name)))
    unsupported = tuple(name for name in opcode_names(opcodes) if name not in WEIGHTS_ONLY_OPCODES)
    dangerous = tuple(sorted(name for name in globals_seen if is_dangerous(name)))
    accepted = not refused and not unsupported and unloadable is None
    return WeightsOnlyVerdict(accepted, refused, unsupported, dangerous, unloadable)
