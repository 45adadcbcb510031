"""From a target in the source to a worker job: inputs settled, sources attached, a cache key.

The key covers everything the answer depends on: the job (what to build, with which arguments
and inputs), the text of the file that defines the model and of every workspace module it
imports, and the torch version. An edit anywhere in that set makes a new key, so a cached
result can be stale (the hover says so) but never silently wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchls.files import read_bounded
from torchls.source.inputs import from_setting
from torchls.source.models import ModelTarget
from torchls.source.project import Project
from torchls.source.spec import InputSpec, default_sweep

# A Hugging Face config.json is a few KiB; past this the server does not read it (the worker,
# under its memory limit, is what builds the model from it).
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class PreparedProfile:
    target: ModelTarget
    params: dict[str, Any]  # the worker's `profile` job parameters
    key: str  # same key, same answer
    identity: str  # the same target across edits: where a stale answer may be shown
    problems: tuple[str, ...]


def prepare(
    target: ModelTarget,
    project: Project,
    document_path: str,
    default_shapes: Mapping[str, str] | None = None,
    torch_version: str | None = None,
    input_override: InputSpec | None = None,
    occurrence: int = 0,
) -> PreparedProfile:
    problems = list(target.problems)
    inputs = input_override or target.inputs
    if inputs is None and default_shapes:
        for key in (target.setting_key, target.name, "*"):
            if key in default_shapes:
                inputs, problem = from_setting(key, default_shapes[key])
                if problem:
                    problems.append(problem)
                break
    params = target.request()
    params["inputs"] = inputs.as_json() if inputs else None
    # `# torchls: input=(1, L):long`: the hover shows the cost as a formula in L
    sweep = default_sweep(params["inputs"]) if params["inputs"] else None
    if sweep is not None:
        params["sweep"] = sweep
    # where the user would write a `# torchls:` comment, for the worker's messages
    params["where"] = {"file": Path(document_path).name, "line": target.line}
    sources: dict[str, str] = {}
    digest = hashlib.sha256()
    for ref in _file_refs(params):
        module = project.module_file(str(ref["file"]))
        if module is None:
            continue
        closure = project.local_closure(module)
        digest.update(project.fingerprint(closure).encode())
        # The worker reads files from disk; unsaved editor text travels with the job.
        for local in closure:
            if project.is_open(local.path) or local.path == module.path:
                sources[local.path] = local.text
    for folder in _local_folders(params, project, document_path):
        # from_pretrained("./dir"): the answer depends on the folder's config.json
        digest.update(folder.encode())
        # Bounded: a config.json of gigabytes must not be read by the server.
        config_path = Path(folder) / "config.json"
        config = read_bounded(config_path, MAX_CONFIG_BYTES)
        if config is None:  # too large to read here: its size and time stand for it
            with contextlib.suppress(OSError):
                info = config_path.stat()
                config = f"{info.st_size}:{info.st_mtime_ns}".encode()
        digest.update(config or b"")
    params["sources"] = sources
    digest.update(
        json.dumps({k: v for k, v in params.items() if k != "sources"}, sort_keys=True).encode()
    )
    digest.update((torch_version or "").encode())
    identity = f"{document_path}::{target.kind}:{target.name}#{occurrence}"
    return PreparedProfile(target, params, digest.hexdigest(), identity, tuple(problems))


def _local_folders(params: dict[str, Any], project: Project, document_path: str) -> list[str]:
    """Literal strings of the job that name folders with a config.json (from_pretrained)."""
    bases = [Path(document_path).parent]
    if project.root is not None:
        bases.append(project.root)
    found = []
    for text in _strings(params.get("args")) + _strings(params.get("kwargs")):
        if len(text) > 4096 or "\0" in text:
            continue
        for base in bases:
            folder = base / Path(text).expanduser()
            with contextlib.suppress(OSError, ValueError):
                if (folder / "config.json").is_file():
                    found.append(str(folder.resolve()))
                    break
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        literal = value.get("literal")
        if isinstance(literal, str) and len(value) == 1:
            return [literal]
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _file_refs(value: Any) -> list[dict[str, Any]]:
    """Every reference to a workspace file inside the job: the model's and its arguments'."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if "file" in value and "qualname" in value:
            found.append(value)
        for item in value.values():
            if item is not value:
                found += _file_refs(item)
    elif isinstance(value, list):
        for item in value:
            found += _file_refs(item)
    return found
