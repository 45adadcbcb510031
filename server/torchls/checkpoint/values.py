"""`torchls diff --values`: each shared tensor's max abs difference and relative norm of the
difference, from the files' bytes.

The reader's child process says where each tensor's bytes lie (locate.py, no torch, no pickle
code run); a second child, started with the interpreter that has torch, maps both files and
compares them a chunk at a time (values_child.py). This process imports no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.isolated import DEFAULT_MEMORY_MB, _command

VALUES_CHILD = str(Path(__file__).with_name("values_child.py"))
ALL_TENSORS = "(all tensors)"


def _locations(path: str, timeout: float) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(
            _command(path, DEFAULT_MEMORY_MB, None, "locate"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckpointError(
            path, f"locating its tensors took longer than {timeout:g} s"
        ) from None
    try:
        message = json.loads(done.stdout)
    except ValueError:
        message = None
    if isinstance(message, dict) and "locations" in message:
        found: list[dict[str, Any]] = message["locations"]
        return found
    if isinstance(message, dict) and "error" in message:
        raise CheckpointError(path, str(message["error"]))
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    raise CheckpointError(path, f"locating its tensors failed ({lines[-1] if lines else '?'})")


def _by_name(locations: list[dict[str, Any]], container: str) -> dict[str, dict[str, Any]]:
    if container == ALL_TENSORS:
        return {loc["container"] + f"[{loc['key']!r}]": loc for loc in locations}
    return {loc["key"]: loc for loc in locations if loc["container"] == container}


def compare_values(
    a: str,
    b: str,
    document: dict[str, Any],
    python: str | None = None,
    timeout: float = 3600.0,
) -> list[dict[str, Any]]:
    """One row per tensor both hold with the same shape: max_abs_diff and rel_norm (the norm of
    B - A over the norm of A), or an error for that tensor."""
    side_a = _by_name(_locations(a, timeout), document["a"]["container"])
    side_b = _by_name(_locations(b, timeout), document["b"]["container"])
    rename = document.get("renamed") or {}
    strip, add = rename.get("a_prefix", ""), rename.get("b_prefix", "")
    pairs = []
    for key, location in side_a.items():
        other_key = key
        if strip and key.startswith(strip) and key[len(strip) :] in side_b:
            other_key = key[len(strip) :]
        elif add and add + key in side_b:
            other_key = add + key
        other = side_b.get(other_key)
        if other is None or other["shape"] != location["shape"]:
            continue
        pair: dict[str, Any] = {"key": key, "a": location, "b": other}
        if other_key != key:
            pair["b_key"] = other_key
        pairs.append(pair)
    if not pairs:
        return []
    command = [python or sys.executable, "-I", VALUES_CHILD]
    try:
        done = subprocess.run(
            command,
            input=json.dumps({"pairs": pairs}).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CheckpointError(b, f"comparing values took longer than {timeout:g} s") from None
    try:
        values: list[dict[str, Any]] = json.loads(done.stdout)["values"]
    except (ValueError, KeyError, TypeError):
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else f"exit code {done.returncode}"
        if "No module named 'torch'" in last:
            last = f"torch is not installed in {command[0]}; pass --python with one that has it"
        raise CheckpointError(b, f"comparing values failed: {last}") from None
    return values
