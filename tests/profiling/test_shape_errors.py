"""A forward that fails on a shape (issue 19, item 4): the job's error says the shapes in its
one line and carries `shape_error` data naming the layer, the argument it was built with, what
its input gives instead, and the forward line that called it.

Each model is a workspace file; the expected figures come from the layers' shapes, and each
case checks what the same model does for real (it raises, and the corrected argument runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.profiling.test_profile_job import Runner, import_fixture

from torchls.worker.protocol import ERROR_USER

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    made = Runner(tmp_path_factory.mktemp("shape_errors"))
    yield made
    made.close()


def line_of(path: Path, text: str) -> int:
    """The 1-based line holding `text`."""
    lines = path.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def failed(runner: Runner, path: Path, name: str) -> tuple[str, dict[str, Any]]:
    result = runner.run(path, name, kind="class")
    assert not result.ok and result.error_kind == ERROR_USER
    assert result.data and "shape_error" in result.data, result.message
    assert "\n" not in result.message
    error: dict[str, Any] = result.data["shape_error"]
    return result.message, error


MNIST = """
import torch
from torch import nn


class MnistNet(nn.Module):  # torchls: input=(1, 1, 28, 28)
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(3200, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc1(x)
"""


def test_a_linear_layer_given_the_wrong_in_features(runner: Runner) -> None:
    path = runner.write(MNIST, name="mnist_net.py")
    message, error = failed(runner, path, "MnistNet")
    assert error["module"] == "fc1" and error["type"] == "Linear"
    assert error["expects"] == {"argument": "in_features", "position": 0, "value": 3200}
    assert error["received"] == 64 * 7 * 7
    assert error["input_shapes"] == [[1, 64 * 7 * 7]]
    assert error["file"] == str(path) and error["line"] == line_of(path, "return self.fc1(x)")
    assert error["inputs"] == "(1, 1, 28, 28)"
    assert "mat1 and mat2" in error["message"] or "reduction dim" in error["message"]
    assert message.startswith("forward() failed with the input (1, 1, 28, 28): RuntimeError:")
    assert (
        "fc1 (Linear) expects 3200 input features; at input (1, 1, 28, 28) it receives "
        "64 x 7 x 7 = 3136" in message
    )
    # the real model fails the same way, and runs with the number the error gives
    real = import_fixture(path, "shape_mnist")
    model = real.MnistNet()
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        model(torch.randn(1, 1, 28, 28))
    model.fc1 = torch.nn.Linear(error["received"], 10)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_a_conv_layer_given_the_wrong_in_channels_inside_a_sequential(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn


        class Features(nn.Module):  # torchls: input=(2, 3, 16, 16)
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(3, 16, 3),
                    nn.ReLU(),
                    nn.Conv2d(32, 8, 3),
                )

            def forward(self, x):
                features = self.body(x)
                return features.mean()
        """,
        name="features_net.py",
    )
    message, error = failed(runner, path, "Features")
    assert error["module"] == "body.2" and error["type"] == "Conv2d"
    assert error["expects"] == {"argument": "in_channels", "position": 0, "value": 32}
    assert error["received"] == 16
    assert error["input_shapes"] == [[2, 16, 14, 14]]
    assert error["line"] == line_of(path, "features = self.body(x)")
    assert "body.2 (Conv2d) expects 32 input channels; at input (2, 3, 16, 16) it receives 16" in (
        message
    )


def test_a_view_that_asks_for_the_wrong_size(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn


        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3200, 10)

            def forward(self, x):
                flat = x.view(-1, 3200)
                return self.fc(flat)


        class Viewer(nn.Module):  # torchls: input=(1, 1, 28, 28)
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 64, 3, padding=1)
                self.pool = nn.MaxPool2d(4)
                self.head = Head()

            def forward(self, x):
                x = self.pool(self.conv(x))
                return self.head(x)
        """,
        name="viewer_net.py",
    )
    message, error = failed(runner, path, "Viewer")
    assert error["view"] == {"requested": [-1, 3200], "size": 64 * 7 * 7}
    assert error["module"] == "head" and error["type"] == "Head"
    assert error["expects"] is None
    assert error["line"] == line_of(path, "flat = x.view(-1, 3200)")
    assert error["input_shapes"] == [[1, 64, 7, 7]]
    assert "shape '[-1, 3200]' is invalid for input of size 3136" in message


def test_a_layer_norm_of_the_wrong_width(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn


        class Tokens(nn.Module):  # torchls: input=(2, 5):long
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(100, 48)
                self.norm = nn.LayerNorm(64)

            def forward(self, ids):
                return self.norm(self.embed(ids))
        """,
        name="tokens_net.py",
    )
    message, error = failed(runner, path, "Tokens")
    assert error["module"] == "norm" and error["type"] == "LayerNorm"
    assert error["expects"] == {"argument": "normalized_shape", "position": 0, "value": 64}
    assert error["received"] == 48
    assert (
        "norm (LayerNorm) expects 64 as its last dimension; at input (2, 5):long it receives 48"
        in (message)
    )


def test_an_error_that_is_not_about_shapes_carries_no_shape_data(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn


        class Broken(nn.Module):  # torchls: input=(2, 8)
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 8)

            def forward(self, x):
                raise ValueError("not today")
        """,
        name="broken_net.py",
    )
    result = runner.run(path, "Broken", kind="class")
    assert not result.ok and "not today" in result.message
    assert result.data is None
