"""The model report's module tree and the hover's grouped heaviest layers (issue 19, item 3).

The worker's `tree` is compared with what torch says of the same model built in this process
(pre-order paths, parameters per module, output shapes of a real CPU forward); MACs with the
convolution and matmul formulas of the layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.profiling.reference_models import RESNET50_EXPECTED
from tests.profiling.test_profile_job import FIXTURES, Runner

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    made = Runner(tmp_path_factory.mktemp("module_tree"))
    yield made
    made.close()


@pytest.fixture(scope="module")
def resnet(runner: Runner) -> dict[str, Any]:
    path = runner.write(
        """
        from visionlib.models import resnet50

        model = resnet50()  # torchls: input=(1, 3, 224, 224)
        """,
        name="resnet_tree.py",
    )
    return runner.ok(path, "resnet50")


def _local_resnet50() -> Any:
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        from visionlib.models import resnet50
    finally:
        sys.path.remove(str(FIXTURES))
    torch.manual_seed(0)
    return resnet50().eval()


def conv_macs(cin: int, cout: int, k: int, size: int) -> int:
    return cin * cout * k * k * size * size


def test_the_tree_is_every_module_in_pre_order_with_its_parameters(resnet: dict[str, Any]) -> None:
    model = _local_resnet50()
    rows = resnet["tree"]
    assert [row["path"] for row in rows] == [path for path, _ in model.named_modules()]
    assert resnet["tree_truncated"] is False
    modules = dict(model.named_modules())
    for row in rows:
        module = modules[row["path"]]
        assert row["type"] == type(module).__name__
        assert row["params"] == sum(p.numel() for p in module.parameters())
        assert row["trainable"] == row["params"]
        assert row["depth"] == (row["path"].count(".") + 1 if row["path"] else 0)
    root = rows[0]
    assert root["params"] == resnet["parameters"]["total"] == RESNET50_EXPECTED["params"]
    assert root["macs"] == resnet["macs"] and root["share"] == 1.0 and root["calls"] == 1
    # the leaves hold every parameter exactly once
    leaves = [row for row in rows if not list(modules[row["path"]].children())]
    assert sum(row["params"] for row in leaves) == root["params"]


def test_output_shapes_are_those_of_a_real_forward(resnet: dict[str, Any]) -> None:
    model = _local_resnet50()
    seen: dict[str, list[int]] = {}
    names = {id(module): path for path, module in model.named_modules()}

    def hook(module: Any, args: Any, output: Any) -> None:
        seen.setdefault(names[id(module)], list(output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for handle in handles:
        handle.remove()
    assert {row["path"]: row["output"] for row in resnet["tree"]} == seen
    assert seen["layer1"] == [1, 256, 56, 56] and seen[""] == [1, 1000]


def test_macs_add_up_and_a_layer_used_three_times_says_so(resnet: dict[str, Any]) -> None:
    rows = {row["path"]: row for row in resnet["tree"]}
    assert sum(row["own_macs"] for row in rows.values()) == resnet["macs"]
    for path, row in rows.items():
        children = [
            child
            for child in rows
            if child.rpartition(".")[0] == path and child != path and (path or "." not in child)
        ]
        assert row["macs"] == row["own_macs"] + sum(rows[c]["macs"] for c in children), path
        assert row["share"] == pytest.approx(row["macs"] / resnet["macs"])
    # each Bottleneck calls its one ReLU three times
    assert rows["layer2.1.relu"]["calls"] == 3 and rows["relu"]["calls"] == 1
    assert rows["layer3.2.conv2"]["macs"] == conv_macs(256, 256, 3, 14)


def test_repeated_blocks_are_marked_on_the_first_of_each_run(resnet: dict[str, Any]) -> None:
    repeats = {row["path"]: row["repeat"] for row in resnet["tree"] if row["repeat"]}
    # the first block of each stage has a downsample branch (more parameters): the run of
    # identical blocks starts at the second
    assert repeats == {
        f"layer{stage}.1": {
            "label": f"layer{stage}.1-{blocks - 1}",
            "count": blocks - 1,
            "last": f"layer{stage}.{blocks - 1}",
        }
        for stage, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3), strict=True)
    }


def test_heaviest_layers_group_the_same_layer_of_repeated_blocks(resnet: dict[str, Any]) -> None:
    layers = resnet["layers"]
    by_path = {layer["path"]: layer for layer in layers}
    assert len(layers) == 8
    # every 3x3 conv of stage 3 costs the same (the first one strides from 28 to 14)
    conv2 = by_path["layer3.0-5.conv2"]
    assert conv2["count"] == 6 and conv2["type"] == "Conv2d"
    assert conv2["macs"] == 6 * conv_macs(256, 256, 3, 14)
    assert conv2["params"] == 256 * 256 * 9
    assert conv2["share"] == pytest.approx(conv2["macs"] / resnet["macs"])
    assert by_path["layer1.0-2.conv2"]["count"] == 3
    macs = [layer["macs"] for layer in layers]
    assert macs == sorted(macs, reverse=True)
    assert sum(layer["share"] for layer in layers) <= 1.0


def test_a_module_list_that_is_never_called_costs_what_its_blocks_cost(runner: Runner) -> None:
    path = runner.write(
        """
        import torch
        from torch import nn


        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.qkv = nn.Linear(width, 3 * width)
                self.proj = nn.Linear(width, width)

            def forward(self, x):
                q, k, v = self.qkv(x).chunk(3, dim=-1)
                return x + self.proj(torch.softmax(q @ k.transpose(-2, -1), -1) @ v)


        class Stack(nn.Module):  # torchls: input=(2, 10, 16)
            def __init__(self, depth=4, width=16):
                super().__init__()
                self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
                self.head = nn.Linear(width, 3)

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return self.head(x)
        """,
        name="stack_tree.py",
    )
    result = runner.ok(path, "Stack", kind="class")
    rows = {row["path"]: row for row in result["tree"]}
    block = 2 * 10 * 16 * 48 + 2 * 10 * 10 * 16 * 2 + 2 * 10 * 16 * 16
    assert rows["blocks"]["calls"] == 0 and rows["blocks"]["output"] is None
    assert rows["blocks"]["macs"] == 4 * block and rows["blocks"]["own_macs"] == 0
    assert rows["blocks.0"]["repeat"] == {"label": "blocks.0-3", "count": 4, "last": "blocks.3"}
    assert rows["blocks.0"]["own_macs"] == 2 * 10 * 10 * 16 * 2  # the two matmuls
    layers = {layer["path"]: layer for layer in result["layers"]}
    assert layers["blocks.0-3.qkv"]["count"] == 4
    assert layers["blocks.0-3.qkv"]["macs"] == 4 * 2 * 10 * 16 * 48
    assert layers["blocks.0-3"]["type"] == "Block"  # their own attention matmuls
    assert layers["head"]["count"] == 1


def test_shared_layers_and_frozen_parameters_are_counted_once(runner: Runner) -> None:
    path = runner.write(
        """
        from torch import nn


        class Tied(nn.Module):  # torchls: input=(2, 8)
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(8, 8)
                self.b = nn.Linear(8, 8)
                self.b.weight = self.a.weight
                self.a.requires_grad_(False)

            def forward(self, x):
                return self.b(self.a(x))
        """,
        name="tied_tree.py",
    )
    result = runner.ok(path, "Tied", kind="class")
    root = result["tree"][0]
    assert root["params"] == result["parameters"]["total"] == 8 * 8 + 8 + 8
    assert root["trainable"] == result["parameters"]["trainable"] == 8
