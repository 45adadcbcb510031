"""`from_pretrained("./folder")`: torchls's prediction against what transformers really does,
for tiny models the test saves (nothing is downloaded)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from tests.loadcheck.helpers import check_file, what_raises

from torchls.loadcheck.analysis import ERROR
from torchls.loadcheck.fixes import apply_edits

transformers = pytest.importorskip("transformers")

SAVE = """
from transformers import BertConfig, BertForSequenceClassification, BertModel
config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=37)
BertModel(config).save_pretrained("base")
BertForSequenceClassification(config).save_pretrained("cls")
"""
SCRIPT = """\
from transformers import AutoModel, BertForSequenceClassification, BertModel

a = BertForSequenceClassification.from_pretrained("./base")
b = BertModel.from_pretrained("./cls")
c = BertForSequenceClassification.from_pretrained("./cls", num_labels=5)
d = AutoModel.from_pretrained("bert-base-uncased")
e = BertForSequenceClassification.from_pretrained("./cls")
"""


PRELUDE = """
from transformers.utils import logging
logging.set_verbosity_error()
from transformers import AutoModel, BertForSequenceClassification, BertModel
"""


def test_from_pretrained_predictions_match_transformers(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", SAVE], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "load.py").write_text(SCRIPT)
    results = asyncio.run(check_file(tmp_path, "load.py"))
    by_line = {report.site.line: (report, fixes) for report, fixes in results}
    # The Hub name is never looked at: torchls does not download.
    assert sorted(by_line) == [3, 4, 5, 7]
    lines = SCRIPT.splitlines()
    statements = [lines[number - 1] for number in by_line]
    fixed = [
        apply_edits(SCRIPT, [fix.edit]).splitlines()[number - 1]
        for number, (_, fixes) in by_line.items()
        for fix in fixes
    ]
    real = what_raises(tmp_path, PRELUDE, statements + fixed)
    for (number, (report, _)), raised in zip(by_line.items(), real, strict=False):
        errors = [f for f in report.findings if f.severity == ERROR]
        assert bool(raised) == bool(errors), (number, report.findings, raised)
    # Line 5 (num_labels=5 against a 2-label head) raises; its one fix makes it load.
    errors = [f for f in by_line[5][0].findings if f.severity == ERROR]
    assert "ignore_mismatched_sizes=True" in errors[0].message
    assert "(5, 32) in the model and (2, 32)" in errors[0].message
    assert len(by_line[5][1]) == 1 and fixed == [fixed[0]]
    assert "ignore_mismatched_sizes=True" in fixed[0] and real[len(statements)] == ""
    # The base checkpoint lacks the classifier: said, without an error.
    base = by_line[3][0].findings
    assert [f.code for f in base] == ["new-weights"] and "classifier.*" in base[0].message
    assert by_line[4][0].findings == [] and by_line[7][0].findings == []
