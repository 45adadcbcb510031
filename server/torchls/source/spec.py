"""Input shapes as users write them: `(1, 3, 224, 224)`, `(1, 128):long`, several at once.

The same small language serves the `# torchls: input=` comment, the `torchls.defaultInputShapes`
setting and `torchls profile --input`, so a shape that works in one place works in all.
"""

from __future__ import annotations

import ast
import json
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
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "bool": "bool",
    "uint8": "uint8",
    # spectral models (FFT layers, complex-valued networks) take complex inputs
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
}
MAX_DIMS = 8
MAX_INPUTS = 16
MAX_ELEMENTS = 1 << 48  # meta tensors cost nothing, but a typo like 10**30 is still a typo


class SpecError(ValueError):
    """An input shape that cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's shape and dtype. A dimension may be a name (`(1, L):long`): the size that
    `torchls profile --sweep L=...` varies; `nominal` is the value written with it (`L=512`)."""

    shape: tuple[int | str, ...]
    dtype: str = "float32"
    nominal: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    def describe(self) -> str:
        dims = ", ".join(
            f"{d}={self.nominal}" if isinstance(d, str) and self.nominal else str(d)
            for d in self.shape
        )
        text = f"({dims}{',' if len(self.shape) == 1 else ''})"
        return text if self.dtype == "float32" else f"{text}:{_short_dtype(self.dtype)}"

    def symbols(self) -> dict[str, int | None]:
        return {d: self.nominal for d in self.shape if isinstance(d, str)}


def _short_dtype(dtype: str) -> str:
    return {"int64": "long", "float16": "half"}.get(dtype, dtype)


