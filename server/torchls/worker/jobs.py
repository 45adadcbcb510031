"""Jobs the worker runs. Each takes the job context and a JSON params dict and returns JSON.

Heavy imports (torch and friends) happen inside the jobs, never at module level, so that a
missing or broken torch becomes a job result instead of a dead worker.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from torchls.worker import protocol

Params = dict[str, Any]
Job = Callable[["JobContext", Params], Any]


@dataclass(frozen=True)
class JobContext:
    workspace: str | None
    allow_user_code: bool
    memory_limit_mb: int
    # One-shot workers report progress through it: (message, percentage or None).
    emit: Callable[[str, float | None], None] | None = None


class JobError(Exception):
    """A failure the job can describe in one sentence; `kind` is one of protocol.ERROR_*."""

    def __init__(self, kind: str, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.data = data  # anything JSON the caller can act on (the globals refused, ...)


# (import name, distribution names to look for)
_LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("torch",)),
    ("thop", ("thop", "ultralytics-thop")),
    ("transformers", ("transformers",)),
    ("sklearn", ("scikit-learn",)),
    ("safetensors", ("safetensors",)),
)


def _installed_version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def environment(context: JobContext, params: Params) -> dict[str, Any]:
    """What the worker's interpreter has: Python, torch (imported, to prove it works) and friends.

    Only torch is imported: the others are reported from their installed metadata, since
    importing transformers alone costs seconds.
    """
    libraries: dict[str, dict[str, Any]] = {}
    for module, distributions in _LIBRARIES:
        libraries[module] = {"version": _installed_version(distributions)}

    torch_info = libraries["torch"]
    if torch_info["version"] is not None:
        started = time.perf_counter()
        try:
            import torch
        except Exception as exc:  # a broken install says why instead of killing the worker
            torch_info["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            torch_info["version"] = str(torch.__version__)
            torch_info["cuda"] = bool(torch.cuda.is_available())
            torch_info["import_seconds"] = round(time.perf_counter() - started, 3)

    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "platform": platform.platform(terse=True),
        "pid": os.getpid(),
        "workspace": context.workspace,
        "user_code_allowed": context.allow_user_code,
        "memory_limit_mb": context.memory_limit_mb,
        "libraries": libraries,
    }


# Jobs that exist to prove the worker's safety nets in tests: they hang, crash and over-allocate
# on purpose. They are only available when TORCHLS_WORKER_TEST_JOBS=1 is set in the environment.


def _test_sleep(context: JobContext, params: Params) -> dict[str, Any]:
    seconds = float(params.get("seconds", 3600))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # a busy loop, like a runaway forward pass
        pass
    return {"slept": seconds}


def _test_crash(context: JobContext, params: Params) -> None:
    how = params.get("how", "segfault")
    if how == "exit":
        os._exit(17)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    raise JobError(protocol.ERROR_INTERNAL, f"unknown crash kind {how!r}")


def _test_allocate(context: JobContext, params: Params) -> dict[str, Any]:
    megabytes = int(params.get("megabytes", 1024))
    block = bytearray(megabytes * 1024 * 1024)
    return {"allocated_mb": len(block) // (1024 * 1024)}


def _test_echo(context: JobContext, params: Params) -> Params:
    print("noise on stdout from a job must not reach the protocol")
    return params


def profile(context: JobContext, params: Params) -> Any:
    """Parameters, MACs/FLOPs and the heaviest layers of a model (worker/profiling.py)."""
    from torchls.worker.profiling import profile as profile_model

    return profile_model(context, params)


def state_dict_shapes(context: JobContext, params: Params) -> Any:
    """The keys, shapes and dtypes a model's state dict has (worker/profiling.py)."""
    from torchls.worker.profiling import state_dict_shapes as shapes

    return shapes(context, params)


def downgrade_checkpoint(context: JobContext, params: Params) -> Any:
    """Re-save checkpoints in torch's legacy format and compare them (worker/downgrade.py)."""
    from torchls.worker.downgrade import downgrade

    return downgrade(context, params)


def convert_checkpoint(context: JobContext, params: Params) -> Any:
    """Convert a checkpoint (safetensors, extract, cast) and compare (worker/convert.py)."""
    from torchls.worker.convert import convert

    return convert(context, params)


def _test_forge(context: JobContext, params: Params) -> dict[str, Any]:
    """Write `lines` to every pipe this process can write to, as hostile user code would to
    find the answer channel; after `delay` seconds (from a thread) if given, else at once."""
    import threading

    payload = "".join(f"{line}\n" for line in params.get("lines", [])).encode()

    def forge() -> None:
        for name in os.listdir("/proc/self/fd"):  # noqa: PTH208 (os.write needs numbers)
            try:
                if os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):  # noqa: PTH115
                    os.write(int(name), payload)
            except OSError:
                continue

    delay = params.get("delay")
    if delay is None:
        forge()
    else:
        threading.Timer(float(delay), forge).start()
    return {"forged": len(params.get("lines", []))}


_JOBS: dict[str, Job] = {
    "environment": environment,
    "profile": profile,
    "state_dict": state_dict_shapes,
    "downgrade": downgrade_checkpoint,
    "convert": convert_checkpoint,
}
_TEST_JOBS: dict[str, Job] = {
    "test.sleep": _test_sleep,
    "test.crash": _test_crash,
    "test.allocate": _test_allocate,
    "test.echo": _test_echo,
    "test.forge": _test_forge,
}


def find_job(name: str) -> Job | None:
    if name in _JOBS:
        return _JOBS[name]
    if protocol.test_jobs_enabled():
        return _TEST_JOBS.get(name)
    return None
