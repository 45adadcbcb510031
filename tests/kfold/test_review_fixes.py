"""Regressions from a review of the k-fold actions and lint: a wrap or an insertion that would
produce wrong cross-validation is not offered (or, when made, the edited file runs with one
fresh model per fold), and the lint says nothing on correct code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from torchls.kfold.actions import can_wrap, insertion, wrap
from torchls.kfold.lint import lint
from torchls.loadcheck.fixes import apply_edits
from torchls.source.models import FileModels
from torchls.source.project import Project


def _models(tmp_path: Path, text: str) -> FileModels:
    path = tmp_path / "t.py"
    path.write_bytes(text.encode())
    # As the editor holds it (reading the disk would turn CRLF into LF).
    project = Project(str(tmp_path), lambda p: text if Path(p).name == "t.py" else None)
    module = project.module_file(str(path))
    assert module is not None
    return FileModels(project, module)


def _line(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines()) if needle in line)


def _wrapped(tmp_path: Path, text: str, start: int, end: int | None = None) -> str | None:
    made = wrap(_models(tmp_path, text), start, start if end is None else end)
    return None if made is None else apply_edits(text, made.edits)


def _inserted(tmp_path: Path, text: str, kind: str, line: int) -> str | None:
    made = insertion(_models(tmp_path, text), kind, line)
    return None if made is None else apply_edits(text, made.edits)


def _run(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "run.py"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def _folds(stdout: str) -> int:
    return len(re.findall(r"^fold \d: validation loss", stdout, re.M))


def _codes(tmp_path: Path, text: str) -> list[str]:
    return [f.finding.code for f in lint(_models(tmp_path, text))]


HEADER = """import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

INIT = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 2)
        INIT.append(round(float(self.fc.weight.detach().sum()), 6))

    def forward(self, x):
        return self.fc(x)


"""

TRAIN_FUNCTION = (
    HEADER
    + """def train(model, loader, optimizer, criterion, epochs=2):
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
    return model


x = torch.randn(60, 5)
y = torch.randint(0, 2, (60,))
ds = TensorDataset(x, y)
loader = DataLoader(ds, batch_size=8, shuffle=True)
net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
train(net, loader, opt, nn.CrossEntropyLoss())
"""
)


def test_wrap_is_not_offered_where_the_loop_trains_parameters(tmp_path: Path) -> None:
    """Inside `train(model, ..., optimizer, ...)` the module's `net`/`opt` are not what the loop
    trains, and the parameters cannot be rebuilt: nothing is offered."""
    cursor = _line(TRAIN_FUNCTION, "loss.backward()")
    assert not can_wrap(_models(tmp_path, TRAIN_FUNCTION), cursor, cursor)
    assert _wrapped(tmp_path, TRAIN_FUNCTION, cursor) is None


MODULE_LOOP = (
    HEADER
    + """x = torch.randn(60, 5)
y = torch.randn(60, 1)
ds = TensorDataset(x, y)
loader = DataLoader(ds, batch_size=8, shuffle=True)
model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for epoch in range(2):
    n = 0
    for xb, yb in loader:
        n += len(xb)
        optimizer.zero_grad()
        loss = F.mse_loss(model(xb), yb)
        loss.backward()
        optimizer.step()
    print("trained on", n)
