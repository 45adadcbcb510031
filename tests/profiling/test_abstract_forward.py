"""A base class whose forward() is left to subclasses has nothing to count: torchls says so,
and names the subclasses that implement it, instead of "cannot tell the input shape"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.profiling.test_profile_job import FIXTURES, Runner

from torchls.source.spec import InputSpec, TensorSpec

WORKSPACE = FIXTURES / "workspace_args"


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    runner = Runner(WORKSPACE)
    yield runner
    runner.close()


def _message(runner: Runner, file: str, name: str, **options: object) -> str:
    result = runner.run(WORKSPACE / file, name, **options)  # type: ignore[arg-type]
    assert not result.ok
    message = str(result.message)
    assert "input shape" not in message and "Traceback" not in message
    assert "nothing to count" in message
    return message


def test_a_forward_that_only_raises_not_implemented(runner: Runner) -> None:
    message = _message(runner, "autoenc/base.py", "AutoencoderBase")
    assert "AutoencoderBase.forward() (base.py, line 7) is abstract" in message
    # the subclass, as `torchls profile` takes it
    assert "autoenc/conv.py::ConvAutoencoder" in message


def test_an_abstractmethod_forward_even_with_an_input_given(runner: Runner) -> None:
    given = InputSpec(tensors=(TensorSpec((1, 4)),), source="--input")
    message = _message(runner, "bases.py", "Marked", input_override=given)
    assert "Marked.forward() (bases.py, line 10) is abstract" in message
    assert "bases.py::Filled" in message


def test_no_forward_at_all(runner: Runner) -> None:
    message = _message(runner, "bases.py", "Unwritten")
    assert "Unwritten defines no forward()" in message
    result = runner.ok(WORKSPACE / "bases.py", "Filled")
    assert result["macs"] == 4 * 2


def test_an_empty_forward(runner: Runner) -> None:
    message = _message(runner, "bases.py", "Template")
    assert "Template.forward() (bases.py, line 33) is empty (only `pass`)" in message
    assert message.endswith("write its forward() first")
