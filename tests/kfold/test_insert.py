"""The "Insert ... k-fold cross-validation" code actions through a real LSP session: listed
without an edit, resolved with codeAction/resolve, applied to the file, and the result run with
torch and scikit-learn."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.loadcheck.test_lsp_diagnostics import _open

from torchls.loadcheck.fixes import Edit, apply_edits
from torchls.source.text import Span

# A script with its data, model, optimizer and loss, and no cross-validation yet. The model
# records a fingerprint of its initial weights, so the test can see one fresh model per fold.
PREPARED = '''"""Data and model; the loop comes later."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

INITIAL_WEIGHTS = []


class MLP(nn.Module):
    def __init__(self, features: int, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))
        INITIAL_WEIGHTS.append(round(float(self.net[0].weight.sum()), 6))

    def forward(self, x):
        return self.net(x)


torch.manual_seed(0)
x = torch.randn(60, 6)
y = torch.randint(0, 3, (60,))
dataset = TensorDataset(x, y)
model = MLP(6, classes=3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
for epoch in range(3):
\tpass
'''
REPORT = '\nprint("INITS", __import__("json").dumps(INITIAL_WEIGHTS))\n'


async def _listed(
    session: Session, uri: str, line: int, character: int = 0, only: list[str] | None = None
) -> list[types.CodeAction]:
    """The code actions at a cursor, as the editor asks for them."""
    at = types.Position(line=line, character=character)
    listed = await session.client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(start=at, end=at),
            context=types.CodeActionContext(diagnostics=[], only=only),
        )
    )
    return [a for a in listed or [] if isinstance(a, types.CodeAction)]


def _edits(action: types.CodeAction) -> list[Edit]:
    assert action.edit is not None and action.edit.document_changes
    change = action.edit.document_changes[0]
    assert isinstance(change, types.TextDocumentEdit)
    edits = []
    for edit in change.edits:
        assert isinstance(edit, types.TextEdit)
        r = edit.range
        span = Span(r.start.line, r.start.character, r.end.line, r.end.character)
        edits.append(Edit(span, edit.new_text))
    return edits


@pytest.mark.parametrize(
    ("kind", "splitter"),
    [("stratified", "StratifiedKFold"), ("k-fold", "KFold"), ("group", "GroupKFold")],
)
async def test_inserted_loop_runs_one_fresh_model_per_fold(
    tmp_path: Path, kind: str, splitter: str
) -> None:
    path = tmp_path / "train.py"
    path.write_text(PREPARED)
    end = PREPARED.count("\n")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        actions = await _listed(session, uri, end, only=[types.CodeActionKind.Source])
        action = next(a for a in actions if f"({splitter})" in a.title)
        assert action.kind == types.CodeActionKind.Source  # no light bulb on every line
        assert action.edit is None  # listed cheaply; the edit comes on resolve
        resolved = await session.client.code_action_resolve_async(action)
    text = apply_edits(PREPARED, _edits(resolved))
    # One import line per module, no duplicates of what the file has.
    assert f"from sklearn.model_selection import {splitter}\n" in text
    assert "from torch.utils.data import DataLoader, Subset\n" in text
    assert text.count("import torch\n") == 1 and "TensorDataset\nfrom sklearn" in text
    assert "shuffle=True, random_state=0" in text and "shuffle=False" in text
    # The file's names are reused: its model's arguments, optimizer and loss, its epochs.
    assert "    model = MLP(6, classes=3)\n" in text
    assert "optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)" in text
    assert "EPOCHS = 3\n" in text
    path.write_text(text + REPORT)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    folds = re.findall(r"^fold (\d): validation loss [\d.]+, score ([\d.]+)$", done.stdout, re.M)
    assert [int(f) for f, _ in folds] == [0, 1, 2, 3, 4]
    assert re.search(r"^5-fold cross-validation: [\d.]+ \+- [\d.]+$", done.stdout, re.M)
    inits = json.loads(done.stdout.split("INITS ", 1)[1])
    assert len(inits) == 6 and len(set(inits[1:])) == 5  # the file's model, then one per fold
    assert sorted(p.name for p in tmp_path.glob("model_fold*.pt")) == [
        f"model_fold{i}.pt" for i in range(5)
    ]


def test_a_dataset_built_inside_the_dataloader_call_is_reused(tmp_path: Path) -> None:
    """examples/train.py's style: `DataLoader(TensorDataset(x, y), ...)`, no dataset name. The
    loop must split that data, not a placeholder the model cannot take (a real VS Code run
    found this: the placeholder's 8 features broke a conv net)."""
    from torchls.kfold.actions import insertion
    from torchls.source.models import FileModels
    from torchls.source.project import Project

    text = (
        "import torch\nfrom torch import nn\n"
        "from torch.utils.data import DataLoader, TensorDataset\n\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))\n"
        "x = torch.randn(30, 3, 8, 8)\ny = torch.randint(0, 3, (30,))\n"
        "loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "loss_fn = nn.CrossEntropyLoss()\n"
    )
    path = tmp_path / "inline.py"
    path.write_text(text)
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    made = insertion(FileModels(project, module), "stratified", len(text.splitlines()))
    assert made is not None
    result = apply_edits(text, made.edits)
    assert "dataset = TensorDataset(x, y)" in result and "torch.randn(100, 8)" not in result
    path.write_text(result)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5
