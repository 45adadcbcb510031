"""The k-fold lint's fixes and the k-fold insert and wrap actions, on files whose earlier or
edited lines hold characters str.splitlines takes for line breaks (form feed, U+2028, U+0085,
\\x1c...), tabs and astral characters, in LF, CRLF and lone-CR files. Each edit is applied the
way an editor applies it (LSP lines, UTF-16 columns) and the result must parse and be exactly
the clean file's result, moved down by the extra lines and in the file's own line endings."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.positions.reference import ENDINGS, PREFIXES, apply, variant

from torchls.kfold.actions import insertion, wrap
from torchls.kfold.lint import lint
from torchls.loadcheck.fixes import Edit
from torchls.source.models import FileModels
from torchls.source.project import Project

LOOP = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

x = torch.randn(40, 4)
y = torch.randint(0, 2, (40,))
loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fct = nn.CrossEntropyLoss()
for epoch in range(2):  # 😀 \u2028 \x0c ok
\tfor inputs, targets in loader:
\t\tnote = "😀\x0c\u2028"; loss = loss.fct(model(inputs), targets)
\t\tloss.backward()
\t\toptimizer.step()
"""

FOLDS = """import torch
from sklearn.model_selection import KFold
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

x = torch.randn(40, 4)
y = torch.randint(0, 2, (40,))
dataset = TensorDataset(x, y)
model = nn.Linear(4, 2)  # 😀 \x85 built once
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
splitter = KFold(n_splits=4)  # \u2028
for fold, (train_idx, val_idx) in enumerate(splitter.split(x)):
\tloader = DataLoader(Subset(dataset, train_idx.tolist()), batch_size=8)  # 🐍\x1c
\tfor inputs, targets in loader:
\t\toptimizer.zero_grad()
\t\tnn.functional.cross_entropy(model(inputs), targets).backward()
\t\toptimizer.step()
"""

# A loop body on the `for` line: the fix must go on that line, not above the loop.
ONE_LINE = """import torch
from torch import nn

model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for inputs in [torch.randn(2, 4)]: y = 0; model(inputs).sum().backward(); optimizer.step()
"""

ZERO_GRAD = "Clear the gradients first: optimizer.zero_grad()"
CASES = [(p, e) for p in PREFIXES for e in ENDINGS if p in {"none", "all"} or e == "LF"]


def _models(tmp_path: Path, text: str) -> FileModels:
    path = tmp_path / "train.py"
    path.write_bytes(text.encode())
    project = Project(str(tmp_path), lambda p: text if Path(p) == path else None)
    module = project.module_file(str(path))
    assert module is not None and module.text == text
    return FileModels(project, module)


def _lsp(edits: list[Edit]) -> list[tuple[tuple[int, int, int, int], str]]:
    return [
        ((e.span.start_line, e.span.start_char, e.span.end_line, e.span.end_char), e.text)
        for e in edits
    ]


def _lint_fixed(tmp_path: Path, text: str) -> dict[str, str]:
    """Each lint fix's title and the file after it."""
    fixed = {}
    for item in lint(_models(tmp_path, text)):
        for title, edits in item.fixes:
            fixed[title] = apply(text, _lsp(edits))
    return fixed


def test_the_lint_fixes_of_a_clean_file(tmp_path: Path) -> None:
    """What the variants are held to: each fix where the user expects it."""
    loop = _lint_fixed(tmp_path, LOOP)
    assert "\t\toptimizer.zero_grad()\n\t\tloss.backward()\n" in loop[ZERO_GRAD]
    assert "; loss = loss_fct(model(inputs), targets)\n" in loop["Use `loss_fct`"]
    folds = _lint_fixed(tmp_path, FOLDS)
    rebuilt = "\toptimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n\tloader = DataLoader("
    assert rebuilt in folds["Build `optimizer` anew at the start of each fold"]
    one_line = _lint_fixed(tmp_path, ONE_LINE)[ZERO_GRAD]
    assert one_line.endswith(
        "for inputs in [torch.randn(2, 4)]: y = 0; optimizer.zero_grad(); "
        "model(inputs).sum().backward(); optimizer.step()\n"
    )
    for fixed in [*loop.values(), *folds.values(), one_line]:
        compile(fixed, "train.py", "exec")