"""
)


def test_wrap_rebuilds_the_users_model_and_validates_with_their_loss(tmp_path: Path) -> None:
    """An `nn.Sequential(...)` model (not a class of the file) and a regression loss: the fold
    rebuilds that very model and validates with `F.mse_loss`, and the result runs."""
    text = MODULE_LOOP
    out = _wrapped(tmp_path, text, _line(text, "loss.backward()"))
    assert out is not None
    body = out.split("for fold,", 1)[1]
    assert "    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))\n" in body
    assert "LazyLinear" not in out and "CrossEntropyLoss" not in out
    assert "F.mse_loss(outputs, targets)" in body
    done = _run(tmp_path, out)
    assert done.returncode == 0, done.stderr + out
    assert _folds(done.stdout) == 5


def test_insertion_reuses_any_call_that_builds_the_trained_model(tmp_path: Path) -> None:
    text = HEADER + (
        "def build():\n    return nn.Linear(5, 3)\n\n\n"
        "model = build()\noptimizer = torch.optim.Adam(model.parameters(), lr=0.01)\n"
    )
    out = _inserted(tmp_path, text, "kfold", text.count("\n"))
    assert out is not None
    assert "    model = build()\n" in out and "LazyLinear" not in out


def test_the_placeholder_model_is_marked_and_runs(tmp_path: Path) -> None:
    text = (
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "ds = TensorDataset(torch.randn(60, 5), torch.randint(0, 3, (60,)))\n"
    )
    out = _inserted(tmp_path, text, "stratified", 3)
    assert out is not None and "PLACEHOLDER" in out
    done = _run(tmp_path, out.replace("EPOCHS = 10", "EPOCHS = 1"))
    assert done.returncode == 0, done.stderr + out
    assert _folds(done.stdout) == 5


def test_a_selection_that_builds_the_loader_is_not_wrapped(tmp_path: Path) -> None:
    """The user's own `loader = DataLoader(ds, ...)` would run after the fold's and train on
    every fold's validation data."""
    text = MODULE_LOOP
    start, end = _line(text, "loader = DataLoader"), len(text.splitlines()) - 1
    assert not can_wrap(_models(tmp_path, text), start, end)
    assert _wrapped(tmp_path, text, start, end) is None


def test_wrap_splits_the_loaders_own_dataset(tmp_path: Path) -> None:
    """The loader iterates `train_ds`, a random_split of `full`: the folds split `train_ds`."""
    text = MODULE_LOOP.replace(
        "ds = TensorDataset(x, y)\nloader = DataLoader(ds,",
        "full = TensorDataset(x, y)\n"
        "train_ds, test_ds = torch.utils.data.random_split(full, [40, 20])\n"
        "loader = DataLoader(train_ds,",
    )
    out = _wrapped(tmp_path, text, _line(text, "loss.backward()"))
    assert out is not None and "Subset(train_ds, train_idx.tolist())" in out
    done = _run(tmp_path, out)
    assert done.returncode == 0, done.stderr + out
    assert done.stdout.count("trained on 32\n") == 10  # 4/5 of 40, two epochs, five folds


def test_wrap_in_a_function_that_reads_module_globals_runs_or_is_refused(tmp_path: Path) -> None:
    text = HEADER + (
        "x = torch.randn(60, 5)\ny = torch.randint(0, 2, (60,))\n"
        "ds = TensorDataset(x, y)\nloader = DataLoader(ds, batch_size=8, shuffle=True)\n"
        "model = Net()\noptimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "crit = nn.CrossEntropyLoss()\n\n\n"
        "def train():\n"
        "    model.train()\n"
        "    for epoch in range(2):\n"
        "        for xb, yb in loader:\n"
        "            optimizer.zero_grad()\n"
        "            crit(model(xb), yb).backward()\n"
        "            optimizer.step()\n\n\ntrain()\n"
    )
    out = _wrapped(tmp_path, text, _line(text, "backward()"))
    if out is not None:  # made: then it must run, one fresh model per fold
        done = _run(tmp_path, out)
        assert done.returncode == 0, done.stderr + out
        assert _folds(done.stdout) == 5


def test_insertion_above_the_imports_goes_after_them_and_runs(tmp_path: Path) -> None:
    text = (
        '"""Doc."""\nfrom __future__ import annotations\nimport torch\n'
        "from torch.utils.data import TensorDataset\n"
        "ds = TensorDataset(torch.randn(50, 4), torch.randint(0, 2, (50,)))\n"
    )
    out = _inserted(tmp_path, text, "kfold", 0)
    assert out is not None
    compile(out, "t.py", "exec")
    assert out.index("import torch\n") < out.index("# k-fold cross-validation")
    done = _run(tmp_path, out.replace("EPOCHS = 10", "EPOCHS = 1"))
    assert done.returncode == 0, done.stderr + out