@dataclass(frozen=True)
class TupleSpec:
    """A tuple of inputs passed as one argument: an LSTM's `(h, c)`."""

    items: tuple[InputItem, ...]

    def as_json(self) -> dict[str, Any]:
        return {"tuple": [item.as_json() for item in self.items]}

    def symbols(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for item in self.items:
            for name, value in item.symbols().items():
                found[name] = found.get(name) or value
        return found

    def describe(self) -> str:
        inner = ", ".join(item.describe() for item in self.items)
        return f"({inner}{',' if len(self.items) == 1 else ''})"


@dataclass(frozen=True)
class ValueSpec:
    """A plain value forward() takes beside its tensors: `mode='val'`, `steps=4`,
    `fmap_dims={'h': 8, 'w': 8}`. Kept as JSON text (the spec stays hashable)."""

    text: str

    def as_json(self) -> dict[str, Any]:
        return {"value": json.loads(self.text)}

    def describe(self) -> str:
        return repr(json.loads(self.text))

    def symbols(self) -> dict[str, int | None]:
        return {}


InputItem = TensorSpec | TupleSpec | ValueSpec


@dataclass(frozen=True)
class InputSpec:
    """The inputs of one forward call and where they came from, in words. `tensors` are the
    positional arguments (a tensor, or a tuple of them), `keywords` the ones passed by name."""

    tensors: tuple[InputItem, ...]
    source: str
    guess: bool = False
    notes: tuple[str, ...] = field(default=())
    keywords: tuple[tuple[str, InputItem], ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "tensors": [t.as_json() for t in self.tensors],
            "source": self.source,
            "guess": self.guess,
        }
        if self.keywords:  # absent when empty: the JSON of plain shapes is what it always was
            value["kwargs"] = {name: item.as_json() for name, item in self.keywords}
        if self.symbol:  # absent without a named dimension, as above
            value["symbol"] = self.symbol
            if self.nominal is not None:
                value["nominal"] = self.nominal
        return value

    @property
    def symbol(self) -> str | None:
        """The named dimension of these inputs (`L` in `(1, L):long`), or None."""
        found = _symbols([*self.tensors, *(item for _, item in self.keywords)])
        return next(iter(found), None)

    @property
    def nominal(self) -> int | None:
        """The value written with the named dimension (`L=512`), or None."""
        found = _symbols([*self.tensors, *(item for _, item in self.keywords)])
        return next(iter(found.values()), None)

    def describe(self) -> str:
        parts = [t.describe() for t in self.tensors]
        parts += [f"{name}={item.describe()}" for name, item in self.keywords]
        return ", ".join(parts)


def _symbols(items: list[InputItem]) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for item in items:
        for name, value in item.symbols().items():
            found[name] = found.get(name) or value
    return found


def symbol_of_json(spec: dict[str, Any]) -> str | None:
    """The named dimension of a job's input JSON (`"L"` where a dim is the string `"L"`)."""
    names: set[str] = set()

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            if "tuple" in item:
                for inner in item["tuple"]:
                    walk(inner)
            elif "shape" in item:
                names.update(d for d in item["shape"] if isinstance(d, str))

    for item in [*(spec.get("tensors") or []), *(spec.get("kwargs") or {}).values()]:
        walk(item)
    return min(names) if names else None


def substitute_json(spec: dict[str, Any], symbol: str, value: int) -> dict[str, Any]:
    """A copy of a job's input JSON with every dim named `symbol` set to `value`: the inputs
    of one point of a sweep, or of the nominal profile."""

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            if "tuple" in item:
                return {**item, "tuple": [walk(inner) for inner in item["tuple"]]}
            if "shape" in item:
                shape = [value if d == symbol else d for d in item["shape"]]
                return {**item, "shape": shape}
        return item

    concrete = {key: item for key, item in spec.items() if key not in {"symbol", "nominal"}}
    concrete["tensors"] = [walk(item) for item in spec.get("tensors") or []]
    if spec.get("kwargs"):
        concrete["kwargs"] = {name: walk(item) for name, item in spec["kwargs"].items()}
    return concrete


# sizes a hover sweeps when the input names a dimension without a value: sequence lengths and
# image sides alike are powers of two in most code
DEFAULT_SWEEP = (64, 128, 256, 512)


def sweep_values(nominal: int | None) -> list[int]:
    """The sizes swept where the user listed none (a `# torchls: input=(1, L=512)` comment):
    a quarter, a half, the value and twice it (multiples of the quarter, so a stride that
    divides the value divides them all); DEFAULT_SWEEP without a value."""
    if nominal is None:
        return list(DEFAULT_SWEEP)
    if nominal < 4:
        return [1, 2, 3, 4]
    step = nominal // 4 if nominal % 4 == 0 else 1
    return (
        [step, 2 * step, 4 * step, 8 * step]
        if step > 1
        else [nominal, 2 * nominal, 3 * nominal, 4 * nominal]
    )


def default_sweep(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The job's `sweep` params for inputs that name a dimension and list no sizes (the hover
    of a class under `# torchls: input=(1, L):long`); None without a named dimension."""
    symbol = symbol_of_json(spec)
    if symbol is None:
        return None
    nominal = spec.get("nominal")
    return {"symbol": symbol, "values": sweep_values(nominal if isinstance(nominal, int) else None)}


def item_from_json(value: dict[str, Any]) -> InputItem:
    if "value" in value:
        return ValueSpec(json.dumps(value["value"]))
    if "tuple" in value:
        return TupleSpec(tuple(item_from_json(item) for item in value["tuple"]))
    return TensorSpec(tuple(value["shape"]), str(value.get("dtype", "float32")))


def describe_json(spec: dict[str, Any]) -> str:
    """`(35, 1):long, ((2, 1, 200), (2, 1, 200))`: the inputs of a job's JSON, as written."""
    parts = [item_from_json(item).describe() for item in spec.get("tensors") or []]
    for name, item in (spec.get("kwargs") or {}).items():
        parts.append(f"{name}={item_from_json(item).describe()}")
    return ", ".join(parts)


_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(?!=)")
_DTYPE = re.compile(r"\s*:\s*([A-Za-z0-9_.]+)")
# a named dimension: `L`, `L=512` (the name is ASCII: it is written on a command line too)
_SYMBOL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\s*=\s*([0-9]+))?")


def parse_shapes(text: str) -> tuple[InputItem, ...]:
    """The positional inputs of `parse_inputs`; keyword inputs are an error here."""
    items, keywords = parse_inputs(text)
    if keywords:
        raise SpecError(f"the input {text.strip()!r} names {keywords[0][0]!r}; give shapes only")
    return items


