"""Inlay shapes (issue 19, item 1): the `shapes` a profile job records equal what a real CPU
forward binds.

Each model is a workspace file written here. The job runs it in the worker (on the meta device,
with the shape tracer); the reference runs the same file in this process, for real, on the CPU
with random tensors, watched by a different tracer written below: after each line of the file's
frames it compares the frame's locals (and `self`'s attributes) with the line before, by object
identity and in-place version, and records what changed under the line that ran. The two must
agree name for name, line for line, value for value.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from tests.profiling.test_profile_job import Runner, import_fixture

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    made = Runner(tmp_path_factory.mktemp("inlay_shapes"))
    yield made
    made.close()


# -- the reference: a real CPU forward, watched line by line ------------------------------------


def describe(value: Any, depth: int = 0) -> str | None:
    """The contract's description of a value, or None when it holds no tensor."""
    if isinstance(value, torch.Tensor):
        dims = ", ".join(str(size) for size in value.shape)
        text = f"({dims},)" if value.dim() == 1 else f"({dims})"
        return text if value.dtype == torch.float32 else f"{text} {str(value.dtype)[6:]}"
    if depth >= 3:
        return None
    if isinstance(value, (tuple, list)):
        parts = [describe(item, depth + 1) for item in value[:6]]
        if all(part is None for part in parts):
            return None
        shown = [
            part if part is not None else repr(item)
            for part, item in zip(parts, value, strict=False)
        ]
        if len(value) > 6:
            shown.append("…")
        inner = ", ".join(shown)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(shown) == 1 else f"({inner})"
    if isinstance(value, dict):
        parts = [describe(item, depth + 1) for item in value.values()]
        if all(part is None for part in parts):
            return None
        return "{" + ", ".join(f"{k}: {p}" for k, p in zip(value, parts, strict=True)) + "}"
    return None


def _snapshot(frame: FrameType) -> dict[str, tuple[Any, int]]:
    """The frame's values by name (`self.x` for attributes), each with its in-place version."""
    values: dict[str, Any] = dict(frame.f_locals)
    owner = values.get("self")
    if isinstance(owner, torch.nn.Module):
        for name, value in vars(owner).items():
            if isinstance(value, torch.Tensor):
                values[f"self.{name}"] = value
    return {
        name: (value, value._version if isinstance(value, torch.Tensor) else 0)
        for name, value in values.items()
    }


def reference_shapes(path: Path, model: Any, *inputs: Any) -> dict[tuple[int, str], list[Any]]:
    """(0-based line, name or "return") -> [descriptions in first-seen order, times seen]."""
    filename = str(path)
    seen: dict[tuple[int, str], list[Any]] = {}
    state: dict[int, tuple[int, dict[str, tuple[Any, int]]]] = {}  # per frame

    def note(key: tuple[int, str], value: Any) -> None:
        described = describe(value)
        if described is None:
            return
        entry = seen.setdefault(key, [[], 0])
        entry[1] += 1
        if described not in entry[0]:
            entry[0].append(described)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        now = _snapshot(frame)
        last = state.get(id(frame))
        if last is not None:
            line, before = last
            for name, (value, version) in now.items():
                old = before.get(name)
                if old is None or old[0] is not value or old[1] != version:
                    note((line - 1, name), value)
        if event == "return":
            note((frame.f_lineno - 1, "return"), arg)
            state.pop(id(frame), None)
        else:
            state[id(frame)] = (frame.f_lineno, now)
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename == filename and not code.co_name.startswith("<"):
            return local
        return None

    model.eval()
    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        sys.settrace(previous)
    return seen


def job_shapes(result: dict[str, Any], path: Path) -> dict[tuple[int, str], list[Any]]:
    files = [f for f in result["shapes"] if Path(f["file"]).resolve() == path.resolve()]
    assert len(files) == 1, result["shapes"]
    found: dict[tuple[int, str], list[Any]] = {}
    for hint in files[0]["hints"]:
        name = hint["name"] if hint["kind"] == "bind" else "return"
        assert (hint["line"], name) not in found
        found[(hint["line"], name)] = [hint["values"], hint["calls"]]
    return found


