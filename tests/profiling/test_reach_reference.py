"""bench/reach.py's check of exactness counts with torch itself (FlopCounterMode on real CPU
tensors). Where the CPU runs work in a fused kernel FlopCounterMode has no formula for, the
reference must still count that work, or a right count of torchls's reads as a mismatch: an
LSTM (oneDNN's fused RNN layer) and attention that re-enables the fused kernel itself. Checked
against the products counted by hand, and against torchls's own count."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.source.spec import InputSpec, TensorSpec

HERE = FIXTURES / "reach_reference"


def _verify_script() -> str:
    text = (ROOT / "bench" / "reach.py").read_text()
    return text.split('VERIFY = r"""', 1)[1].split('"""', 1)[0]


def _reference(
    tmp_path: Path,
    name: str,
    shapes: list[list[int]],
    module: str = "fused",
    args_text: str | None = None,
) -> dict[str, Any]:
    """What the bench's checking process answers for one class of the fixture."""
    case = {
        "name": name,
        "inputs": {"tensors": [{"shape": shape, "dtype": "float32"} for shape in shapes]},
        "meta": False,
        "args": [],
        "kwargs": {},
    }
    if args_text is not None:
        case["args_text"] = args_text  # the --args a user typed
    job = {
        "repo": str(HERE),
        "file": str(HERE / "fused.py"),
        "module": module,
        "sys_path": str(HERE),
        "timeout": 120,
        "classes": [case],
    }
    done = _run_reference(tmp_path, job)
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in answer, answer
    return answer


def _run_reference(tmp_path: Path, job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "verify.py"
    script.write_text(_verify_script())
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps(job),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(HERE)
    yield runner
    runner.close()


def _torchls_flops(runner: Runner, name: str, shapes: list[tuple[int, ...]]) -> int:
    spec = InputSpec(tensors=tuple(TensorSpec(shape) for shape in shapes), source="the test")
    result = runner.ok(HERE / "fused.py", name, input_override=spec)
    return int(result["flops"])


def test_an_lstm_is_counted_by_the_reference(runner: Runner, tmp_path: Path) -> None:
    # 20 rows of 20 pixels, hidden 48: per step the input and hidden products of 4 gates
    lstm_macs = 20 * 4 * 48 * (20 + 48)
    by_hand = 2 * (lstm_macs + 48 * 10)
    assert _reference(tmp_path, "RowReader", [[1, 1, 20, 20]])["flops"] == by_hand
    assert _torchls_flops(runner, "RowReader", [(1, 1, 20, 20)]) == by_hand


def test_attention_that_picks_the_fused_kernel_is_counted(runner: Runner, tmp_path: Path) -> None:
    # q @ k^T and attn @ v: batch 1, 4 heads, 64 tokens, 32 per head
    by_hand = 2 * 2 * (4 * 64 * 64 * 32)
    shape = [1, 4, 64, 32]
    assert _reference(tmp_path, "PickyAttention", [shape, shape, shape])["flops"] == by_hand
    assert _torchls_flops(runner, "PickyAttention", [tuple(shape)] * 3) == by_hand


def test_typed_arguments_are_read_as_the_module_reads_them(tmp_path: Path) -> None:
    # kit/variant.py's own Head (7 outputs), not the package's Head (2 outputs)
    answer = _reference(tmp_path, "Head", [[1, 4]], module="kit.variant", args_text="(4,)")
    assert answer["params"] == 4 * 7 + 7
    assert answer["flops"] == 2 * 4 * 7
    # a name the module does not import: the package's export
    answer = _reference(tmp_path, "Wrapper", [[1, 3]], module="kit.variant", args_text="(Part(3),)")
    assert answer["params"] == 3 * 3 + 3


def _bench_reach() -> Any:
    spec = importlib.util.spec_from_file_location("bench_reach", ROOT / "bench" / "reach.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_class_of_a_training_script_is_checked_without_running_it(
    runner: Runner, tmp_path: Path
) -> None:
    reach = _bench_reach()
    repo = HERE / "gan"
    found, project = reach.model_classes(repo)
    critic = next(f for f in found if f.name == "Critic")
    # importing gan/critic.py would create a folder and train: not importable as it is
    assert reach.import_is_safe(project, critic)
    job = {
        "repo": str(repo),
        "file": str(critic.file),
        "module": critic.module,
        "sys_path": critic.sys_path,
        "timeout": 120,
        "classes": [
            {
                "name": "Critic",
                "inputs": {"tensors": [{"shape": [1, 2, 8, 8], "dtype": "float32"}]},
                "meta": False,
                "args": [],
                "kwargs": {},
            }
        ],
        "skeletons": reach.skeleton_plan(project, critic),
    }
    done = _run_reference(tmp_path, job)
    assert "the training loop ran" not in done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # the script's defaults: 2 channels of 8x8, pooled to 4x4, scored by one Linear
    assert answer.get("params") == 2 * 4 * 4 + 1, answer
    assert answer.get("flops") == 2 * (2 * 4 * 4), answer
    spec = InputSpec(tensors=(TensorSpec((1, 2, 8, 8)),), source="the test")
    result = runner.ok(repo / "critic.py", "Critic", input_override=spec)
    assert (result["parameters"]["total"], result["flops"]) == (answer["params"], answer["flops"])
    assert not (repo / "samples").exists()