def test_module_level_insertion_uses_only_names_bound_there(tmp_path: Path) -> None:
    """`ds` and the imports local to `main()` are not visible at module level."""
    text = (
        "def main():\n    import torch\n    from torch.utils.data import TensorDataset\n"
        "    ds = TensorDataset(torch.randn(50, 4), torch.randint(0, 2, (50,)))\n\n\nmain()\n"
    )
    out = _inserted(tmp_path, text, "kfold", text.count("\n"))
    assert out is not None and "Subset(ds," not in out
    done = _run(tmp_path, out.replace("EPOCHS = 10", "EPOCHS = 1"))
    assert done.returncode == 0, done.stderr + out
    assert _folds(done.stdout) == 5


def test_the_no_shuffle_fix_on_an_empty_call_parses(tmp_path: Path) -> None:
    text = (
        "import torch\nfrom sklearn.model_selection import KFold\nkf = KFold()\n"
        "for tr, va in kf.split(range(30)):\n    pass\n"
    )
    [found] = [f for f in lint(_models(tmp_path, text)) if f.finding.code == "kfold-no-shuffle"]
    fixed = apply_edits(text, found.fixes[0][1])
    compile(fixed, "t.py", "exec")
    assert "kf = KFold(shuffle=True, random_state=0)\n" in fixed


LINT_HEADER = """import copy
import torch
from torch import nn
from torch.utils.data import TensorDataset
from sklearn.model_selection import KFold
from sklearn.preprocessing import LabelEncoder, StandardScaler
ds = TensorDataset(torch.randn(60, 5), torch.randint(0, 2, (60,)))
kf = KFold(n_splits=3, shuffle=True, random_state=0)
"""


def test_the_underscore_typo_is_silent_where_the_name_is_bound(tmp_path: Path) -> None:
    cases = [
        "batch_size = 16\nseen = sum(batch.size(0) for (batch,) in [])\n",
        "x_fct = 1\nvals = [x.fct for x in []]\n",
        "y_real = 1\nf = lambda y: y.real\n",
        "loss_item = 0\nloss = torch.tensor(1.0); print(loss.item())\n",
        "loss_item = 0\nfor i in range(3):\n    if i > 0:\n        print(loss.item())\n"
        "    loss = torch.tensor(float(i))\n",
        "pt_x = 0\nmatch [(1, 2)]:\n    case [(pt, _)]:\n        print(pt.x if False else 0)\n",
        "cfg_lr = 0.1\ndef setup():\n    global cfg\n    cfg = object()\n"
        "def use():\n    return cfg.lr\n",
        "e_args = 1\ntry:\n    pass\nexcept Exception as e:\n    print(e.args)\n",
    ]
    for case in cases:
        assert "underscore-typo" not in _codes(tmp_path, "import torch\n" + case), case


def test_the_shared_model_lint_is_silent_when_each_fold_starts_afresh(tmp_path: Path) -> None:
    loop = "for fold, (tr, va) in enumerate(kf.split(range(60))):\n"
    net = "class Net(nn.Module):\n    pass\n"
    quiet = [
        "base = Net()\n" + loop + "    model = copy.deepcopy(base)\n"
        "    opt = torch.optim.Adam(model.parameters())\n",
        "model = Net()\ninit = copy.deepcopy(model.state_dict())\n"
        + loop
        + "    model.load_state_dict(init)\n    opt = torch.optim.Adam(model.parameters())\n",
        "model = Net()\ndef reset(m):\n    m.reset_parameters()\n"
        + loop
        + "    reset(model)\n    opt = torch.optim.Adam(model.parameters())\n",
        "backbone = Net()\n" + loop + "    head = nn.Linear(5, 2)\n"
        "    opt = torch.optim.Adam(head.parameters())\n"
        "    with torch.no_grad():\n        f = backbone(torch.randn(2, 5))\n",
    ]
    for case in quiet:
        assert "kfold-shared-model" not in _codes(tmp_path, LINT_HEADER + net + case), case
    stale = net + "model = Net()\n" + loop + "    opt = torch.optim.Adam(model.parameters())\n"
    assert "kfold-shared-model" in _codes(tmp_path, LINT_HEADER + stale)


