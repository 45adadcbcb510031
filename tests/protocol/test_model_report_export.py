"""The model report's builders on results in the worker's format (issue 19's contract): every
module in the exports, repeated blocks labelled, training figures from their formula, where the
input came from; and the inlay hints' merging of several models' hints."""

from __future__ import annotations

import csv
import io
from typing import Any

from torchls.cost import model_report
from torchls.cost.report import ReportContext
from torchls.lsp.inlay import _add_shape, _Merged

CONV = 3 * 8 * 9 + 8


def _row(
    path: str,
    type_name: str,
    depth: int,
    params: int,
    macs: int,
    output: list[int] | None,
    repeat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "path": path,
        "type": type_name,
        "depth": depth,
        "output": output,
        "params": params,
        "trainable": params,
        "macs": macs,
        "own_macs": 0,
        "share": 0.0,
        "calls": 1,
        "repeat": repeat,
    }


def _result(**extra: Any) -> dict[str, Any]:
    block_params, block_macs = 8 * 8 * 9 + 8, 8 * 8 * 9 * 16 * 16 * 2
    blocks = [
        _row(f"body.{i}", "Block", 2, block_params, block_macs, [2, 8, 16, 16]) for i in range(3)
    ]
    blocks[0]["repeat"] = {"label": "body.0-2", "count": 3, "last": "body.2"}
    total_params = CONV + 3 * block_params
    total_macs = 3 * 8 * 9 * 16 * 16 * 2 + 3 * block_macs
    tree = [
        _row("", "Net", 0, total_params, total_macs, [2, 8, 16, 16]),
        _row("stem", "Conv2d", 1, CONV, 3 * 8 * 9 * 16 * 16 * 2, [2, 8, 16, 16]),
        _row("body", "Sequential", 1, 3 * block_params, 3 * block_macs, [2, 8, 16, 16]),
        *blocks,
    ]
    for row in tree:
        row["share"] = row["macs"] / total_macs
    return {
        "name": "Net",
        "class": "model.Net",
        "parameters": {
            "total": total_params,
            "trainable": total_params - CONV,
            "frozen": CONV,
            "bytes": 4 * total_params,
        },
        "buffers": {"total": 0, "tensors": 0, "bytes": 0},
        "macs": total_macs,
        "flops": 2 * total_macs,
        "inputs": {
            "tensors": [{"shape": [2, 3, 16, 16], "dtype": "float32"}],
            "source": "`# torchls: input=` on line 4",
            "guess": False,
        },
        "layers": [],
        "tree": tree,
        "mode": "meta",
        "notes": ["a note from the worker"],
        **extra,
    }


def test_exports_hold_every_module_and_label_repeated_blocks() -> None:
    result = _result()
    document = model_report.build(result, ReportContext(call="Net()", kind="class"), 24)
    assert document["input"]["text"] == "(2, 3, 16, 16)"
    assert document["input"]["origin"] == "comment"
    assert document["notes"] == ["a note from the worker"]
    rows = list(csv.DictReader(io.StringIO(document["csv"])))
    assert [row["path"] for row in rows] == [row["path"] for row in result["tree"]]
    assert [int(row["params"]) for row in rows] == [row["params"] for row in result["tree"]]
    assert rows[3]["group"] == "body.0-2: 3 x Block" and rows[4]["group"] == ""
    assert rows[1]["output"] == "2x8x16x16"
    # every module is a row of the Markdown table too, the root under the model's name
    markdown = document["markdown"]
    for row in result["tree"]:
        assert f"`{row['path'] or '(Net)'}`" in markdown
    assert "body.0-2: 3 x Block" in markdown
    assert f"{result['macs']:,}" in markdown
    # the children's parameters add up to the root's, as in the tree given
    children = [row for row in rows if row["path"].count(".") == 0 and row["path"]]
    assert sum(int(row["params"]) for row in children) == int(rows[0]["params"])


