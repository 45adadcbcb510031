"""compare.py: what load_state_dict will do, predicted from keys and shapes alone."""

from __future__ import annotations

import pytest

from torchls.compare import compare, find_prefix_fix, group_keys

MODEL = {
    "features.0.weight": (32, 3, 3, 3),
    "features.0.bias": (32,),
    "features.1.weight": (32,),
    "features.1.running_mean": (32,),
    "classifier.weight": (10, 32),
    "classifier.bias": (10,),
}


def test_identical_keys_load_strictly() -> None:
    result = compare(MODEL, dict(MODEL))
    assert result.loads_strict and result.overlap == 1.0


def test_dataparallel_prefix_is_found_and_stripping_it_loads() -> None:
    checkpoint = {f"module.{key}": shape for key, shape in MODEL.items()}
    result = compare(MODEL, checkpoint)
    assert not result.loads_strict and result.overlap == 0.0
    assert result.prefix_fix is not None and result.prefix_fix.strip == "module."
    assert result.prefix_fix.keys_matched == len(MODEL)
    renamed = {key.removeprefix("module."): shape for key, shape in checkpoint.items()}
    assert compare(MODEL, renamed).loads_strict


def test_a_wrapped_model_and_a_plain_checkpoint_need_a_prefix_added() -> None:
    wrapped = {f"_orig_mod.{key}": shape for key, shape in MODEL.items()}
    fix = find_prefix_fix(wrapped, MODEL)
    assert fix is not None and fix.add == "_orig_mod."


def test_a_new_head_is_a_shape_mismatch_that_strict_false_does_not_skip() -> None:
    checkpoint = dict(MODEL, **{"classifier.weight": (1000, 32), "classifier.bias": (1000,)})
    result = compare(MODEL, checkpoint)
    assert [m.key for m in result.mismatched] == ["classifier.weight", "classifier.bias"]
    assert result.head_only and not result.loads_non_strict
    assert result.overlap == pytest.approx(1 - (10 * 32 + 10) / sum(_n(s) for s in MODEL.values()))


def test_thop_leftovers_are_unexpected_and_named_stray() -> None:
    checkpoint = dict(MODEL, **{"total_ops": (1,), "features.0.total_params": (1,)})
    result = compare(MODEL, checkpoint)
    assert sorted(result.stray) == ["features.0.total_params", "total_ops"]
    assert result.loads_non_strict and not result.loads_strict


def test_missing_keys_are_grouped_by_prefix() -> None:
    keys = [f"layer4.{block}.conv{i}.weight" for block in range(3) for i in range(3)]
    keys.append("fc.weight")
    groups = group_keys(keys)
    assert groups[0].prefix == "layer4.0" and groups[0].count == 3
    assert group_keys(keys, depth=1)[0].prefix == "layer4" and group_keys(keys, 1)[0].count == 9


def test_predictions_match_what_torch_does() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))

    model = build()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    cases = {
        "same": build().state_dict(),
        "prefixed": {f"module.{k}": v for k, v in build().state_dict().items()},
        "new head": {
            **build().state_dict(),
            "3.weight": torch.zeros(7, 8),
            "3.bias": torch.zeros(7),
        },
        "stray": {**build().state_dict(), "total_ops": torch.zeros(1)},
    }
    for name, state in cases.items():
        predicted = compare(shapes, {k: tuple(v.shape) for k, v in state.items()})
        for strict, expected in (
            (True, predicted.loads_strict),
            (False, predicted.loads_non_strict),
        ):
            try:
                build().load_state_dict(state, strict=strict)
                loaded = True
            except RuntimeError:
                loaded = False
            assert loaded == expected, (name, strict)


def _n(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def test_a_model_wrapped_twice_needs_both_prefixes_stripped() -> None:
    model = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 8)}
    checkpoint = {f"module.module.{key}": shape for key, shape in model.items()}
    result = compare(model, checkpoint)
    assert result.prefix_fix is not None and result.prefix_fix.strip == "module.module."
    assert result.prefix_fix.keys_matched == 3