def check_against_cpu(
    runner: Runner, source: str, name: str, *inputs: Any, module: str
) -> dict[str, Any]:
    """Profiles `name` in a file of `source`, runs it for real, and compares the shapes."""
    path = runner.write(source, name=f"{module}.py")
    result = runner.ok(path, name, kind="class")
    real = import_fixture(path, f"inlay_{module}")
    torch.manual_seed(0)
    expected = reference_shapes(path, getattr(real, name)(), *inputs)
    got = job_shapes(result, path)
    assert got == expected
    text = path.read_text()
    assert (
        files_of(result)[str(path.resolve())]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    )
    # each bind hint sits just after its name, in code points
    lines = text.splitlines()
    for hint in files_of(result)[str(path.resolve())]["hints"]:
        if hint["kind"] == "bind":
            line = lines[hint["line"]]
            assert line[hint["character"] - len(hint["name"]) : hint["character"]] == hint["name"]
        else:
            assert lines[hint["line"]][: hint["character"]].lstrip().startswith("return ")
    return result


def files_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(Path(f["file"]).resolve()): f for f in result["shapes"]}


# -- the models ---------------------------------------------------------------------------------

CONV = """
import torch
from torch import nn


class SmallConvNet(nn.Module):  # torchls: input=(2, 3, 32, 32)
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        größe = self.conv2(x)
        pooled = self.pool(größe)
        batch = pooled.shape[0]
        flat = pooled.view(batch, -1)
        logits = self.fc(flat)
        labels = logits.argmax(dim=1)
        total = logits.sum()
        return logits, labels
"""


def test_a_conv_net_shows_the_shapes_a_real_forward_binds(runner: Runner) -> None:
    result = check_against_cpu(
        runner, CONV, "SmallConvNet", torch.randn(2, 3, 32, 32), module="conv_net"
    )
    hints = {h["name"] or "return": h for h in result["shapes"][0]["hints"]}
    # what a reader of the forward expects to see, spelled out
    assert hints["x"]["values"] == ["(2, 16, 32, 32)"]
    assert hints["größe"]["values"] == ["(2, 32, 16, 16)"]
    assert hints["labels"]["values"] == ["(2,) int64"]
    assert hints["total"]["values"] == ["()"]
    assert hints["return"]["values"] == ["((2, 10), (2,) int64)"]
    assert "batch" not in hints  # an int is not a tensor
    assert hints["x"]["function"] == "SmallConvNet.forward"


TRANSFORMER = """
import math

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(batch, length, self.heads, -1).transpose(1, 2)
        k = k.view(batch, length, self.heads, -1).transpose(1, 2)
        v = v.view(batch, length, self.heads, -1).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(
            q.size(-1)
        )
        self.weights = scores.softmax(dim=-1)
        mixed = (self.weights @ v).transpose(1, 2).reshape(batch, length, width)
        return self.out(mixed)


class Encoder(nn.Module):  # torchls: input=(2, 12):long
    def __init__(self, vocab=50, width=32, heads=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.TransformerEncoderLayer(width, heads, 64, batch_first=True)
        self.attention = Attention(width, heads)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        hidden = self.embed(tokens)
        hidden = self.layer(hidden)
        mixed: torch.Tensor = self.attention(hidden)
        hidden = hidden + mixed
        logits = self.head(hidden)
        return {"logits": logits, "hidden": hidden}
"""


def test_a_transformer_encoder_with_its_own_attention(runner: Runner) -> None:
    tokens = torch.randint(0, 50, (2, 12))
    result = check_against_cpu(runner, TRANSFORMER, "Encoder", tokens, module="encoder")
    rows = result["shapes"][0]["hints"]
    hints = {(h["function"], h["name"]): h for h in rows}
    assert [h["values"] for h in rows if h["name"] == "q"] == [["(2, 12, 32)"], ["(2, 4, 12, 8)"]]
    assert hints[("Attention.forward", "self.weights")]["values"] == ["(2, 4, 12, 12)"]
    assert hints[("Encoder.forward", "")]["values"] == [
        "{logits: (2, 12, 50), hidden: (2, 12, 32)}"
    ]
    # the multi-line statement's hint sits after its target, on its first line
    scores = hints[("Attention.forward", "scores")]
    assert scores["values"] == ["(2, 4, 12, 12)"]


LSTM = """
import torch
from torch import nn


class Tagger(nn.Module):  # torchls: input=(3, 7, 10)
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(10, 20, batch_first=True)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        outputs = self.lstm(x)
        last = out[:, -1]
        scores = self.head(last)
        return scores
"""


