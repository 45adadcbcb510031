"""Input shapes as users write them: `(1, 3, 224, 224)`, `(1, 128):long`, several at once.

The same small language serves the `# torchls: input=` comment, the `torchls.defaultInputShapes`
setting and `torchls profile --input`, so a shape that works in one place works in all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Names a user may write after the colon, and the torch dtype each one means.
DTYPES = {
    "float": "float32",
    "float32": "float32",
    "fp32": "float32",
    "half": "float16",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "double": "float64",
    "float64": "float64",
    "long": "int64",
    "int64": "int64",
    "int": "int64",
    "int32": "int32",
    "bool": "bool",
    "uint8": "uint8",
}
MAX_DIMS = 8
MAX_INPUTS = 16
MAX_ELEMENTS = 1 << 48  # meta tensors cost nothing, but a typo like 10**30 is still a typo


class SpecError(ValueError):
    """An input shape that cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def as_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        text = f"({dims}{',' if len(self.shape) == 1 else ''})"
        return text if self.dtype == "float32" else f"{text}:{_short_dtype(self.dtype)}"


def _short_dtype(dtype: str) -> str:
    return {"int64": "long", "float16": "half"}.get(dtype, dtype)


@dataclass(frozen=True)
class InputSpec:
    """The inputs of one forward call and where they came from, in words."""

    tensors: tuple[TensorSpec, ...]
    source: str
    guess: bool = False
    notes: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "tensors": [t.as_json() for t in self.tensors],
            "source": self.source,
            "guess": self.guess,
        }

    def describe(self) -> str:
        return ", ".join(t.describe() for t in self.tensors)


_ITEM = re.compile(r"\s*[\(\[]([^()\[\]]*)[\)\]]\s*(?::\s*([A-Za-z0-9_.]+))?\s*")


def parse_shapes(text: str) -> tuple[TensorSpec, ...]:
    """Read `(1, 3, 224, 224)`, `(1, 3, 224, 224), (1, 10)`, `(1, 128):long` or `1,3,224,224`."""
    text = text.strip()
    if not text:
        raise SpecError("an input shape is empty; write it like (1, 3, 224, 224)")
    if text[0] not in "([":
        text = f"({text})" if ":" not in text else "({}):{}".format(*text.rsplit(":", 1))
    # A single outer pair of brackets around a list of shapes: [(1, 3), (1, 4)] or ((1, 3), (1, 4))
    inner = text[1:-1].strip() if len(text) > 2 and text[-1] in ")]" else ""
    if inner.startswith(("(", "[")) and _balanced(inner):
        text = inner
    tensors: list[TensorSpec] = []
    position = 0
    while position < len(text):
        match = _ITEM.match(text, position)
        if match is None:
            raise SpecError(
                f"cannot read the input shape {text!r} at {text[position:][:20]!r}; "
                "write it like (1, 3, 224, 224) or (1, 128):long"
            )
        tensors.append(_tensor(match.group(1), match.group(2), text))
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise SpecError(
                    f"cannot read the input shape {text!r}: expected a comma after "
                    f"{match.group(0).strip()!r}"
                )
            position += 1
            if not text[position:].strip():
                break
    if len(tensors) > MAX_INPUTS:
        raise SpecError(f"{len(tensors)} inputs is more than torchls takes ({MAX_INPUTS})")
    return tuple(tensors)


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _tensor(dims_text: str, dtype_text: str | None, whole: str) -> TensorSpec:
    parts = [part.strip() for part in dims_text.split(",")]
    if parts and parts[-1] == "":
        parts.pop()
    if not parts:
        raise SpecError(f"the input shape {whole!r} has an empty ()")
    dims: list[int] = []
    for part in parts:
        if not (part.isascii() and part.isdigit()) or int(part) == 0:
            raise SpecError(
                f"the input shape {whole!r} has {part!r} where a positive whole number belongs"
            )
        dims.append(int(part))
    if len(dims) > MAX_DIMS:
        raise SpecError(
            f"the input shape {whole!r} has {len(dims)} dimensions (at most {MAX_DIMS})"
        )
    elements = 1
    for dim in dims:
        elements *= dim
    if elements > MAX_ELEMENTS:
        raise SpecError(f"the input shape {whole!r} has {elements:.3g} elements; is it a typo?")
    dtype = "float32"
    if dtype_text is not None:
        key = dtype_text.lower().removeprefix("torch.")
        if key not in DTYPES:
            names = ", ".join(sorted({"float", "half", "bfloat16", "double", "long", "int32"}))
            raise SpecError(f"unknown dtype {dtype_text!r} in {whole!r}; use one of {names}")
        dtype = DTYPES[key]
    return TensorSpec(tuple(dims), dtype)
