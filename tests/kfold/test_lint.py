"""The lint for hand-written k-fold loops, through a real LSP session: the diagnostics on the
classic mistakes, their quick fixes applied as the editor would, and the fixed script run with
torch and scikit-learn: one fresh model per fold, reproducible folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lsprotocol import types
from tests.conftest import lsp_session
from tests.loadcheck.test_lsp_diagnostics import (
    _actions,
    _apply,
    _change,
    _diagnostics,
    _open,
    _torchls,
)

# Indented with tabs, on purpose: the fixes must keep the file's own indentation.
HAND_WRITTEN = """import torch
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

INITIAL_WEIGHTS = []


class MLP(nn.Module):
\tdef __init__(self):
\t\tsuper().__init__()
\t\tself.fc = nn.Linear(4, 2)
\t\tINITIAL_WEIGHTS.append(round(float(self.fc.weight.sum()), 6))

\tdef forward(self, x):
\t\treturn self.fc(x)


x = torch.randn(40, 4)
y = torch.randint(0, 2, (40,))
scaler = StandardScaler()
x = torch.tensor(scaler.fit_transform(x.numpy()), dtype=torch.float32)
dataset = TensorDataset(x, y)
model = MLP()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
splitter = KFold(n_splits=4)
for fold, (train_idx, val_idx) in enumerate(splitter.split(x)):
\ttrain_loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=8, shuffle=True)
\tval_loader = DataLoader(Subset(dataset, val_idx.tolist()), batch_size=8, shuffle=True)
\tfor inputs, targets in train_loader:
\t\toptimizer.zero_grad()
\t\tloss_fn(model(inputs), targets).backward()
\t\toptimizer.step()
\twith torch.no_grad():
\t\tcorrect = sum((model(i).argmax(1) == t).sum().item() for i, t in val_loader)
\tprint("fold", fold, correct / len(val_idx))
print("INITS", __import__("json").dumps(INITIAL_WEIGHTS))
"""


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)], cwd=path.parent, capture_output=True, text=True, timeout=300
    )


async def test_hand_written_loop_mistakes_are_found_and_fixed(tmp_path: Path) -> None:
    path = tmp_path / "cv.py"
    path.write_text(HAND_WRITTEN)
    before = _run(path)
    assert before.returncode == 0, before.stderr
    # The bug, for real: one model for all folds (plus none built per fold).
    assert len(json.loads(before.stdout.split("INITS ", 1)[1])) == 1

    text = HAND_WRITTEN
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        codes = {
            "kfold-no-shuffle",
            "kfold-shared-model",
            "kfold-shuffled-validation",
            "kfold-leak",
        }
        found = await _diagnostics(
            session, uri, lambda d: codes <= {str(x.code) for x in _torchls(d)}
        )
        by_code = {str(d.code): d for d in _torchls(found)}
        assert "`model` and `optimizer` are built once, before the fold loop" in (
            by_code["kfold-shared-model"].message
        )
        assert "`scaler.fit_transform` sees the whole dataset" in by_code["kfold-leak"].message
        version = 1
        for code, title in [
            ("kfold-shared-model", "Build `model` and `optimizer` anew at the start of each fold"),
            ("kfold-no-shuffle", "Shuffle the folds: KFold(..., shuffle=True, random_state=0)"),
            ("kfold-shuffled-validation", "Validate in order: shuffle=False"),
        ]:
            current = await _diagnostics(
                session, uri, lambda d, code=code: code in {str(x.code) for x in _torchls(d)}
            )
            diagnostic = next(d for d in _torchls(current) if d.code == code)
            actions = await _actions(session, uri, diagnostic)
            assert [a.title for a in actions] == [f"torchls: {title}"]
            text = _apply(text, actions[0])
            version += 1
            _change(session, uri, text, version)
            await _diagnostics(
                session, uri, lambda d, code=code: code not in {str(x.code) for x in _torchls(d)}
            )
        # The leak has no one-click fix: it is still said.
        left = await _diagnostics(session, uri, lambda d: True)
        assert {str(d.code) for d in _torchls(left)} == {"kfold-leak"}

    assert "\tmodel = MLP()\n\toptimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n" in text
    assert "KFold(n_splits=4, shuffle=True, random_state=0)" in text
    path.write_text(text)
    after = _run(path)
    assert after.returncode == 0, after.stderr
    inits = json.loads(after.stdout.split("INITS ", 1)[1])
    assert len(inits) == 5 and len(set(inits[1:])) == 4  # one fresh model per fold
    assert after.stdout.count("fold ") == 4


SEED_LIKE = """import torch
from torch import nn

torch.manual_seed(0)
net = nn.Linear(3, 1)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
x, y = torch.randn(32, 3), torch.randn(32, 1)
for epoch in range(2):
    for i in range(0, 32, 8):
        loss = ((net(x[i : i + 8]) - y[i : i + 8]) ** 2).mean()  # no zero_grad before this
        loss.backward()
        optimizer.step()
