"""Typed initialization options, read defensively.

Every client sends something different (VS Code sends everything, Neovim often nothing, a typo
in a user's config sends garbage). Each field is checked on its own; a bad value is replaced by
its default and the reason is returned as a warning to log, never raised -- except the two
safety switches, where a value that is not a boolean (`"false"`, `0`, `"no"`) reads as "no":
whoever wrote it meant something, and guessing "yes" would run workspace code they may have
meant to keep from running.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerOptions:
    # The worker's interpreter, with leading arguments; empty means the server's own Python.
    interpreter: tuple[str, ...] = ()
    timeout_seconds: float = 30.0
    memory_limit_mb: int = 8192


@dataclass(frozen=True)
class InitOptions:
    # VS Code always sends its real workspace-trust state; a client that sends nothing is trusted.
    trusted: bool = True
    # The user's own switch: never run workspace code, even in a trusted workspace.
    allow_user_code: bool = True
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    # Input shapes by model name ("SmallConvNet", "resnet50", or "*" for any), in the
    # `# torchls: input=` syntax; used when the source states none.
    default_input_shapes: Mapping[str, str] = field(default_factory=dict)
    # Documents larger than this (UTF-8 kilobytes) are not analysed: holding the syntax tree of
    # a file costs about 120 bytes of memory per byte of source, and parsing it about 1 s per
    # 1.5 MB, on every edit (bench/large_files.py measures both).
    max_file_size_kb: int = 512
    # Issue 19: what is shown in the code itself. Shapes bound in forward() and parameter
    # counts on `self.x = ...` lines in __init__ (inlay hints), the CodeLens above models, and
    # the GPU the training-memory figures are measured against (its memory in GiB, as GPUs
    # are sold: a "24 GB" card holds 24 GiB).
    inlay_hints_shapes: bool = True
    inlay_hints_parameters: bool = False
    code_lens: bool = True
    gpu_memory_gb: float = 24.0

    @property
    def user_code_allowed(self) -> bool:
        return self.trusted and self.allow_user_code

    def worker_command(self) -> tuple[str, ...]:
        return self.worker.interpreter or (sys.executable,)


def _read_safety_switch(raw: Mapping[str, Any], key: str, warnings: list[str]) -> bool:
    """A switch that lets workspace code run: absent means yes, anything but `true` means no."""
    if key not in raw:
        return True
    value = raw[key]
    if isinstance(value, bool):
        return value
    warnings.append(
        f"initializationOptions.{key} must be true or false, not {value!r}; "
        "using false (no workspace code runs)"
    )
    return False


def _read_number(
    raw: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    warnings: list[str],
    prefix: str,
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        warnings.append(
            f"initializationOptions.{prefix}{key} must be a number from {low:g} to {high:g}, "
            f"not {value!r}; using {default:g}"
        )
        return default
    return float(value)


def _read_switch(
    raw: Mapping[str, Any], key: str, default: bool, warnings: list[str], prefix: str = ""
) -> bool:
    """A display switch: absent means its default, and so does a value that is not a boolean."""
    value = raw.get(key, default)
    if isinstance(value, bool):
        return value
    warnings.append(
        f"initializationOptions.{prefix}{key} must be true or false, not {value!r}; "
        f"using {str(default).lower()}"
    )
    return default


def _read_interpreter(value: Any, warnings: list[str]) -> tuple[str, ...]:
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(part, str) and part for part in value):
        return tuple(value)
    warnings.append(
        "initializationOptions.worker.interpreter must be a path or a list of strings, "
        f"not {value!r}; using the server's own Python"
    )
    return ()


def _read_shapes(value: Any, warnings: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        warnings.append(
            "initializationOptions.defaultInputShapes must be an object like "
            '{"resnet50": "(1, 3, 224, 224)"}; ignored'
        )
        return {}
    shapes: dict[str, str] = {}
    for name, shape in value.items():
        if isinstance(name, str) and isinstance(shape, str):
            shapes[name] = shape
        else:
            warnings.append(
                f"initializationOptions.defaultInputShapes[{name!r}] must be a shape string "
                f'like "(1, 3, 224, 224)", not {shape!r}; ignored'
            )
    return shapes


def parse_init_options(raw: Any) -> tuple[InitOptions, list[str]]:
    """Read `initializationOptions`; returns the options and one warning per bad field."""
    warnings: list[str] = []
    if raw is None:
        return InitOptions(), warnings
    if not isinstance(raw, Mapping):
        # Whatever the client meant to say about trust is in there, unreadable: fail closed.
        warnings.append(
            f"initializationOptions must be an object, not {type(raw).__name__}; using defaults, "
            "with workspace code not allowed to run"
        )
        return InitOptions(allow_user_code=False), warnings

    defaults = WorkerOptions()
    worker_raw = raw.get("worker", {})
    if not isinstance(worker_raw, Mapping):
        warnings.append("initializationOptions.worker must be an object; using defaults")
        worker_raw = {}
    worker = WorkerOptions(
        interpreter=_read_interpreter(worker_raw.get("interpreter"), warnings),
        timeout_seconds=_read_number(
            worker_raw, "timeoutSeconds", defaults.timeout_seconds, 1, 3600, warnings, "worker."
        ),
        memory_limit_mb=int(
            _read_number(
                worker_raw,
                "memoryLimitMB",
                defaults.memory_limit_mb,
                0,
                1 << 22,
                warnings,
                "worker.",
            )
        ),
    )
    hints_raw = raw.get("inlayHints", {})
    if not isinstance(hints_raw, Mapping):
        warnings.append(
            'initializationOptions.inlayHints must be an object like {"shapes": true, '
            '"parameters": false}; using defaults'
        )
        hints_raw = {}
    for key in hints_raw:
        if key not in ("shapes", "parameters"):
            warnings.append(
                f"initializationOptions.inlayHints.{key} is not a torchls option; ignored"
            )
    known = {
        "trusted",
        "allowUserCode",
        "worker",
        "defaultInputShapes",
        "maxFileSizeKB",
        "inlayHints",
        "codeLens",
        "gpuMemoryGB",
    }
    for key in raw:
        if key not in known:
            warnings.append(f"initializationOptions.{key} is not a torchls option; ignored")
    return (
        InitOptions(
            trusted=_read_safety_switch(raw, "trusted", warnings),
            allow_user_code=_read_safety_switch(raw, "allowUserCode", warnings),
            worker=worker,
            default_input_shapes=_read_shapes(raw.get("defaultInputShapes"), warnings),
            max_file_size_kb=int(
                _read_number(
                    raw, "maxFileSizeKB", InitOptions.max_file_size_kb, 1, 1 << 20, warnings, ""
                )
            ),
            inlay_hints_shapes=_read_switch(
                hints_raw, "shapes", InitOptions.inlay_hints_shapes, warnings, "inlayHints."
            ),
            inlay_hints_parameters=_read_switch(
                hints_raw, "parameters", InitOptions.inlay_hints_parameters, warnings, "inlayHints."
            ),
            code_lens=_read_switch(raw, "codeLens", InitOptions.code_lens, warnings),
            gpu_memory_gb=_read_number(
                raw, "gpuMemoryGB", InitOptions.gpu_memory_gb, 0.001, 1 << 20, warnings, ""
            ),
        ),
        warnings,
    )
