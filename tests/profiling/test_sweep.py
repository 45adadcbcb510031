"""Cost against input size (issue 19, item 5): named dimensions in the input language, the exact
polynomial through the counts at several sizes, and its check on a size it was not fitted on.

The expected coefficients are derived here by hand from the layer sizes; the counts come from
worker/sweep.py running the models on the meta device in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import ROOT
from torch import nn

from torchls.source.inputs import from_text
from torchls.source.spec import (
    SpecError,
    TensorSpec,
    default_sweep,
    parse_inputs,
    substitute_json,
)
from torchls.worker.sweep import (
    check_values,
    default_values,
    fit,
    nominal_value,
    polynomial_text,
    run_sweep,
)


class NoLoader:
    def __init__(self) -> None:
        self.not_run: dict[str, Any] = {}

    def is_user_file(self, filename: str) -> bool:
        return False


# -- the spec language ------------------------------------------------------------------------


def test_a_named_dimension_is_read_with_or_without_its_value() -> None:
    spec = from_text("(1, L):long", "--input")
    assert spec.tensors == (TensorSpec((1, "L"), "int64"),)
    assert (spec.symbol, spec.nominal) == ("L", None)
    assert spec.as_json()["tensors"] == [{"shape": [1, "L"], "dtype": "int64"}]
    assert spec.describe() == "(1, L):long"

    spec = from_text("(1, 3, S, S)", "--input")
    assert spec.symbol == "S" and spec.as_json()["tensors"][0]["shape"] == [1, 3, "S", "S"]

    spec = from_text("(1, L=512):long", "--input")
    assert (spec.symbol, spec.nominal) == ("L", 512)
    assert spec.as_json()["nominal"] == 512
    assert spec.describe() == "(1, L=512):long"
    # the written form reads back as itself
    assert from_text(spec.describe(), "again").tensors == spec.tensors


def test_a_named_dimension_across_inputs_by_name_and_in_tuples() -> None:
    spec = from_text("input_ids=(2, L=128):long, attention_mask=(2, L):long", "--input")
    assert (spec.symbol, spec.nominal) == ("L", 128)
    made = substitute_json(spec.as_json(), "L", 64)
    assert made["kwargs"]["input_ids"]["shape"] == [2, 64]
    assert made["kwargs"]["attention_mask"]["shape"] == [2, 64]
    assert "symbol" not in made and "nominal" not in made

    positional, _ = parse_inputs("(T, 1):long, ((2, 1, 200), (2, 1, 200))")
    assert positional[0] == TensorSpec(("T", 1), "int64")
    spec = from_text("(T, 1):long, ((2, T, 8), (2, 1, 200))", "--input")
    made = substitute_json(spec.as_json(), "T", 5)
    assert made["tensors"][0]["shape"] == [5, 1]
    assert made["tensors"][1]["tuple"][0]["shape"] == [2, 5, 8]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("(1, L, S)", "names 2 dimensions \\(L, S\\)"),
        ("(1, L), (1, S)", "names 2 dimensions"),
        ("(1, L=128), (1, L=256)", "L=128 and L=256"),
        ("(L=2, L=3)", "L=2 and L=3"),
        ("(1, L=0)", "L=0"),
        ("(1, L=x)", "positive whole number \\(or a named size"),
        ("(1, 2L)", "positive whole number"),
    ],
)
def test_named_dimensions_that_cannot_be_swept_say_why(text: str, says: str) -> None:
    with pytest.raises(SpecError, match=says):
        parse_inputs(text)


def test_a_plain_shape_has_no_symbol_and_its_json_is_unchanged() -> None:
    spec = from_text("(1, 3, 224, 224)", "--input")
    assert spec.symbol is None and spec.nominal is None
    assert set(spec.as_json()) == {"tensors", "source", "guess"}


# -- the fit ------------------------------------------------------------------------------------


def test_the_fit_is_exact_and_rational() -> None:
    def f(x: int) -> Fraction:
        return Fraction(x * x, 2) + Fraction(3 * x, 4) + 7

    xs = [Fraction(x) for x in (2, 4, 6, 8)]
    coefficients = fit(xs, [f(int(x)) for x in xs])
    assert coefficients == [7, Fraction(3, 4), Fraction(1, 2)]
    assert polynomial_text(coefficients, "L") == "L^2/2 + 3/4 L + 7"
    # the smallest degree: a line through four collinear points is a line
    assert fit(xs, [3 * x for x in xs]) == [0, 3]
    big = [Fraction(0), Fraction(84934656), Fraction(1179648)]
    assert polynomial_text(big, "L") == "1,179,648 L^2 + 84,934,656 L"
    assert polynomial_text([Fraction(-5), Fraction(1)], "S") == "S - 5"
    assert polynomial_text([Fraction(0)], "S") == "0"
    # five points of a step function: only a degree-4 curve goes through them all
    steps = [Fraction(v) for v in (16, 16, 17, 17, 18)]
    assert len(fit([Fraction(x) for x in range(31, 36)], steps) or []) == 5


def test_check_points_keep_the_values_divisors_and_the_nominal_value() -> None:
    assert check_values([128, 256, 512, 1024]) == [1536, 768]
    assert check_values([32, 64, 96]) == [128]  # halfway, 80, is no multiple of 32
    assert check_values([32, 64, 128]) == [192, 96]
    assert nominal_value({"nominal": 512}, {"values": [128, 256]}) == 512
    assert nominal_value({}, {"values": [128, 256]}) == 128
    assert nominal_value({}, None) is None
    assert default_values(512) == [128, 256, 512, 1024]
    assert default_values(30) == [30, 60, 90, 120]  # a quarter of 30 would lose its divisors
    assert default_sweep(from_text("(1, L=256):long", "x").as_json()) == {
        "symbol": "L",
        "values": [64, 128, 256, 512],
    }
    assert default_sweep(from_text("(1, 3, S, S)", "x").as_json()) == {
        "symbol": "S",
        "values": [64, 128, 256, 512],
    }
    assert default_sweep(from_text("(1, 3, 8, 8)", "x").as_json()) is None


# -- sweeps of real models on meta ------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, vocab: int = 100, width: int = 64, ff: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def sweep(model_type: type[nn.Module], text: str, values: list[int]) -> dict[str, Any]:
    with torch.device("meta"):
        model = model_type()
    spec = from_text(text, "--input")
    assert spec.symbol is not None
    params = {"symbol": spec.symbol, "values": values}
    loader: Any = NoLoader()
    return run_sweep(torch, model, spec.as_json(), params, loader, 8192)


def coefficients(fitted: dict[str, Any]) -> dict[int, Fraction]:
    return {int(p): Fraction(c) for p, c in fitted["terms"] if Fraction(c) != 0}


def test_a_transformers_macs_are_quadratic_in_the_sequence_length() -> None:
    width, ff, layers, vocab, batch = 64, 128, 2, 100, 2
    result = sweep(Encoder, f"({batch}, L):long", [16, 32, 48, 64])
    assert "error" not in result, result.get("error")
    # per layer and token: q, k, v and out projections 4 d^2, the feed-forward 2 d ff; per
    # pair of tokens QK^T and attention x V, d each; the head d x vocab per token
    per_token = layers * (4 * width * width + 2 * width * ff) + width * vocab
    per_pair = layers * 2 * width
    macs = result["fits"]["macs"]
    assert coefficients(macs) == {2: batch * per_pair, 1: batch * per_token}
    assert macs["checked"] is True and result["check"]["value"] == 80
    assert macs["text"] == f"{batch * per_pair:,} L^2 + {batch * per_token:,} L"
    assert coefficients(result["fits"]["flops"]) == {
        2: 2 * batch * per_pair,
        1: 2 * batch * per_token,
    }
    # each point is the count of its own size, the check point too
    for point in [*result["points"], result["check"]]:
        value = point["value"]
        assert point["macs"] == batch * (per_pair * value * value + per_token * value)
    # activations with fused attention (as training kernels run it): linear in L, and checked
    activations = result["fits"]["activation_bytes"]
    assert activations["checked"] is True
    assert max(coefficients(activations)) == 1


def test_a_conv_nets_macs_are_quadratic_in_the_image_side() -> None:
    result = sweep(ConvNet, "(1, 3, S, S)", [32, 64, 96, 128])
    assert "error" not in result, result.get("error")
    # conv1: 3 x 16 x 3 x 3 per output pixel, S^2 pixels; conv2 (stride 2): 16 x 32 x 3 x 3 on
    # (S/2)^2 pixels; the head: 512 x 10 whatever S is (adaptive pooling)
    conv1, conv2, head = 3 * 16 * 9, 16 * 32 * 9, 32 * 4 * 4 * 10
    expected = {2: Fraction(conv1) + Fraction(conv2, 4), 0: Fraction(head)}
    assert coefficients(result["fits"]["macs"]) == expected
    assert result["fits"]["macs"]["checked"] is True and result["check"]["value"] == 160
    assert result["fits"]["macs"]["text"] == "1,584 S^2 + 5,120"
    assert result["fits"]["activation_bytes"]["checked"] is True


def test_sizes_a_stride_rounds_fit_no_polynomial_and_say_so() -> None:
    result = sweep(ConvNet, "(1, 3, S, S)", [31, 32, 33, 34, 35])
    macs = result["fits"]["macs"]
    assert macs["checked"] is False and macs["text"] is None
    assert "is not one polynomial in S" in macs["why"] and "at S=36" in macs["why"]


def test_a_size_the_model_cannot_take_ends_the_sweep_with_one_sentence() -> None:
    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Parameter(torch.zeros(64, 8))
            self.embed = nn.Embedding(10, 8)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.embed(ids) + self.positions[: ids.shape[1]]

    result = sweep(Positions, "(1, L):long", [16, 32, 64, 128])
    assert result["error"].startswith("at L=128:")
    # a model whose positions end at the largest value is checked halfway through its last step
    result = sweep(Positions, "(1, L):long", [16, 32, 64])
    assert "error" not in result
    assert result["check"]["value"] == 48
    assert result["fits"]["macs"]["checked"] is True


# -- in words, and from the command line ------------------------------------------------------

ENCODER_FILE = """
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, vocab=100, width=64, ff=128, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))
"""
# the hand count of the test above: per token 4 d^2 + 2 d ff per layer and d x vocab for the
# head; per pair of tokens 2 d per layer
PER_TOKEN, PER_PAIR = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 100, 2 * 2 * 64


def torchls(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_sweep_in_words_names_the_check_point_and_never_shows_an_unchecked_formula() -> None:
    from torchls.cost import report

    result = {"sweep": sweep(Encoder, "(1, L):long", [16, 32, 48])}
    lines = report.sweep_lines(result)
    assert lines[0] == f"MACs(L) = {PER_PAIR:,} L^2 + {PER_TOKEN:,} L (checked at L=64)"
    assert lines[1].startswith(f"FLOPs(L) = {2 * PER_PAIR:,} L^2")
    assert lines[2].startswith("activations(L) = ") and lines[2].endswith(
        " bytes (checked at L=64)"
    )
    table = "\n".join(report.sweep_text(result))
    for value in (16, 32, 48):
        assert f"{PER_PAIR * value * value + PER_TOKEN * value:,}" in table
    assert "L=64 (check)" in table

    stepped = {"sweep": sweep(ConvNet, "(1, 3, S, S)", [31, 32, 33, 34, 35])}
    lines = report.sweep_lines(stepped)
    assert lines[0].startswith("MACs(S): no exact formula; ")
    assert "S^4" not in "\n".join(lines)


def test_the_cli_profiles_a_named_dimension_at_its_written_value(tmp_path: Path) -> None:
    (tmp_path / "encoder.py").write_text(ENCODER_FILE)
    done = torchls("encoder.py::Encoder", "--input", "(1, L=32):long", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    assert result["macs"] == PER_PAIR * 32 * 32 + PER_TOKEN * 32
    assert result["inputs"]["tensors"][0]["shape"] == [1, 32]


def test_the_cli_sweep_prints_the_table_and_the_checked_formula(tmp_path: Path) -> None:
    (tmp_path / "encoder.py").write_text(ENCODER_FILE)
    done = torchls(
        "encoder.py::Encoder", "--input", "(1, L):long", "--sweep", "L=16,32,48", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"MACs(L) = {PER_PAIR:,} L^2 + {PER_TOKEN:,} L (checked at L=64)" in done.stdout
    # the main profile is at the sweep's first value
    assert f"MACs         {PER_PAIR * 16 * 16 + PER_TOKEN * 16:,}" in done.stdout
    done = torchls(
        "encoder.py::Encoder",
        "--input",
        "(1, L):long",
        "--sweep",
        "L=16,32,48",
        "--json",
        cwd=tmp_path,
    )
    fits = json.loads(done.stdout)["result"]["sweep"]["fits"]
    assert fits["macs"]["terms"] == [[2, str(PER_PAIR)], [1, str(PER_TOKEN)], [0, "0"]]
    assert fits["macs"]["checked"] is True
