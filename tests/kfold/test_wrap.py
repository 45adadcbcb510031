""" "Wrap in k-fold cross-validation" through a real LSP session: the cursor in a training loop
(or a selection), the edit resolved, applied, and the result run with torch and scikit-learn."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import lsp_session
from tests.kfold.test_insert import _edits, _listed
from tests.loadcheck.test_lsp_diagnostics import _open

from torchls.loadcheck.fixes import apply_edits

# A training script the way people write it: one model, one optimizer, one loader over all the
# data, and a plain epoch loop (no cross-validation).
SCRIPT = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

INITIAL_WEIGHTS = []


class Net(nn.Module):
{i}def __init__(self, classes=2):
{i}{i}super().__init__()
{i}{i}self.fc = nn.Linear(5, classes)
{i}{i}INITIAL_WEIGHTS.append(round(float(self.fc.weight.sum()), 6))

{i}def forward(self, x):
{i}{i}return self.fc(x)


torch.manual_seed(0)
x = torch.randn(50, 5)
y = torch.randint(0, 2, (50,))
data = TensorDataset(x, y)
loader = DataLoader(data, batch_size=10, shuffle=True)
net = Net(classes=2)
opt = torch.optim.Adam(net.parameters(), lr=0.01)
criterion = nn.CrossEntropyLoss()

for epoch in range(3):  # train
{i}net.train()
{i}for xb, yb in loader:
{i}{i}opt.zero_grad()
{i}{i}loss = criterion(net(xb), yb)  # the loss
{i}{i}loss.backward()
{i}{i}opt.step()
{i}print("epoch", epoch, loss.item())
print("INITS", __import__("json").dumps(INITIAL_WEIGHTS))
"""


@pytest.mark.parametrize("indent", ["    ", "\t"], ids=["spaces", "tabs"])
async def test_wrapped_loop_runs_once_per_fold_with_a_fresh_model(
    tmp_path: Path, indent: str
) -> None:
    text = SCRIPT.format(i=indent)
    path = tmp_path / "train.py"
    path.write_text(text)
    lines = text.splitlines()
    cursor = next(n for n, line in enumerate(lines) if "loss.backward()" in line)
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        actions = await _listed(session, uri, cursor, 4)
        action = next(a for a in actions if "Wrap in k-fold" in a.title)
        resolved = await session.client.code_action_resolve_async(action)
    wrapped = apply_edits(text, _edits(resolved))
    # The user's own loop, one level deeper, inside the fold loop; their names reused.
    assert f"{indent}for epoch in range(3):  # train\n{indent}{indent}net.train()\n" in wrapped
    assert "    loader = DataLoader(Subset(data, train_idx.tolist())" in wrapped.replace(
        "\t", "    "
    )
    assert "net = Net(classes=2)" in wrapped and "opt = torch.optim.Adam(net.parameters()" in (
        wrapped
    )
    assert "StratifiedKFold(n_splits=N_SPLITS, shuffle=True, random_state=0)" in wrapped
    path.write_text(wrapped)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr + wrapped
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5
    assert done.stdout.count("epoch ") == 15  # the selected loop ran once per fold
    inits = json.loads(done.stdout.split("INITS ", 1)[1])
    assert len(inits) == 6 and len(set(inits[1:])) == 5