@pytest.mark.parametrize("base", ["LOOP", "FOLDS", "ONE_LINE"])
@pytest.mark.parametrize(("prefix", "ending"), CASES)
def test_lint_fixes_land_on_lsp_lines(tmp_path: Path, base: str, prefix: str, ending: str) -> None:
    text = globals()[base]
    expected = _lint_fixed(tmp_path, text)
    assert expected
    hostile = variant(text, PREFIXES[prefix], ENDINGS[ending])
    got = _lint_fixed(tmp_path, hostile)
    assert sorted(got) == sorted(expected)
    for title, result in got.items():
        compile(result, "train.py", "exec")
        assert result == variant(expected[title], PREFIXES[prefix], ENDINGS[ending]), title


TRAIN = """import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

x = torch.randn(40, 4)  # 😀\u2028\x85
y = torch.randint(0, 2, (40,))
dataset = TensorDataset(x, y)
loader = DataLoader(dataset, batch_size=8, shuffle=True)
model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
for epoch in range(2):  # 🐍 \x1c\x0c
\tfor inputs, targets in loader:
\t\toptimizer.zero_grad()  # \u2029 😀
\t\tloss_fn(model(inputs), targets).backward()
\t\toptimizer.step()
"""
EPOCH_LINE = 11


def _action(tmp_path: Path, text: str, kind: str, line: int) -> str:
    models = _models(tmp_path, text)
    made = wrap(models, line, line) if kind == "wrap" else insertion(models, kind, line)
    assert made is not None, kind
    return apply(text, _lsp(made.edits))


def test_the_actions_on_a_clean_file(tmp_path: Path) -> None:
    wrapped = _action(tmp_path, TRAIN, "wrap", EPOCH_LINE)
    compile(wrapped, "train.py", "exec")
    # The loop moves into the fold loop one tab deeper, its characters untouched.
    moved = "\n\tfor epoch in range(2):  # 🐍 \x1c\x0c\n\t\tfor inputs, targets in loader:\n"
    assert moved in wrapped
    assert "\t\t\toptimizer.zero_grad()  # \u2029 😀\n" in wrapped
    inserted = _action(tmp_path, TRAIN, "kfold", TRAIN.count("\n"))
    compile(inserted, "train.py", "exec")
    head, tail = TRAIN.split("\n\n", 1)
    assert inserted.startswith(head + "\nfrom sklearn.model_selection import KFold\n")
    assert tail in inserted and "KFold(n_splits=N_SPLITS" in inserted


@pytest.mark.parametrize("kind", ["wrap", "kfold", "stratified", "group"])
@pytest.mark.parametrize(("prefix", "ending"), CASES)
def test_kfold_actions_land_on_lsp_lines(
    tmp_path: Path, kind: str, prefix: str, ending: str
) -> None:
    line = EPOCH_LINE if kind == "wrap" else TRAIN.count("\n")
    expected = _action(tmp_path, TRAIN, kind, line)
    hostile = variant(TRAIN, PREFIXES[prefix], ENDINGS[ending])
    got = _action(tmp_path, hostile, kind, line + PREFIXES[prefix].count("\n"))
    compile(got, "train.py", "exec")
    assert got == variant(expected, PREFIXES[prefix], ENDINGS[ending])


def test_a_form_feed_in_the_indentation_is_not_copied(tmp_path: Path) -> None:
    """Python resets the indentation count at a form feed: the fix indents like the line."""
    text = LOOP.replace("\t\tloss.backward()", "\x0c\t\tloss.backward()")
    fixed = _lint_fixed(tmp_path, text)[ZERO_GRAD]
    assert "\n\t\toptimizer.zero_grad()\n\x0c\t\tloss.backward()\n" in fixed
    compile(fixed, "train.py", "exec")
    text = TRAIN.replace("\t\tloss_fn(", "\x0c\t\tloss_fn(")
    wrapped = _action(tmp_path, text, "wrap", EPOCH_LINE)
    assert "\n\t\t\tloss_fn(model(inputs), targets).backward()\n" in wrapped
    compile(wrapped, "train.py", "exec")
