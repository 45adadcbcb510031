"""What the worker's environment means for the user, in one line for a status bar."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# States, in the order a session usually meets them.
STARTING = "starting"
READY = "ready"
MISSING_TORCH = "missing-torch"
BROKEN_TORCH = "broken-torch"
RESTARTING = "restarting"
ERROR = "error"


@dataclass(frozen=True)
class ServerStatus:
    state: str
    message: str
    python: str | None = None
    torch: str | None = None
    cuda: bool | None = None
    trusted: bool = True
    user_code_allowed: bool = True
    worker_pid: int | None = None
    worker_starts: int = 0
    last_worker_exit: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def status_from_environment(environment: dict[str, Any]) -> tuple[str, str, str | None]:
    """(state, message, torch version) for the result of the worker's `environment` job."""
    python = str(environment.get("python", "?"))
    torch = environment.get("libraries", {}).get("torch", {})
    version = torch.get("version")
    if version is None:
        return MISSING_TORCH, f"torch not found in {python}", None
    if torch.get("error"):
        return BROKEN_TORCH, f"torch {version} in {python} fails to import: {torch['error']}", None
    return READY, f"torch {version} ({python})", str(version)