print("GRAD", float(net.weight.grad.abs().sum()))
"""


async def test_a_step_without_zero_grad_is_found_and_fixed(tmp_path: Path) -> None:
    path = tmp_path / "seed.py"
    path.write_text(SEED_LIKE)
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        found = await _diagnostics(
            session, uri, lambda d: "no-zero-grad" in {str(x.code) for x in _torchls(d)}
        )
        diagnostic = next(d for d in _torchls(found) if d.code == "no-zero-grad")
        assert diagnostic.severity == types.DiagnosticSeverity.Warning
        assert "`optimizer.step()` runs without `optimizer.zero_grad()`" in diagnostic.message
        [action] = await _actions(session, uri, diagnostic)
        fixed = _apply(SEED_LIKE, action)
        _change(session, uri, fixed, 2)
        await _diagnostics(session, uri, lambda d: not _torchls(d))
    assert "        optimizer.zero_grad()\n        loss.backward()\n" in fixed
    path.write_text(fixed)
    # With the fix the last gradient is one batch's, not the sum of eight.
    before = (
        _run(tmp_path / "before.py") if (tmp_path / "before.py").write_text(SEED_LIKE) else None
    )
    after = _run(path)
    assert before is not None and before.returncode == 0 and after.returncode == 0
    grad_before = float(before.stdout.split("GRAD ")[1])
    grad_after = float(after.stdout.split("GRAD ")[1])
    assert grad_after < grad_before


def test_the_underscore_typo_is_said_only_where_the_read_must_fail(tmp_path: Path) -> None:
    from torchls.kfold.lint import lint
    from torchls.source.models import FileModels
    from torchls.source.project import Project

    text = (
        "import torch\n"
        "loss_fct = torch.nn.MSELoss()\n"
        "model = torch.nn.Linear(2, 2)\n"
        "model_fc = torch.nn.Linear(2, 2)\n"
        "print(model.fc)\n"  # model is bound before: a real attribute, maybe
        "def step(loss):\n"
        "    return loss.fct(1)\n"  # a parameter: bound by the call
        "for x in []:\n"
        "    loss = loss.fct(x, x)\n"  # read before any binding: the typo
    )
    path = tmp_path / "t.py"
    path.write_text(text)
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    found = [f for f in lint(FileModels(project, module)) if f.finding.code == "underscore-typo"]
    assert [(f.finding.span.start_line, f.finding.span.start_char) for f in found] == [(8, 11)]
    assert found[0].fixes[0][0] == "Use `loss_fct`"


BY_USE = """import torch
from sklearn.model_selection import KFold
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset


def evaluate(model, loader):
    with torch.no_grad():
        return sum((model(i).argmax(1) == t).sum().item() for i, t in loader)


x = torch.randn(40, 4)
y = torch.randint(0, 2, (40,))
dataset = TensorDataset(x, y)
splitter = KFold(n_splits=4, shuffle=True, random_state=0)
for fold, (train_idx, dev_idx) in enumerate(splitter.split(x)):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_loader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=8, shuffle=True)
    dev_loader = DataLoader(Subset(dataset, dev_idx.tolist()), batch_size=8, shuffle=True)
    held = DataLoader(Subset(dataset, dev_idx.tolist()), batch_size=8, shuffle=True)
    for inputs, targets in train_loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    print("fold", fold, evaluate(model, dev_loader), len(list(held)))
"""


def test_validation_loaders_are_known_by_use_not_by_name(tmp_path: Path) -> None:
    """`dev_loader` handed to `evaluate(...)`, `held` built on the fold's validation indices:
    both are validation loaders; the training loader is not."""
    from tests.loadcheck.test_cli_check import _check

    path = tmp_path / "cv.py"
    path.write_text(BY_USE)
    done = _check("--format", "json", "cv.py", cwd=tmp_path)
    shuffled = [
        d
        for d in json.loads(done.stdout)["diagnostics"]
        if d["code"] == "kfold-shuffled-validation"
    ]
    lines = BY_USE.splitlines()
    assert sorted(d["line"] for d in shuffled) == [
        next(n for n, line in enumerate(lines, 1) if line.lstrip().startswith(name))
        for name in ("dev_loader =", "held =")
    ]
    assert "`dev_loader` shuffles the validation data" in shuffled[0]["message"]
    fixed = _check("--fix", "--unsafe-fixes", "cv.py", cwd=tmp_path)
    assert "fixed 2 problems" in fixed.stderr, fixed.stdout + fixed.stderr
    text = path.read_text()
    assert (
        text.count("shuffle=False") == 2
        and "train_idx.tolist()), batch_size=8, shuffle=True" in text
    )
    assert _run(path).returncode == 0