def test_an_lstm_shows_its_tuple_outputs_element_wise(runner: Runner) -> None:
    result = check_against_cpu(runner, LSTM, "Tagger", torch.randn(3, 7, 10), module="tagger")
    hints = {h["name"]: h for h in result["shapes"][0]["hints"]}
    assert hints["out"]["values"] == ["(3, 7, 20)"]
    assert hints["h"]["values"] == hints["c"]["values"] == ["(1, 3, 20)"]
    assert hints["out"]["line"] == hints["h"]["line"] == hints["c"]["line"]
    assert hints["out"]["character"] < hints["h"]["character"] < hints["c"]["character"]
    assert hints["outputs"]["values"] == ["((3, 7, 20), ((1, 3, 20), (1, 3, 20)))"]


BRANCH = """
import torch
from torch import nn

USE_PROJECTION = True


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x):
        scaled = x * self.weight
        return scaled


class Branchy(nn.Module):  # torchls: input=(2, 8)
    def __init__(self, project=USE_PROJECTION):
        super().__init__()
        self.project = project
        self.proj = nn.Linear(8, 8)
        self.scale = Scale()
        self.step = nn.Linear(8, 8)

    def forward(self, x):
        if self.project:
            z = self.proj(x)
        else:
            z = x * 2
        seq = z.unsqueeze(1).expand(2, 4, 8)
        a = self.scale(z)
        b = self.scale(seq)
        for _ in range(3):
            z = self.step(z)
        return a.sum() + b.sum() + z.sum()
"""


def test_a_branch_and_a_module_used_twice_give_a_set(runner: Runner) -> None:
    result = check_against_cpu(runner, BRANCH, "Branchy", torch.randn(2, 8), module="branchy")
    hints = {(h["function"], h["name"], h["line"]): h for h in result["shapes"][0]["hints"]}
    scaled = next(h for (f, n, _), h in hints.items() if n == "scaled")
    assert scaled["values"] == ["(2, 8)", "(2, 4, 8)"] and scaled["calls"] == 2
    in_loop = [h for (f, n, _), h in hints.items() if n == "z" and h["calls"] == 3]
    assert len(in_loop) == 1 and in_loop[0]["values"] == ["(2, 8)"]
    # the branch not taken binds nothing
    lines = BRANCH.splitlines()
    not_taken = next(i for i, line in enumerate(lines) if "z = x * 2" in line)
    assert not any(line == not_taken for (_, _, line) in hints)