def test_a_cursor_in_a_function_wraps_its_training_loop(tmp_path: Path) -> None:
    from torchls.kfold.actions import can_wrap, wrap
    from torchls.source.models import FileModels
    from torchls.source.project import Project

    text = (
        "import torch\n\n\ndef main():\n"
        "    print('start')  # cursor here\n"
        "    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))\n"
        "    data = torch.utils.data.TensorDataset(x, y)\n"
        "    loader = torch.utils.data.DataLoader(data, batch_size=4)\n"
        "    net = torch.nn.Linear(3, 2)\n"
        "    opt = torch.optim.SGD(net.parameters(), lr=0.1)\n"
        "    criterion = torch.nn.CrossEntropyLoss()\n"
        "    for epoch in range(2):\n"
        "        for xb, yb in loader:\n"
        "            opt.zero_grad()\n"
        "            criterion(net(xb), yb).backward()\n"
        "            opt.step()\n"
        "\n\nmain()\n"
    )
    path = tmp_path / "fn.py"
    path.write_text(text)
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    models = FileModels(project, module)
    assert can_wrap(models, 4, 4)  # on print('start'): the function's epoch loop
    made = wrap(models, 4, 4)
    assert made is not None
    wrapped = apply_edits(text, made.edits)
    assert "    print('start')  # cursor here\n" in wrapped  # left as it was
    assert "        for epoch in range(2):\n" in wrapped  # one level deeper, in the fold loop
    assert "        net = torch.nn.Linear(3, 2)\n" in wrapped  # rebuilt per fold
    assert not can_wrap(models, 0, 0)  # `import torch`: nothing to wrap
    path.write_text(wrapped)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr + wrapped
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5


def test_a_loop_with_no_loader_to_rebind_is_not_offered(tmp_path: Path) -> None:
    """Batches sliced by hand: the fold loop could not hand the code its fold's training part,
    so wrapping would train on every fold's validation data. Nothing is offered."""
    from torchls.kfold.actions import can_wrap, wrap
    from torchls.source.models import FileModels
    from torchls.source.project import Project

    text = (
        "import torch\n\nnet = torch.nn.Linear(3, 1)\n"
        "x, y = torch.randn(32, 3), torch.randn(32, 1)\n"
        "opt = torch.optim.SGD(net.parameters())\n"
        "for epoch in range(2):\n"
        "    for i in range(0, 32, 8):\n"
        "        torch.nn.functional.mse_loss(net(x[i : i + 8]), y[i : i + 8]).backward()\n"
        "        opt.step()\n"
    )
    path = tmp_path / "sliced.py"
    path.write_text(text)
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    models = FileModels(project, module)
    assert not can_wrap(models, 7, 7) and wrap(models, 7, 7) is None
    # The same loop over a DataLoader of a dataset is offered.
    path.write_text(
        text.replace("for i in range(0, 32, 8):", "for xb, yb in batches:")
        .replace("x[i : i + 8]", "xb")
        .replace("y[i : i + 8]", "yb")
        .replace(
            "opt = ",
            "data = torch.utils.data.TensorDataset(x, y)\n"
            "batches = torch.utils.data.DataLoader(data)\nopt = ",
        )
    )
    module = Project(str(tmp_path)).module_file(str(path))
    assert module is not None
    assert can_wrap(FileModels(project, module), 9, 9)


async def test_a_loader_whose_dataset_is_built_in_the_call_is_wrapped(tmp_path: Path) -> None:
    """`DataLoader(TensorDataset(x, y), ...)`: the dataset is bound to a name before the folds,
    and each fold's loaders take their part of it."""
    text = SCRIPT.format(i="    ").replace(
        "data = TensorDataset(x, y)\nloader = DataLoader(data, batch_size=10, shuffle=True)",
        "loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)",
    )
    assert "DataLoader(TensorDataset(x, y)" in text
    path = tmp_path / "train.py"
    path.write_text(text)
    cursor = next(n for n, line in enumerate(text.splitlines()) if "loss.backward()" in line)
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        actions = await _listed(session, uri, cursor, 4)
        action = next(a for a in actions if "Wrap in k-fold" in a.title)
        resolved = await session.client.code_action_resolve_async(action)
    wrapped = apply_edits(text, _edits(resolved))
    assert "fold_dataset = TensorDataset(x, y)" in wrapped
    assert "loader = DataLoader(Subset(fold_dataset, train_idx.tolist())" in wrapped
    path.write_text(wrapped)
    done = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr + wrapped
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5
    assert done.stdout.count("epoch ") == 15
