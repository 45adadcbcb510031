"""The load checks' quick fixes (strip a prefix, pick the nested dict, strict=False,
map_location) on files whose earlier or edited lines hold characters str.splitlines takes for
line breaks, tabs and astral characters, in LF, CRLF and lone-CR files: applied as an editor
applies them (LSP lines, UTF-16 columns), each fixed file parses and is exactly what the user
expects. The issue's case: `y = 0; model.load_state_dict(torch.load("dp.pt"))` below a line
with a form feed or U+2028."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from tests.loadcheck.helpers import check_file, start_worker
from tests.loadcheck.test_fixes_real_torch import saved_on_cuda
from tests.positions.reference import ENDINGS, PREFIXES, apply, under, variant

from torchls.worker.client import WorkerClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))
"""

# Characters splitlines breaks at sit inside the edited lines too, before and after the call.
TRAIN = """import torch
from model import Net

model = Net()
y = 0; model.load_state_dict(torch.load("dp.pt"))  # \u2028 😀 \x0c
s = "😀\x85"; model.load_state_dict(torch.load("nested.pt"))
if True:
\tmodel.load_state_dict(torch.load("partial.pt"))  # 🐍\x1c
t = "\t😀"; model.load_state_dict(torch.load("gpu.pt"))
"""

# (the load's checkpoint, a word of the fix's title, the line as the fix leaves it)
FIXED = {
    "dp.pt": (
        "strip the `module.` prefix",
        'y = 0; model.load_state_dict({k.removeprefix("module."): v for k, v in '
        'torch.load("dp.pt").items()})  # \u2028 😀 \x0c',
    ),
    "nested.pt": (
        '["state_dict"]',
        's = "😀\x85"; model.load_state_dict(torch.load("nested.pt")["state_dict"])',
    ),
    "partial.pt": (
        "strict=False",
        '\tmodel.load_state_dict(torch.load("partial.pt"), strict=False)  # 🐍\x1c',
    ),
    "gpu.pt": (
        "map_location",
        't = "\t😀"; model.load_state_dict(torch.load("gpu.pt", map_location="cpu"))',
    ),
}
SHOWN = {"none", "all", "form-feed"}
CASES = [(p, e) for p in PREFIXES for e in ENDINGS if p in SHOWN or e == "LF"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("positions")
    (folder / "model.py").write_text(MODEL)
    scope: dict[str, object] = {}
    exec(compile(MODEL, "model.py", "exec"), scope)
    weights = scope["Net"]().state_dict()  # type: ignore[operator]
    torch.save({f"module.{k}": v for k, v in weights.items()}, folder / "dp.pt")
    torch.save({"state_dict": weights, "epoch": 3}, folder / "nested.pt")
    torch.save({k: v for k, v in weights.items() if k.startswith("body.")}, folder / "partial.pt")
    with saved_on_cuda():
        torch.save(weights, folder / "gpu.pt")
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(workspace: Path) -> AsyncIterator[WorkerClient]:
    client = start_worker(workspace)
    try:
        yield client
    finally:
        await client.stop()


async def _fixed(workspace: Path, worker: WorkerClient, text: str) -> dict[str, str]:
    """For each load: the text its diagnostic covers, and the file after its fix."""
    (workspace / "train.py").write_bytes(text.encode())
    found = {}
    for report, fixes in await check_file(workspace, "train.py", worker):
        span = report.site.span
        covered = under(text, span.start_line, span.start_char, span.end_line, span.end_char)
        name = next(name for name in FIXED if f'"{name}"' in covered)
        assert covered.startswith("model.load_state_dict(torch.load(") and covered.endswith(")")
        word, _ = FIXED[name]
        fix = next(f for f in fixes if word.lower() in f.title.lower())
        e = fix.edit
        edit = ((e.span.start_line, e.span.start_char, e.span.end_line, e.span.end_char), e.text)
        found[name] = apply(text, [edit])
    assert sorted(found) == sorted(FIXED)
    return found


@pytest.mark.parametrize(("prefix", "ending"), CASES)
async def test_each_fix_gives_the_expected_code(
    workspace: Path, worker: WorkerClient, prefix: str, ending: str
) -> None:
    hostile = variant(TRAIN, PREFIXES[prefix], ENDINGS[ending])
    for name, result in (await _fixed(workspace, worker, hostile)).items():
        compile(result, "train.py", "exec")
        original = next(line for line in TRAIN.split("\n") if f'"{name}"' in line)
        expected = TRAIN.replace(original, FIXED[name][1])
        assert result == variant(expected, PREFIXES[prefix], ENDINGS[ending]), name
