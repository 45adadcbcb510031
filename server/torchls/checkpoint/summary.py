"""What a checkpoint holds, as plain data: the result of reading one, and its JSON form.

The JSON form (`CheckpointSummary.as_json()`) is the schema `torchls inspect --json` prints;
README.md documents it. Fields are only ever added within a schema version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from torchls.checkpoint.safety import WeightsOnlyVerdict

SCHEMA = "torchls.inspect/1"


@dataclass(slots=True)  # not frozen: a frozen dataclass is 4x slower to build, and there are many
class TensorInfo:
    container: str  # where the mapping that holds it sits: "" for the root, "['state_dict']"
    key: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    nbytes: int
    kind: str = "tensor"  # tensor | parameter | quantized | sparse | meta
    device: str = "cpu"
    subclass: str | None = None
    shard: str | None = None  # the shard file that holds it (sharded checkpoints)
    shared_with: str | None = None  # an earlier tensor whose storage it shares (tied weights)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "container": self.container,
            "key": self.key,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "numel": self.numel,
            "bytes": self.nbytes,
            "kind": self.kind,
            "device": self.device,
        }
        if self.subclass:
            data["subclass"] = self.subclass
        if self.shard:
            data["shard"] = self.shard
        if self.shared_with:
            data["shared_with"] = self.shared_with
        return data


@dataclass(frozen=True)
class StateDictCandidate:
    """A mapping whose values are all tensors: something `load_state_dict` could take."""

    path: str  # "" for the root object, "['state_dict']", "['model']['ema']"
    keys: tuple[str, ...]
    tensors: int
    nbytes: int
    dtypes: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            "dtypes": self.dtypes,
        }


@dataclass(frozen=True)
class ContainerNode:
    path: str
    type: str
    items: int
    tensors: int  # tensors anywhere below
    children: tuple[ContainerNode, ...] = ()
    truncated: int = 0  # children not shown
    keys: tuple[str, ...] = ()  # a mapping's first keys, leaves included
    metadata: bool = False  # an OrderedDict with `_metadata`, as Module.state_dict() makes
    values: dict[str, Any] = field(default_factory=dict)  # plain leaves: {"num_classes": 10}
    nbytes: int = 0  # bytes of the tensors anywhere below

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "items": self.items,
            "tensors": self.tensors,
            "bytes": self.nbytes,
            "children": [child.as_json() for child in self.children],
        }
        if self.keys:
            data["keys"] = list(self.keys)
        if self.metadata:
            data["metadata"] = True
        if self.values:
            data["values"] = dict(self.values)
        if self.truncated:
            data["more_children"] = self.truncated
        return data


@dataclass(frozen=True)
class GlobalRef:
    name: str
    count: int
    weights_only_allowed: bool
    dangerous: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "weights_only_allowed": self.weights_only_allowed,
            "dangerous": self.dangerous,
        }


@dataclass
class CheckpointSummary:
    path: str
    format: str  # torch-zip | torch-legacy | safetensors | sharded | huggingface | pickle
    file_size: int
    details: dict[str, Any] = field(default_factory=dict)
    tree: ContainerNode | None = None
    candidates: list[StateDictCandidate] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    storage_bytes: int = 0
    globals: list[GlobalRef] = field(default_factory=list)
    weights_only: WeightsOnlyVerdict | None = None
    warnings: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        by_dtype: dict[str, dict[str, int]] = {}
        elements = 0
        nbytes = 0
        for tensor in self.tensors:
            entry = by_dtype.setdefault(tensor.dtype, {"tensors": 0, "elements": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["elements"] += tensor.numel
            entry["bytes"] += tensor.nbytes
            elements += tensor.numel
            nbytes += tensor.nbytes
        return {
            "tensors": len(self.tensors),
            "elements": elements,
            "bytes": nbytes,
            "storage_bytes": self.storage_bytes,
            "by_dtype": dict(sorted(by_dtype.items(), key=lambda item: -item[1]["bytes"])),
        }

    def as_json(self, tensors: bool = True) -> dict[str, Any]:
        verdict = self.weights_only
        return {
            "schema": SCHEMA,
            "path": self.path,
            "format": self.format,
            "file_size": self.file_size,
            "details": self.details,
            "tree": self.tree.as_json() if self.tree else None,
            "candidates": [candidate.as_json() for candidate in self.candidates],
            "tensors": [tensor.as_json() for tensor in self.tensors] if tensors else [],
            "totals": self.totals(),
            "globals": [ref.as_json() for ref in self.globals],
            "weights_only": None
            if verdict is None
            else {
                "accepted": verdict.accepted,
                "reason": verdict.reason,
                "refused_globals": list(verdict.refused_globals),
                "unsupported_opcodes": list(verdict.unsupported_opcodes),
                "dangerous_globals": list(verdict.dangerous_globals),
            },
            "warnings": self.warnings,
        }


def summary_json(summary: CheckpointSummary) -> str:
    """`json.dumps(summary.as_json())`, with the tensor list -- nearly all of a large summary --
    formatted directly instead of as 50,000 dicts for json to walk. A test checks both agree."""
    head = summary_head_json(summary)
    parts = []
    for t in summary.tensors:
        subclass = f',"subclass":{_quote(t.subclass)}' if t.subclass else ""
        if t.shard:
            subclass += f',"shard":{_quote(t.shard)}'
        if t.shared_with:
            subclass += f',"shared_with":{_quote(t.shared_with)}'
        parts.append(
            f'{{"container":{_quote(t.container)},"key":{_quote(t.key)},"dtype":"{t.dtype}",'
            f'"shape":[{",".join(map(str, t.shape))}],"numel":{t.numel},"bytes":{t.nbytes},'
            f'"kind":"{t.kind}","device":{_quote(t.device)}{subclass}}}'
        )
    # The head ends with `"tensors": []}`: the list goes between its brackets.
    return head[:-2] + ",".join(parts) + "]}"


def summary_head_json(summary: CheckpointSummary) -> str:
    """The summary's JSON with an empty tensor list, its last field."""
    document = summary.as_json(tensors=False)
    del document["tensors"]
    document["tensors"] = []  # last
    return json.dumps(document)