def test_training_figures_follow_the_adam_formula() -> None:
    result = _result(
        training={
            "batch": 2,
            "activation_bytes": 3 << 20,
            "per_sample_bytes": 1 << 20,
            "fixed_bytes": 1 << 20,
            "backward_flops": 10,
            "backward_estimated": False,
            "estimate_reason": None,
            "error": None,
        }
    )
    document = model_report.build(result, ReportContext(), 1)
    training = document["training"]
    parameters = result["parameters"]
    states = 16 * parameters["trainable"] + 4 * parameters["frozen"]
    assert training["states_bytes"] == states
    assert training["total_bytes"] == states + (3 << 20)
    assert training["max_batch"] == ((1 << 30) - states - (1 << 20)) // (1 << 20)
    assert "Adam training at batch 2" in training["summary"]
    # without a batch dimension to double, no largest batch, and a reason
    result["training"]["per_sample_bytes"] = None
    document = model_report.build(result, ReportContext(), 1)
    assert document["training"]["max_batch"] is None
    assert "batch dimension" in document["training"]["max_batch_reason"]


def test_input_origins() -> None:
    origin = model_report.input_origin
    assert origin({"source": "a guess from the first layer", "guess": True}) == "guess"
    assert origin({"source": "the torchls.defaultInputShapes setting ('Net')"}) == "setting"
    assert origin({"source": "`example_input_array` on line 9"}) == "example_input_array"
    assert origin({"source": "the call `model(x)` on line 3"}) == "call"


def test_an_older_result_without_a_tree_says_so() -> None:
    result = _result()
    del result["tree"]
    document = model_report.build(result, ReportContext(), 24)
    assert document["tree"] == [] and "no module tree" in document["tree_missing"]
    assert document["csv"].strip() == ",".join(model_report.CSV_COLUMNS)


def test_hints_of_several_models_merge_into_one_set() -> None:
    merged: dict[tuple[int, int, str], _Merged] = {}
    lines = ["        x = self.block(x)"]
    hint = {
        "line": 0,
        "character": 9,
        "kind": "bind",
        "name": "x",
        "values": ["(1, 8, 4, 4)"],
        "function": "Block.forward",
        "calls": 2,
    }
    _add_shape(merged, "Small (line 3 of a.py)", hint, lines)
    _add_shape(merged, "Large (line 9 of a.py)", {**hint, "values": ["(1, 16, 4, 4)"]}, lines)
    _add_shape(merged, "Again (line 12 of a.py)", hint, lines)
    (entry,) = merged.values()
    assert entry.label() == ": {(1, 8, 4, 4), (1, 16, 4, 4)}"
    assert entry.calls == [
        ("Small (line 3 of a.py)", 2),
        ("Large (line 9 of a.py)", 2),
        ("Again (line 12 of a.py)", 2),
    ]
    # a column in code points past a character outside the BMP is one more in UTF-16
    merged.clear()
    _add_shape(
        merged,
        "m",
        {**hint, "kind": "return", "character": 12},
        ['        "\U0001f525"[x]'],
    )
    (entry,) = merged.values()
    assert entry.character == 13 and entry.label() == "→ (1, 8, 4, 4)"


def test_settings_are_read_from_initialization_options() -> None:
    from torchls.config import InitOptions, parse_init_options

    options, warnings = parse_init_options({})
    assert (options.inlay_hints_shapes, options.inlay_hints_parameters) == (True, False)
    assert options.code_lens is True and options.gpu_memory_gb == 24
    options, warnings = parse_init_options(
        {
            "inlayHints": {"shapes": False, "parameters": True},
            "codeLens": False,
            "gpuMemoryGB": 80,
        }
    )
    assert warnings == []
    assert (options.inlay_hints_shapes, options.inlay_hints_parameters) == (False, True)
    assert options.code_lens is False and options.gpu_memory_gb == 80
    # each bad value falls back to its default alone, with a warning naming it
    options, warnings = parse_init_options(
        {"inlayHints": {"shapes": "no", "colour": 1}, "codeLens": 0, "gpuMemoryGB": -4}
    )
    assert options.inlay_hints_shapes is True and options.code_lens is True
    assert options.gpu_memory_gb == InitOptions.gpu_memory_gb
    assert len(warnings) == 4
    assert any("inlayHints.shapes" in w for w in warnings)
    assert any("inlayHints.colour" in w for w in warnings)
    options, warnings = parse_init_options({"inlayHints": True})
    assert options.inlay_hints_shapes is True and "inlayHints must be an object" in warnings[0]
