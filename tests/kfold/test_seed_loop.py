"""Wrapping loops as people really write them, end to end through a real LSP session.

The seed's training loop is not in this repository; `SEED_LOOP` is a stand-in with the two
mistakes the issue names: `loss.fct(...)` typed for `loss_fct(...)`, and no `zero_grad()`. Wrapping
keeps the user's code as written (a refactoring does not change what it does); the lint then says
both mistakes on the wrapped file, and its quick fixes make the script run: one score per fold,
one fresh model per fold. A second file has a nested function, comments, blank lines and a
`__main__` guard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import lsp_session
from tests.kfold.test_insert import _edits, _listed
from tests.loadcheck.test_lsp_diagnostics import (
    _actions,
    _apply,
    _change,
    _diagnostics,
    _open,
    _torchls,
)

from torchls.loadcheck.fixes import apply_edits

SEED_LOOP = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

INITIAL_WEIGHTS = []


class Classifier(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        INITIAL_WEIGHTS.append(round(float(self.body[0].weight.sum()), 6))

    def forward(self, x):
        return self.body(x)


torch.manual_seed(0)
features = torch.randn(48, 4)
labels = torch.randint(0, 2, (48,))
dataset = TensorDataset(features, labels)
train_loader = DataLoader(dataset, batch_size=8, shuffle=True)
model = Classifier(hidden=8)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fct = nn.CrossEntropyLoss()
num_epochs = 2

for epoch in range(num_epochs):
    model.train()
    for batch in train_loader:
        inputs, targets = batch
        logits = model(inputs)
        loss = loss.fct(logits, targets)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}")
print("INITS", __import__("json").dumps(INITIAL_WEIGHTS))
"""

NESTED = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

INITIAL_WEIGHTS = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        INITIAL_WEIGHTS.append(round(float(self.fc.weight.sum()), 6))

    def forward(self, x):
        return self.fc(x)


def main():
    # Everything lives in main(), with a helper defined inside it.
    def log(message):  # a nested function
        print(message)

    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=10, shuffle=True)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    for epoch in range(2):
        # one pass over the data

        for xb, yb in loader:
            opt.zero_grad()  # clear the gradients
            crit(net(xb), yb).backward()
            opt.step()
        log(f"epoch {epoch}")  # after each epoch


if __name__ == "__main__":
    main()
    print("INITS", __import__("json").dumps(INITIAL_WEIGHTS))
"""


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)], cwd=path.parent, capture_output=True, text=True, timeout=300
    )


def _codes(diagnostics: list) -> set[str]:
    return {str(d.code) for d in _torchls(diagnostics)}


async def test_the_seed_loop_wrapped_then_its_mistakes_fixed_runs_per_fold(tmp_path: Path) -> None:
    path = tmp_path / "seed.py"
    path.write_text(SEED_LOOP)
    cursor = SEED_LOOP.splitlines().index("        loss.backward()")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        # Before wrapping, both mistakes are already said.
        found = await _diagnostics(
            session, uri, lambda d: {"underscore-typo", "no-zero-grad"} <= _codes(d)
        )
        typo = next(d for d in _torchls(found) if d.code == "underscore-typo")
        assert "`loss_fct` (line 25) was probably meant" in typo.message
        assert (typo.range.start.line, typo.range.start.character) == (cursor - 1, 15)
        action = next(a for a in await _listed(session, uri, cursor, 8) if "Wrap" in a.title)
        resolved = await session.client.code_action_resolve_async(action)
        text = apply_edits(SEED_LOOP, _edits(resolved))
        assert "loss = loss.fct(logits, targets)" in text  # the refactoring changed no code
        _change(session, uri, text, 2)
        version = 2
        lines = text.splitlines()
        for code, line in (("underscore-typo", "loss.fct("), ("no-zero-grad", "for batch in")):
            # Wait for the diagnostic on the wrapped text, not the one still shown from before.
            current = await _diagnostics(
                session,
                uri,
                lambda d, c=code, s=line: any(
                    x.code == c and s in lines[x.range.start.line] for x in _torchls(d)
                ),
            )
            diagnostic = next(d for d in _torchls(current) if d.code == code)
            [fix] = await _actions(session, uri, diagnostic)
            text = _apply(text, fix)
            version += 1
            _change(session, uri, text, version)
            await _diagnostics(session, uri, lambda d, c=code: c not in _codes(d))
    assert "loss = loss_fct(logits, targets)" in text
    assert "optimizer.zero_grad()\n" in text
    assert "model = Classifier(hidden=8)" in text.split("for fold")[1]  # built per fold
    path.write_text(text)
    done = _run(path)
    assert done.returncode == 0, done.stderr + text
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5
    assert done.stdout.count("epoch ") == 10
    inits = json.loads(done.stdout.split("INITS ", 1)[1])
    assert len(inits) == 6 and len(set(inits[1:])) == 5


async def test_a_loop_in_a_function_with_a_nested_helper_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "nested.py"
    path.write_text(NESTED)
    cursor = NESTED.splitlines().index("            opt.step()")
    async with lsp_session(workspace=tmp_path) as session:
        uri = _open(session, path)
        action = next(a for a in await _listed(session, uri, cursor, 12) if "Wrap" in a.title)
        resolved = await session.client.code_action_resolve_async(action)
    text = apply_edits(NESTED, _edits(resolved))
    # The comments and the blank line travel with the loop, one level deeper.
    assert "            # one pass over the data\n\n            for xb, yb" in text
    assert '            log(f"epoch {epoch}")  # after each epoch\n' in text
    assert "    def log(message):  # a nested function\n" in text  # outside the loop, untouched
    path.write_text(text)
    done = _run(path)
    assert done.returncode == 0, done.stderr + text
    assert len(re.findall(r"^fold \d: validation loss", done.stdout, re.M)) == 5
    assert done.stdout.count("epoch ") == 10
    inits = json.loads(done.stdout.split("INITS ", 1)[1])
    assert len(inits) == 6 and len(set(inits[1:])) == 5