# The viewer's tensor table: one array per tensor instead of one object, in this column order
# (the last three only in rows that have one of them), so that 50,000 tensors are a third of the
# JSON to send, parse and hand to the webview.
TENSOR_COLUMNS = (
    "container", "key", "dtype", "shape", "numel", "bytes", "kind", "device", "subclass", "shard",
    "shared_with",
)  # fmt: skip
_OPTIONAL_COLUMNS = 3


def tensor_rows_json(summary: CheckpointSummary) -> str:
    """The tensors as TENSOR_COLUMNS rows, as JSON text (ASCII, like json.dumps)."""
    parts = []
    for t in summary.tensors:
        extra = ""
        if t.subclass or t.shard or t.shared_with:
            extra = "".join(
                "," + (_quote(value) if value else "null")
                for value in (t.subclass, t.shard, t.shared_with)
            )
        parts.append(
            f'[{_quote(t.container)},{_quote(t.key)},"{t.dtype}",'
            f"[{','.join(map(str, t.shape))}],{t.numel},{t.nbytes},"
            f'"{t.kind}",{_quote(t.device)}{extra}]'
        )
    return "[" + ",".join(parts) + "]"


def tensors_from_rows(rows: list[list[Any]]) -> list[dict[str, Any]]:
    """The report's tensor objects (TensorInfo.as_json) from TENSOR_COLUMNS rows."""
    required = len(TENSOR_COLUMNS) - _OPTIONAL_COLUMNS
    tensors = []
    for row in rows:
        tensor = dict(zip(TENSOR_COLUMNS[:required], row, strict=False))
        for name, value in zip(TENSOR_COLUMNS[required:], row[required:], strict=False):
            if value:
                tensor[name] = value
        tensors.append(tensor)
    return tensors