def test_the_leak_lint_spares_label_encoders_and_per_fold_fits(tmp_path: Path) -> None:
    x = "X = torch.randn(30, 4).numpy()\ny = ['a', 'b', 'c'] * 10\n"
    label = "y = LabelEncoder().fit_transform(y)\nfor tr, va in kf.split(X):\n    pass\n"
    per_fold = (
        "scaler = StandardScaler()\nfor tr, va in kf.split(X):\n    scaler.fit(X[tr])\n"
        "for tr, va in kf.split(X):\n    scaler.fit(X[tr])\n"
    )
    inline = "X = StandardScaler().fit_transform(X)\nfor tr, va in kf.split(X):\n    pass\n"
    assert "kfold-leak" not in _codes(tmp_path, LINT_HEADER + x + label)
    assert "kfold-leak" not in _codes(tmp_path, LINT_HEADER + x + per_fold)
    assert "kfold-leak" in _codes(tmp_path, LINT_HEADER + x + inline)


def test_no_zero_grad_counts_other_ways_of_clearing_and_passed_optimizers(tmp_path: Path) -> None:
    head = (
        "import torch\nmodel = torch.nn.Linear(3, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "data = [(torch.randn(4, 3), torch.randn(4, 1))]\n"
    )
    step = "        loss = ((model(x) - y) ** 2).mean()\n        loss.backward()\n"
    cleared = [
        "for _ in range(1):\n    for x, y in data:\n        for p in model.parameters():\n"
        "            p.grad = None\n" + step + "        opt.step()\n",
        "def clear():\n    opt.zero_grad()\nfor _ in range(1):\n    for x, y in data:\n"
        "        clear()\n" + step + "        opt.step()\n",
    ]
    for case in cleared:
        assert "no-zero-grad" not in _codes(tmp_path, head + case), case
    missed = [
        "def train():\n    opt.zero_grad()\n    for _ in range(3):\n        for x, y in data:\n"
        + step.replace("        ", "            ")
        + "            opt.step()\n",
        "def train(model, data, optimizer):\n    for x, y in data:\n"
        + step.replace("        ", "        ")
        + "        optimizer.step()\n",
    ]
    for case in missed:
        assert "no-zero-grad" in _codes(tmp_path, head + case), case


def test_a_plateau_scheduler_steps_on_a_metric(tmp_path: Path) -> None:
    text = (
        "import torch\nfrom torch import nn\nfrom torch.utils.data import TensorDataset\n"
        "ds = TensorDataset(torch.randn(60, 5), torch.randint(0, 2, (60,)))\n"
        "model = nn.Linear(5, 2)\nopt = torch.optim.Adam(model.parameters(), lr=0.01)\n"
        "sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)\n"
    )
    out = _inserted(tmp_path, text, "stratified", text.count("\n"))
    assert out is not None
    done = _run(tmp_path, out.replace("EPOCHS = 10", "EPOCHS = 2"))
    assert done.returncode == 0, done.stderr + out
    assert _folds(done.stdout) == 5


def test_crlf_shebang_inline_splitter_and_enumerated_loader(tmp_path: Path) -> None:
    # A CRLF file keeps CRLF line endings everywhere.
    text = "import torch\r\nx = 1\r\n"
    out = _inserted(tmp_path, text, "kfold", 2)
    assert out is not None and out.count("\n") == out.count("\r\n")
    # Imports go below a shebang and a coding line.
    text = "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n"
    text += "try:\n    import torch\nexcept ImportError:\n    pass\n"
    out = _inserted(tmp_path, text, "kfold", text.count("\n"))
    assert out is not None and out.startswith("#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n")
    # A splitter built in the loop header is linted too.
    text = (
        "import torch\nfrom sklearn.model_selection import KFold\n"
        "for fold, (tr, va) in enumerate(KFold(n_splits=3).split(range(9))):\n    pass\n"
    )
    assert "kfold-no-shuffle" in _codes(tmp_path, text)
    # `for i, (xb, yb) in enumerate(loader)` can be wrapped.
    text = MODULE_LOOP.replace("for xb, yb in loader:", "for i, (xb, yb) in enumerate(loader):")
    cursor = _line(text, "loss.backward()")
    assert can_wrap(_models(tmp_path, text), cursor, cursor)