def parse_inputs(text: str) -> tuple[tuple[InputItem, ...], tuple[tuple[str, InputItem], ...]]:
    """Read the inputs of one forward call, positional then by name:

    `(1, 3, 224, 224)`, `1,3,224,224`, `(1, 128):long`, `(1, 3, 32, 32), (1, 10)` (two
    tensors), `(35, 1):long, ((2, 1, 200), (2, 1, 200))` (a tensor and a tuple of two, an
    LSTM's `(h, c)`), `input_ids=(1, 128):long, attention_mask=(1, 128):long`."""
    text = text.strip()
    if not text:
        raise SpecError("an input shape is empty; write it like (1, 3, 224, 224)")
    if text[0] not in "([" and _NAME.match(text) is None:
        text = f"({text})" if ":" not in text else "({}):{}".format(*text.rsplit(":", 1))
    # A single outer pair of brackets around a list of shapes: [(1, 3), (1, 4)] or ((1, 3), (1, 4))
    inner = text[1:-1].strip() if len(text) > 2 and text[-1] in ")]" else ""
    if inner.startswith(("(", "[")) and _balanced(inner) and _closes_at_end(text):
        text = inner
    reader = _Reader(text)
    positional: list[InputItem] = []
    keywords: list[tuple[str, InputItem]] = []
    while True:
        named = _NAME.match(text, reader.position)
        if named is not None:
            reader.position = named.end()
            if named.group(1) in {name for name, _ in keywords}:
                raise SpecError(f"the input {text!r} names {named.group(1)!r} twice")
            keywords.append((named.group(1), reader.item_or_value()))
        elif keywords:
            raise SpecError(
                f"cannot read the input {text!r}: a shape without a name after "
                f"{keywords[-1][0]}=...; put the named inputs last"
            )
        else:
            positional.append(reader.item_or_value() if positional else reader.item(0))
        reader.skip_spaces()
        if reader.position >= len(text):
            break
        if text[reader.position] != ",":
            raise SpecError(
                f"cannot read the input shape {text!r}: expected a comma after "
                f"{text[: reader.position].strip()[-30:]!r}"
            )
        reader.position += 1
        reader.skip_spaces()
        if reader.position >= len(text):
            break
    everything = [*positional, *(item for _, item in keywords)]
    count = sum(_count(item) for item in everything)
    if count > MAX_INPUTS:
        raise SpecError(f"{count} inputs is more than torchls takes ({MAX_INPUTS})")
    _check_symbols(everything, text)
    return tuple(positional), tuple(keywords)


def _check_symbols(items: list[InputItem], text: str) -> None:
    """One named dimension per input, with at most one value: a sweep varies one size."""
    names: list[str] = []
    values: dict[int, None] = {}
    stack = list(items)
    while stack:
        item = stack.pop(0)
        if isinstance(item, TupleSpec):
            stack[:0] = item.items
        elif isinstance(item, TensorSpec):
            names += [d for d in dict.fromkeys(item.shape) if isinstance(d, str) and d not in names]
            if item.nominal is not None:
                values[item.nominal] = None
    if len(names) > 1:
        raise SpecError(
            f"the input {text!r} names {len(names)} dimensions ({', '.join(names)}); torchls "
            f"varies one at a time: write a number for all but one"
        )
    if len(values) > 1:
        shown = " and ".join(f"{names[0]}={value}" for value in values)
        raise SpecError(f"the input {text!r} gives {shown}; give {names[0]} one value")


def _count(item: InputItem) -> int:
    if isinstance(item, ValueSpec):
        return 0
    return sum(_count(inner) for inner in item.items) if isinstance(item, TupleSpec) else 1


def _closes_at_end(text: str) -> bool:
    """Whether the bracket that opens `text` is the one that closes it: `((1, 3), (1, 4))`,
    not `(1, 3), (1, 4)`."""
    depth = 0
    for index, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth == 0:
                return index == len(text) - 1
    return False


