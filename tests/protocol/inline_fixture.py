"""A small workspace model for the inlay hint, CodeLens and model report tests, and what a real
CPU forward of it binds (computed here with torch, independently of torchls's worker)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from lsprotocol import types

MODEL_SOURCE = '''\
"""A two-branch conv net: the inlay hint tests' model."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.act(self.conv(x))
        return x + y


# torchls: input=(2, 3, 16, 16)
class BranchNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.left = nn.Conv2d(width, width, 1)
        self.right = nn.Sequential(Block(width), Block(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = self.left(x), self.right(x)
        both = torch.cat([a, b], dim=1)
        flat = torch.flatten(self.pool(both), 1)
        logits = self.head(flat)
        labels = logits.argmax(dim=1)
        return {"\U0001f525": logits}["\U0001f525"]


model = BranchNet(width=8)  # torchls: input=(2, 3, 16, 16)
'''
MODEL_NAME = "BranchNet"
INPUT_SHAPE = (2, 3, 16, 16)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def describe(value: Any) -> str | None:
    """A tensor as the contract writes it: `(2, 8, 16, 16)`, dtype appended unless float32."""
    import torch

    if isinstance(value, torch.Tensor):
        text = "(" + ", ".join(str(d) for d in value.shape) + ")"
        if len(value.shape) == 1:
            text = f"({value.shape[0]},)"
        if value.dtype != torch.float32:
            text += " " + str(value.dtype).removeprefix("torch.")
        return text
    return None


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"inline_fixture_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_forward_hints(
    path: Path, run: Callable[[], None] | None = None
) -> dict[tuple[int, int], str]:
    """(line, UTF-16 character) -> the hint label, for every tensor a line of a forward in
    `path` binds or returns during `run` (by default one CPU forward of BranchNet at
    INPUT_SHAPE). A line that binds different shapes on different calls gets the set, in
    first-seen order."""
    import torch

    if run is None:
        model = getattr(load_module(path), MODEL_NAME)()

        def run() -> None:
            model(torch.randn(*INPUT_SHAPE))

    text = path.read_text()
    lines = text.split("\n")
    tree = ast.parse(text)
    # statement line (1-based) -> [(name, position)], for binds and returns inside forwards
    binds: dict[int, list[tuple[str, tuple[int, int]]]] = {}
    returns: dict[int, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "forward":
            for statement in ast.walk(node):
                if isinstance(statement, ast.Assign):
                    for target in statement.targets:
                        names = target.elts if isinstance(target, ast.Tuple) else [target]
                        for name in names:
                            assert isinstance(name, ast.Name)
                            line = lines[name.lineno - 1]
                            column = utf16(line.encode()[: name.end_col_offset].decode())
                            binds.setdefault(statement.lineno, []).append(
                                (name.id, (name.lineno - 1, column))
                            )
                elif isinstance(statement, ast.Return) and statement.value is not None:
                    value = statement.value
                    line = lines[(value.end_lineno or value.lineno) - 1]
                    column = utf16(line.encode()[: value.end_col_offset].decode())
                    returns[statement.lineno] = ((value.end_lineno or value.lineno) - 1, column)
    seen: dict[tuple[int, int], list[str]] = {}
    kinds: dict[tuple[int, int], str] = {}
    last_line: dict[int, int] = {}

    def note(position: tuple[int, int], kind: str, value: Any) -> None:
        described = describe(value)
        if described is None:
            return
        values = seen.setdefault(position, [])
        kinds[position] = kind
        if described not in values:
            values.append(described)

    def finished(frame: FrameType) -> None:
        line = last_line.get(id(frame))
        for name, position in binds.get(line or -1, []):
            note(position, "bind", frame.f_locals.get(name))

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != str(path):
            return None
        if event == "line":
            finished(frame)
            last_line[id(frame)] = frame.f_lineno
        elif event == "return":
            finished(frame)
            line = last_line.pop(id(frame), None)
            if line in returns:
                note(returns[line], "return", arg)
        return tracer

    sys.settrace(tracer)
    try:
        with torch.no_grad():
            run()
    finally:
        sys.settrace(None)
    labels = {}
    for position, values in seen.items():
        shown = values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"
        labels[position] = f"→ {shown}" if kinds[position] == "return" else f": {shown}"
    return labels


def parameter_labels(path: Path) -> dict[int, str]:
    """0-based line of each `self.x = ...` in an `__init__` of the file's classes -> the hint
    label: the parameters of `x` in each instance of that class inside BranchNet (a set when
    instances differ), counted by torch."""
    from torchls.cost.report import count

    module = load_module(path)
    model = getattr(module, MODEL_NAME)()
    tree = ast.parse(path.read_text())
    labels = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        instances = [m for _, m in model.named_modules() if type(m).__name__ == node.name]
        init = next(n for n in node.body if isinstance(n, ast.FunctionDef))
        for statement in init.body:
            if isinstance(statement, ast.Assign) and isinstance(
                statement.targets[0], ast.Attribute
            ):
                values: list[str] = []
                for instance in instances:
                    child = getattr(instance, statement.targets[0].attr)
                    shown = count(sum(p.numel() for p in child.parameters()))
                    if shown not in values:
                        values.append(shown)
                text = values[0] if len(values) == 1 else "{" + ", ".join(values) + "}"
                labels[(statement.end_lineno or statement.lineno) - 1] = f"{text} params"
    return labels


def whole(uri: str, text: str) -> types.InlayHintParams:
    return types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(
            start=types.Position(line=0, character=0),
            end=types.Position(line=text.count("\n") + 1, character=0),
        ),
    )