def test_shapes_that_keep_changing_are_cut_at_four(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn


        class Growing(nn.Module):  # torchls: input=(1, 4)
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                for size in range(1, 8):
                    wide = x.repeat(1, size)
                return self.fc(x)
        """,
        name="growing.py",
    )
    result = runner.ok(path, "Growing", kind="class")
    wide = next(h for h in result["shapes"][0]["hints"] if h["name"] == "wide")
    assert wide["values"] == ["(1, 4)", "(1, 8)", "(1, 12)", "(1, 16)", "… 3 more"]
    assert wide["calls"] == 7


def test_the_tracer_changes_no_count_and_can_be_turned_off(runner: Runner) -> None:
    path = runner.write(textwrap.dedent(TRANSFORMER), name="encoder_off.py")
    models = runner.targets(path)
    target = next(t for t in models.targets() if t.name == "Encoder")
    from torchls.cost.request import prepare

    params = prepare(target, models.project, str(path)).params
    traced = runner.loop.run_until_complete(runner.worker.run("profile", params))
    plain = runner.loop.run_until_complete(
        runner.worker.run("profile", {**params, "trace_shapes": False})
    )
    assert traced.ok and plain.ok
    assert plain.value["shapes"] is None
    assert traced.value["shapes"]
    assert traced.value["macs"] == plain.value["macs"]
    assert traced.value["tree"] == plain.value["tree"]


def test_unsaved_text_is_what_the_hints_are_keyed_to(runner: Runner) -> None:
    path = runner.write(LSTM, name="unsaved.py")
    edited = path.read_text().replace("last = out[:, -1]", "last = out[:, -1]  # the last step")
    models = runner.targets(path)
    target = next(t for t in models.targets() if t.name == "Tagger")
    from torchls.cost.request import prepare

    params = prepare(target, models.project, str(path)).params
    params["sources"] = {str(path): edited}
    answer = runner.loop.run_until_complete(runner.worker.run("profile", params))
    assert answer.ok, answer.message
    (shapes,) = answer.value["shapes"]
    assert shapes["sha256"] == hashlib.sha256(edited.encode()).hexdigest()
    assert shapes["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest()


NESTED = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        update = self.fc(x)
        return x + update


class Tower(nn.Module):  # torchls: input=(2, 6, 16)
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(Residual(16), nn.GELU(), Residual(16))
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        y = self.body(x)
        pooled = self.norm(y).mean(dim=1)
        return pooled
"""


def test_workspace_blocks_inside_a_torch_container_are_traced(runner: Runner) -> None:
    result = check_against_cpu(runner, NESTED, "Tower", torch.randn(2, 6, 16), module="tower")
    update = next(h for h in result["shapes"][0]["hints"] if h["name"] == "update")
    assert update["calls"] == 2 and update["values"] == ["(2, 6, 16)"]
    assert update["function"] == "Residual.forward"


def test_the_tracer_leaves_the_trace_function_and_hooks_it_found(tmp_path: Path) -> None:
    from torch.nn.modules import module as torch_module

    from torchls.worker.shapes import ShapeTracer

    path = tmp_path / "failing.py"
    path.write_text(
        "from torch import nn\n\n\nclass Failing(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n        y = self.fc(x)\n"
        "        raise ValueError('the user code fails')\n"
    )
    model = import_fixture(path, "inlay_failing").Failing()

    class Workspace:
        def __init__(self) -> None:
            self.sources: dict[str, str] = {}

        def is_user_file(self, filename: str) -> bool:
            return filename == str(path)

    seen: list[str] = []

    def theirs(frame: FrameType, event: str, arg: Any) -> None:
        seen.append(event)

    hooks = (len(torch_module._global_forward_pre_hooks), len(torch_module._global_forward_hooks))
    tracer = ShapeTracer(torch, Workspace())  # type: ignore[arg-type]
    sys.settrace(theirs)
    try:
        with pytest.raises(ValueError, match="the user code fails"), tracer:
            model(torch.randn(2, 4))
        assert sys.gettrace() is theirs
    finally:
        sys.settrace(None)
    assert (
        len(torch_module._global_forward_pre_hooks),
        len(torch_module._global_forward_hooks),
    ) == hooks
    (shapes,) = tracer.result()
    assert [(h["name"], h["values"]) for h in shapes["hints"]] == [("y", ["(2, 4)"])]


UNRUN = """
import torch
import torch.nn.functional as F
from torch import nn


def helper_never_called(x):
    y = x * 2
    return y


class Tiny(nn.Module):  # torchls: input=(2, 8):long
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.extra = nn.ModuleList()
        self.head = nn.Linear(16, 100)

    def forward(self, idx, targets=None):
        x = self.emb(idx)
        steps = idx.size(1)
        for block in self.extra:
            x = block(x)  # not run
        if targets is not None:
            logits = self.head(x)  # not run
            loss = F.cross_entropy(  # not run
                logits.view(-1, 100), targets.view(-1)
            )
        else:
            logits = self.head(x[:, [-1], :])
            loss = None
        return logits, loss
"""


def test_statements_a_forward_did_not_run_are_listed_as_unrun(runner: Runner) -> None:
    """What a user reads as "not run" must be lines a real forward at that input skips: the
    branch for `targets`, a loop over an empty ModuleList. A line that ran but binds no tensor
    (`steps = idx.size(1)`) is not one of them, nor is a function no forward called."""
    path = runner.write(UNRUN, name="unrun.py")
    result = runner.ok(path, "Tiny", kind="class")
    (entry,) = [f for f in result["shapes"] if Path(f["file"]).resolve() == path.resolve()]
    assert entry["functions"] == ["Tiny.forward"]
    lines = UNRUN.splitlines()
    marked = {i for i, line in enumerate(lines) if line.endswith("# not run")}
    assert {row["line"] for row in entry["unrun"]} == marked
    for row in entry["unrun"]:
        assert row["function"] == "Tiny.forward"
    # the real CPU forward at the same input: which lines of forward did it run?
    real = import_fixture(path, "inlay_unrun")
    ran: set[int] = set()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            ran.add(frame.f_lineno - 1)
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == str(path) else None

    model = real.Tiny().eval()
    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        with torch.no_grad():
            model(torch.randint(0, 100, (2, 8)))
    finally:
        sys.settrace(previous)
    assert not ran & marked
    forward = lines.index("    def forward(self, idx, targets=None):")
    simple = {
        i
        for i in range(forward + 1, len(lines))
        if " = " in lines[i] and not lines[i].lstrip().startswith(("for ", "if "))
    }
    assert simple - marked <= ran  # every other binding line of forward ran
