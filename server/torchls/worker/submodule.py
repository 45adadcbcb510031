"""A submodule's share of its parent's profile (`self.encoder = Encoder(...)` in the parent's
`__init__`): the parent is built and counted as usual, and the submodule at the job's attribute
path is watched during that same forward, so its MACs add up with the parent's."""

from __future__ import annotations

from typing import Any

from torchls.worker import protocol
from torchls.worker.jobs import JobError, Params
from torchls.worker.measure import _count_parameters, _first_tensor


class SubmoduleWatch:
    """Hooks the submodule before the parent's forward; `result` reads its share after."""

    def __init__(self, torch: Any, model: Any, path: str) -> None:
        self.torch = torch
        self.path = path
        try:
            self.module = model.get_submodule(path)
        except AttributeError:
            children = ", ".join(f"`{name}`" for name, _ in model.named_children()) or "none"
            raise JobError(
                protocol.ERROR_USER,
                f"the built {type(model).__name__} has no submodule `{path}` (its submodules: "
                f"{children}); `self.{path}` is not an nn.Module, or is replaced later",
            ) from None
        # The name the parent's counting knows it by (the first, when a module is shared).
        self.counted_as = next(
            (name for name, module in model.named_modules() if module is self.module), path
        )
        self.output: list[int] | None = None
        self.calls = 0
        self._handle = self.module.register_forward_hook(self._after)

    def _after(self, module: Any, args: Any, output: Any) -> None:
        self.calls += 1
        tensor = _first_tensor(output, self.torch)
        if tensor is not None and self.output is None:
            self.output = list(tensor.shape)

    def result(self, measured: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
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


def watch(torch: Any, model: Any, params: Params) -> SubmoduleWatch | None:
    """The watch for the job's `submodule` parameter, or None for a whole-model profile."""
    path = params.get("submodule")
    if not path:
        return None
    return SubmoduleWatch(torch, model, str(path))
