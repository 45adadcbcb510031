"""`from_pretrained("./folder")`: torchls's prediction against what transformers really does,
for tiny models the test saves (nothing is downloaded)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchls.checkpoint.isolated import read_isolated_async
from torchls.loadcheck.analysis import ERROR, Environment
from torchls.loadcheck.checker import LoadChecker, SiteReport
from torchls.loadcheck.fixes import Fix, apply_edits
from torchls.source.models import FileModels
from torchls.source.project import Project
from torchls.worker.client import WorkerClient, WorkerSettings

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


async def _check(workspace: Path) -> list[tuple[SiteReport, list[Fix]]]:
    worker = WorkerClient(
        WorkerSettings(
            command=(sys.executable,),
            workspace=str(workspace),
            allow_user_code=True,
            timeout_seconds=120,
            memory_limit_mb=4096,
        )
    )
    checker = LoadChecker(
        read_isolated_async,
        lambda params: worker.run("state_dict", params),
        lambda: Environment("2.13.0", False),
    )
    try:
        project = Project(str(workspace))
        module = project.module_file(str(workspace / "load.py"))
        assert module is not None
        models = FileModels(project, module)
        reports = await checker.check(models, str(workspace))
        return [(report, checker.fixes(models, report)) for report in reports]
    finally:
        await worker.stop()


RUNNER = """
import json, sys
from transformers.utils import logging
logging.set_verbosity_error()
from transformers import AutoModel, BertForSequenceClassification, BertModel
outcomes = []
for statement in json.loads(sys.argv[1]):
    try:
        exec(statement, {**globals()})
        outcomes.append("")
    except Exception as exc:
        outcomes.append(f"{type(exc).__name__}: {exc}")
print(json.dumps(outcomes))
"""


def _run(workspace: Path, statements: list[str]) -> list[str]:
    """What each statement raises with real transformers ("" if nothing), in one process."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(statements)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    outcome: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


def test_from_pretrained_predictions_match_transformers(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", SAVE], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "load.py").write_text(SCRIPT)
    results = asyncio.run(_check(tmp_path))
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
    real = _run(tmp_path, statements + fixed)
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
