"""A model's state-dict keys against a checkpoint's: what `load_state_dict` will do, and why.

Pure data, no torch and no LSP types: the model side comes from the worker (meta device,
`state_dict()`), the checkpoint side from `checkpoint/` (read without torch). The diagnostics
and quick fixes of the language server and `torchls check` are built on these findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Shape = tuple[int, ...]
# A model entry whose shape is not fixed: a lazy module's uninitialized parameter (torch
# materializes it from the checkpoint) or extra state that is not a tensor.
ANY_SHAPE: Shape = (-2,)
# Prefixes that wrappers add to every key, the one the user is most likely to meet first.
WRAPPER_PREFIXES = (
    "module.",  # DataParallel, DistributedDataParallel
    "_orig_mod.",  # torch.compile
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "_forward_module.",  # Lightning's strategy wrappers
    "base_model.model.",  # PEFT
    "model.",  # a LightningModule holding the network as `self.model`
)
# Keys that are in one side for reasons that have nothing to do with the architecture.
STRAY_SUFFIXES = ("total_ops", "total_params")  # thop's leftovers
SAMPLE_KEYS = 5


@dataclass(frozen=True)
class KeyGroup:
    """Keys sharing a prefix, for messages like "47 keys under layer4.* are missing"."""

    prefix: str
    count: int
    sample: tuple[str, ...]


@dataclass(frozen=True)
class Mismatch:
    key: str
    model: Shape
    checkpoint: Shape


@dataclass(frozen=True)
class PrefixFix:
    """Rename checkpoint keys: strip `strip` from each (or add `add` to each)."""

    strip: str = ""
    add: str = ""
    keys_matched: int = 0


@dataclass
class Comparison:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)  # unexpected keys thop or HF left behind
    prefix_fix: PrefixFix | None = None
    head_only: bool = False  # only the last layer differs in shape (a num_classes change)
    overlap: float = 0.0  # share of the model's elements that the checkpoint fills

    @property
    def loads_strict(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def loads_non_strict(self) -> bool:
        """strict=False skips missing and unexpected keys, never a shape mismatch."""
        return not self.mismatched


def compare(model: Mapping[str, Shape], checkpoint: Mapping[str, Shape]) -> Comparison:
    result = Comparison()
    for key, shape in model.items():
        if key not in checkpoint:
            result.missing.append(key)
        elif tuple(shape) != ANY_SHAPE and tuple(checkpoint[key]) != tuple(shape):
            result.mismatched.append(Mismatch(key, tuple(shape), tuple(checkpoint[key])))
    for key in checkpoint:
        if key not in model:
            if key.rsplit(".", 1)[-1] in STRAY_SUFFIXES:
                result.stray.append(key)
            result.unexpected.append(key)
    filled = sum(
        _numel(shape)
        for key, shape in model.items()
        if key in checkpoint and tuple(shape) in (ANY_SHAPE, tuple(checkpoint[key]))
    )
    total = sum(_numel(shape) for shape in model.values())
    result.overlap = filled / total if total else 1.0
    if result.missing and result.unexpected:
        result.prefix_fix = find_prefix_fix(model, checkpoint)
    result.head_only = _head_only(model, result.mismatched)
    return result


def find_prefix_fix(
    model: Mapping[str, Shape], checkpoint: Mapping[str, Shape]
) -> PrefixFix | None:
    """The rename of checkpoint keys that makes the most of them match the model, if any makes
    at least as many match as without it (and more than half of the model's keys)."""
    baseline = sum(1 for key in checkpoint if key in model)
    best: PrefixFix | None = None
    for prefix in _candidate_prefixes(checkpoint):
        matched = sum(
            1 for key in checkpoint if key.startswith(prefix) and key[len(prefix) :] in model
        )
        if matched > baseline and (best is None or matched > best.keys_matched):
            best = PrefixFix(strip=prefix, keys_matched=matched)
    for prefix in _candidate_prefixes(model):
        matched = sum(1 for key in checkpoint if prefix + key in model)
        if matched > baseline and (best is None or matched > best.keys_matched):
            best = PrefixFix(add=prefix, keys_matched=matched)
    if best is None or best.keys_matched * 2 <= len(model):
        return None
    return best


def _candidate_prefixes(keys: Mapping[str, Shape]) -> list[str]:
    """Known wrapper prefixes, and the leading components every key shares (`module.` and
    `module.module.` for a model wrapped twice)."""
    found = [prefix for prefix in WRAPPER_PREFIXES if any(k.startswith(prefix) for k in keys)]
    if not keys or not all("." in key for key in keys):
        return found
    first = next(iter(keys)).split(".")[:-1]
    shared: list[str] = []
    for depth in range(min(4, len(first))):
        prefix = ".".join(first[: depth + 1]) + "."
        if not all(key.startswith(prefix) and len(key) > len(prefix) for key in keys):
            break
        shared.append(prefix)
    return found + [prefix for prefix in shared if prefix not in found]


def group_keys(keys: list[str], depth: int = 2) -> list[KeyGroup]:
    """Keys grouped by their first `depth` components, biggest group first."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        prefix = ".".join(parts[:depth]) if len(parts) > depth else ".".join(parts[:-1])
        groups.setdefault(prefix, []).append(key)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        KeyGroup(prefix, len(members), tuple(members[:SAMPLE_KEYS])) for prefix, members in ranked
    ]


def _head_only(model: Mapping[str, Shape], mismatched: list[Mismatch]) -> bool:
    """Every mismatch is in one module and only in its first dimension (its outputs): a head
    trained for another number of classes. Where the module sits in the model does not
    matter."""
    if not mismatched or not model:
        return False
    modules = {m.key.rsplit(".", 1)[0] for m in mismatched}
    if len(modules) != 1:
        return False
    return all(
        len(m.model) == len(m.checkpoint) and len(m.model) >= 1 and m.model[1:] == m.checkpoint[1:]
        for m in mismatched
    )


def _numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= max(dim, 0)
    return count
