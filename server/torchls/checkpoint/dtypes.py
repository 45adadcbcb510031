"""torch's dtypes and storage classes as plain data: names and sizes, no torch needed.

The tests compare these tables with torch's own (`torch.dtype.itemsize`, the storage map), so
they cannot drift silently when torch adds a dtype.
"""

from __future__ import annotations

# dtype name (as in `torch.float32`) -> bytes per element.
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    "int1": 1, "int2": 1, "int3": 1, "int4": 1, "int5": 1, "int6": 1, "int7": 1,
    "uint1": 1, "uint2": 1, "uint3": 1, "uint4": 1, "uint5": 1, "uint6": 1, "uint7": 1,
}  # fmt: skip

# Aliases torch also exposes (`torch.float` is float32, ...), as pickles may name them.
ALIASES: dict[str, str] = {
    "float": "float32", "double": "float64", "half": "float16", "cfloat": "complex64",
    "cdouble": "complex128", "chalf": "complex32", "long": "int64", "int": "int32",
    "short": "int16",
}  # fmt: skip

# Legacy typed-storage class name -> dtype. `UntypedStorage` holds bytes.
STORAGE_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "QInt8Storage": "qint8", "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8", "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}  # fmt: skip

# safetensors dtype codes -> torch dtype names.
SAFETENSORS_DTYPE: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64", "C128": "complex128",
}  # fmt: skip


def dtype_from_global(module: str, name: str) -> str | None:
    """'float32' for the global `torch.float32` (or `torch.float`), None for anything else."""
    if module != "torch":
        return None
    name = ALIASES.get(name, name)
    return name if name in ITEMSIZE else None


def storage_dtype(module: str, name: str) -> str | None:
    """'float32' for `torch.FloatStorage` (or `torch.cuda.FloatStorage`), else None."""
    if module not in ("torch", "torch.cuda", "torch.storage"):
        return None
    return STORAGE_DTYPE.get(name)