class _Reader:
    """A small recursive reader: a shape `(1, 3):long`, or a tuple of items `((1, 3), (1, 4))`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def skip_spaces(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def item_or_value(self) -> InputItem:
        """A shape or tuple of shapes, or a plain Python value (a number, a string, True,
        None, a dict or list of those) where one does not start with a bracket."""
        self.skip_spaces()
        text = self.text
        if self.position < len(text) and text[self.position] in "([":
            return self.item(0)
        start, depth, quote = self.position, 0, ""
        end = start
        while end < len(text):
            char = text[end]
            if quote:
                if char == "\\":
                    end += 1
                elif char == quote:
                    quote = ""
            elif char in "'\"":
                quote = char
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
            elif char == "," and depth == 0:
                break
            end += 1
        written = text[start:end].strip()
        self.position = end
        return _value(written, text)

    def item(self, depth: int) -> InputItem:
        text = self.text
        self.skip_spaces()
        if depth > 3:
            raise SpecError(f"the input {text!r} nests tuples too deeply")
        if self.position >= len(text) or text[self.position] not in "([":
            raise SpecError(
                f"cannot read the input shape {text!r} at {text[self.position :][:20]!r}; "
                "write it like (1, 3, 224, 224) or (1, 128):long"
            )
        start = self.position
        self.position += 1
        self.skip_spaces()
        if self.position < len(text) and text[self.position] in "([":
            items: list[InputItem] = []
            while True:
                items.append(self.item(depth + 1))
                self.skip_spaces()
                if self.position < len(text) and text[self.position] == ",":
                    self.position += 1
                    self.skip_spaces()
                if self.position < len(text) and text[self.position] in ")]":
                    self.position += 1
                    return TupleSpec(tuple(items))
                if self.position >= len(text) or text[self.position] not in "([":
                    raise SpecError(
                        f"cannot read the input {text!r}: expected a shape or a closing "
                        f"bracket at {text[self.position :][:20]!r}"
                    )
        end = self.position
        while end < len(text) and text[end] not in ")]([":
            end += 1
        if end >= len(text) or text[end] not in ")]":
            raise SpecError(
                f"cannot read the input shape {text!r} at {text[start:][:20]!r}; "
                "write it like (1, 3, 224, 224) or (1, 128):long"
            )
        dims = text[self.position : end]
        self.position = end + 1
        dtype = _DTYPE.match(text, self.position)
        if dtype is not None:
            self.position = dtype.end()
        return _tensor(dims, dtype.group(1) if dtype else None, text)


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


def _value(written: str, whole: str) -> ValueSpec:
    try:
        value = ast.literal_eval(written)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = _NOT_PLAIN
    if written and _plain(value):
        return ValueSpec(json.dumps(_as_json(value)))
    raise SpecError(
        f"cannot read {written[:30]!r} in the input {whole!r}: give a shape like (1, 3, 224, "
        "224) or a plain value (a number, a string, True/False/None, a dict or list of them)"
    )


_NOT_PLAIN = object()


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, float) or value == value  # no NaN
    if isinstance(value, (list, tuple)):
        return len(value) <= 64 and all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return len(value) <= 64 and all(
            isinstance(key, str) and _plain(item, depth + 1) for key, item in value.items()
        )
    return False


def _as_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_as_json(item) for item in value]
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    return value


def _tensor(dims_text: str, dtype_text: str | None, whole: str) -> TensorSpec:
    parts = [part.strip() for part in dims_text.split(",")]
    if parts and parts[-1] == "":
        parts.pop()
    if not parts:
        raise SpecError(f"the input shape {whole!r} has an empty ()")
    dims: list[int | str] = []
    nominal: int | None = None
    for part in parts:
        named = _SYMBOL.fullmatch(part)
        if named is not None:
            name, value = named.group(1), named.group(2)
            if value is not None:
                if int(value) == 0:
                    raise SpecError(f"the input shape {whole!r} gives {name}=0; a size is >= 1")
                if nominal is not None and nominal != int(value):
                    raise SpecError(
                        f"the input shape {whole!r} gives {name}={nominal} and "
                        f"{name}={value}; give {name} one value"
                    )
                nominal = int(value)
            dims.append(name)
            continue
        if not (part.isascii() and part.isdigit()) or int(part) == 0:
            raise SpecError(
                f"the input shape {whole!r} has {part!r} where a positive whole number (or a "
                "named size like L or L=512) belongs"
            )
        dims.append(int(part))
    if len(dims) > MAX_DIMS:
        raise SpecError(
            f"the input shape {whole!r} has {len(dims)} dimensions (at most {MAX_DIMS})"
        )
    elements = 1
    for dim in dims:
        elements *= dim if isinstance(dim, int) else nominal or 1
    if elements > MAX_ELEMENTS:
        raise SpecError(f"the input shape {whole!r} has {elements:.3g} elements; is it a typo?")
    dtype = "float32"
    if dtype_text is not None:
        key = dtype_text.lower().removeprefix("torch.")
        if key not in DTYPES:
            names = ", ".join(
                sorted(
                    {"float", "half", "bfloat16", "double", "long", "int32", "bool", "complex64"}
                )
            )
            raise SpecError(f"unknown dtype {dtype_text!r} in {whole!r}; use one of {names}")
        dtype = DTYPES[key]
    return TensorSpec(tuple(dims), dtype, nominal)
