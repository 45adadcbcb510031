"""A submodule's share of its parent's profile (`self.encoder = Encoder(...)` in the parent's
`__init__`): the parent is built and counted as usual, and the submodule at the job's attribute
path is watched during that same forward, so its MACs add up with the parent's."""

from __future__ import annotations

from typing import Any

from torchls.worker.jobs import Params
from torchls.worker.measure import _count_parameters, _first_tensor


class SubmoduleWatch:
    """Hooks the submodule before the parent's forward; `result` reads its share after."""

    def __init__(self, torch: Any, model: Any, path: str) -> None:
        self.torch = torch
        self.path = path
        self.output: list[int] | None = None
        self.calls = 0
        self.missing = ""
        try:
            self.module = model.get_submodule(path)
        except AttributeError:
            # `self.scale = math.sqrt(d)`: an attribute, but no module; the parent still counts
            value = _attribute(model, path)
            what = "not set" if value is _MISSING else f"a {type(value).__name__}"
            self.missing = f"`self.{path}` of the built {type(model).__name__} is {what}"
            self.module = None
            return
        # The name the parent's counting knows it by (the first, when a module is shared).
        self.counted_as = next(
            (name for name, module in model.named_modules() if module is self.module), path
        )
        self._handle = self.module.register_forward_hook(self._after)

    def _after(self, module: Any, args: Any, output: Any) -> None:
        self.calls += 1
        tensor = _first_tensor(output, self.torch)
        if tensor is not None and self.output is None:
            self.output = list(tensor.shape)

    def result(self, measured: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
        if self.module is None:
            return {"path": self.path, "missing": self.missing}
        self._handle.remove()
        counts = _count_parameters(self.torch, self.module)
        inclusive = measured.get("inclusive") or {}
        macs = inclusive.get(self.counted_as)
        parent_macs = measured["flops"] // 2
        parent_parameters = parent["parameters"]["total"]
        return {
            "path": self.path,
            "type": type(self.module).__name__,
            "parameters": counts["parameters"],
            "buffers": counts["buffers"],
            "macs": macs,
            "flops": None if macs is None else macs * 2,
            "output": self.output,
            "calls": self.calls,
            "share_parameters": (
                counts["parameters"]["total"] / parent_parameters if parent_parameters else 0.0
            ),
            "share_macs": (macs / parent_macs if parent_macs and macs is not None else 0.0),
        }


_MISSING = object()


def _attribute(model: Any, path: str) -> Any:
    value = model
    for name in path.split("."):
        value = getattr(value, name, _MISSING)
        if value is _MISSING:
            break
    return value


def watch(torch: Any, model: Any, params: Params) -> SubmoduleWatch | None:
    """The watch for the job's `submodule` parameter, or None for a whole-model profile."""
    path = params.get("submodule")
    if not path:
        return None
    return SubmoduleWatch(torch, model, str(path))
