"""Inputs the source already states: through a helper of the file (the seed's thop recipe),
torchinfo, fvcore and ptflops calls, a tuple argument (an LSTM's `(h, c)`) and inputs passed by
name, in the source, the `# torchls: input=` comment and `--input` alike. Every count is
checked against torch itself on real tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from tests.conftest import ROOT
from tests.profiling.reference_models import RESNET50_EXPECTED
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.cost import report
from torchls.source.spec import SpecError, TensorSpec, TupleSpec, parse_inputs

STATED = FIXTURES / "stated_inputs"


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(STATED)
    yield runner
    runner.close()


def _nets() -> Any:
    sys.path.insert(0, str(STATED))
    try:
        import nets
    finally:
        sys.path.remove(str(STATED))
    return nets


def _torch_counts(model: Any, *args: Any, **kwargs: Any) -> tuple[int, int]:
    """Parameters and MACs as torch counts them, on real tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        model(*args, **kwargs)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def _word_lm(steps: int, batch: int, vocab: int = 500) -> tuple[int, int]:
    """WordLM's counts: torch's on real tensors, plus the LSTM's own work, which the CPU runs
    as one fused op FlopCounterMode has no formula for (4 gates, input and hidden products)."""
    import torch

    state = (torch.zeros(2, batch, 200), torch.zeros(2, batch, 200))
    tokens = torch.randint(0, vocab, (steps, batch))
    params, macs = _torch_counts(_nets().WordLM(vocab=vocab), tokens, state)
    lstm = sum(steps * batch * 4 * 200 * (inputs + 200) for inputs in (40, 200))
    return params, macs + lstm


def _counts(result: dict[str, Any]) -> tuple[int, int]:
    return result["parameters"]["total"], result["macs"]


def _stem(width: int, shape: tuple[int, ...]) -> tuple[int, int]:
    import torch

    return _torch_counts(_nets().Stem(width=width), torch.randn(shape))


def test_the_seeds_thop_recipe_follows_the_input_into_get_pf(runner: Runner) -> None:
    # inputs = torch.rand(4, 3, 256, 128); get_pf(model, inputs) -> profile(model, inputs=(input,))
    result = runner.ok(STATED / "seed_recipe.py", "resnet50")
    assert result["inputs"]["tensors"] == [{"shape": [4, 3, 256, 128], "dtype": "float32"}]
    assert result["macs"] == RESNET50_EXPECTED["macs_4x3x256x128"] == 10_684_792_832
    assert result["parameters"]["total"] == RESNET50_EXPECTED["params"]
    assert "through `get_pf(model, inputs)` on line 13" in result["inputs"]["source"]
    assert result["thop"]["macs"] > 10.7e9  # thop's figure beside ours


def test_a_helper_that_calls_the_model(runner: Runner) -> None:
    result = runner.ok(STATED / "through_helper.py", "Stem")
    assert _counts(result) == _stem(12, (3, 3, 40, 40))
    assert "run_once(model, images)" in result["inputs"]["source"]


@pytest.mark.parametrize(
    ("name", "width", "shape"),
    [
        ("with_torchinfo", 6, (2, 3, 48, 48)),  # torchinfo's input_size has the batch
        ("with_fvcore", 8, (5, 3, 20, 20)),
        ("with_ptflops", 4, (1, 3, 36, 36)),  # ptflops' shape has none: a batch of one
    ],
)
def test_profiler_calls_state_the_input(
    runner: Runner, name: str, width: int, shape: tuple[int, ...]
) -> None:
    result = runner.ok(STATED / f"{name}.py", "Stem")
    assert _counts(result) == _stem(width, shape)
    assert result["inputs"]["tensors"] == [{"shape": list(shape), "dtype": "float32"}]


def test_an_lstm_called_with_its_state_tuple(runner: Runner) -> None:
    result = runner.ok(STATED / "lstm_state.py", "WordLM")
    assert _counts(result) == _word_lm(35, 1)
    assert report.text(result, report.ReportContext(call="WordLM()")).count(
        "(35, 1):long, ((2, 1, 200), (2, 1, 200))"
    )


def test_the_input_comment_takes_a_tuple(runner: Runner) -> None:
    result = runner.ok(STATED / "lstm_comment.py", "WordLM")
    assert _counts(result) == _word_lm(20, 4, vocab=300)


def test_the_input_comment_takes_inputs_by_name(runner: Runner) -> None:
    import torch

    result = runner.ok(STATED / "keyword_inputs.py", "Tagger")
    ids = torch.randint(0, 300, (2, 16))
    expected = _torch_counts(_nets().Tagger(), input_ids=ids, attention_mask=torch.ones(2, 16))
    assert _counts(result) == expected
    assert result["inputs"]["kwargs"]["attention_mask"] == {"shape": [2, 16], "dtype": "int64"}


def test_the_spec_language() -> None:
    positional, named = parse_inputs("(35, 1):long, ((2, 1, 200), (2, 1, 200))")
    hidden = TensorSpec((2, 1, 200))
    assert positional == (TensorSpec((35, 1), "int64"), TupleSpec((hidden, hidden)))
    assert named == ()
    positional, named = parse_inputs("input_ids=(1, 128):long, attention_mask=(1, 128):long")
    assert positional == ()
    assert [name for name, _ in named] == ["input_ids", "attention_mask"]
    # the old forms keep their meaning: an outer pair around shapes is several inputs
    assert parse_inputs("((1, 3), (1, 4))")[0] == (TensorSpec((1, 3)), TensorSpec((1, 4)))
    for bad, says in [
        ("a=(1, 2), (3, 4)", "named inputs last"),
        ("a=(1, 2), a=(1, 2)", "twice"),
        ("((1, 2)", "closing bracket"),
    ]:
        with pytest.raises(SpecError, match=says):
            parse_inputs(bad)


def test_cli_input_takes_tuples_and_names() -> None:
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{FIXTURES}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchls",
            "profile",
            "nets.py::WordLM",
            "--input",
            "(35, 1):long, ((2, 1, 200), (2, 1, 200))",
            "--json",
            "--no-thop",
        ],
        cwd=STATED,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    assert _counts(result) == _word_lm(35, 1)


# -- messages a user can act on -----------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": f"{ROOT / 'server'}:{FIXTURES}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args, "--no-thop"],
        cwd=STATED,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_failures_say_which_option_to_pass_never_a_comment() -> None:
    for args, option in [
        (["nets.py::WordLM"], "--input"),  # forward() takes (tokens, state): the guess fails
        (["nets.py::Needs"], "--args"),  # no value for `width` anywhere
    ]:
        done = _cli(*args)
        assert done.returncode == 1
        message = done.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message
        assert f"pass {option} '" in message and "# torchls" not in message


def test_editor_failures_name_the_comment_and_the_line(runner: Runner) -> None:
    path = STATED / "nets.py"
    result = runner.run(path, "Needs", "class")
    assert not result.ok
    assert "the constructor needs `width`" in result.message
    line = 1 + path.read_text().splitlines().index("class Needs(nn.Module):")
    assert f"add `# torchls: args=(...)` above line {line} of nets.py" in result.message
