"""The checkpoint viewer's requests (`torchls/inspect`, `torchls/modelTargets`,
`torchls/compareModel`, `torchls/diff`) and the hover on a checkpoint path in code.

The contract with the client is /work/notes/viewer-protocol.md. Checkpoints are read by the
isolated reader process (no torch here, no pickle code run), so these requests work in untrusted
workspaces; only `compareModel` builds a model, in the worker, and refuses when it may not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pygls.uris import from_fs_path, to_fs_path

from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.isolated import read_isolated_async
from torchls.compare import compare
from torchls.cost.request import prepare
from torchls.loadcheck.analysis import Checkpoint, ModelKeys, best_candidate
from torchls.source.models import FileModels, ModelTarget
from torchls.worker import protocol

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

INSPECT = "torchls/inspect"
MODEL_TARGETS = "torchls/modelTargets"
COMPARE_MODEL = "torchls/compareModel"
DIFF = "torchls/diff"
OPEN_VIEWER_COMMAND = "torchls.openCheckpointViewer"

CACHE_ENTRIES = 16  # reports kept; a 50,000-tensor report is tens of MB in this process
MAX_WORKSPACE_FILES = 2_000  # Python files scanned for model targets
_SKIPPED_FOLDERS = {"node_modules", "__pycache__", "site-packages", "venv", "env", "build", "dist"}


def param(params: Any, name: str, default: Any = None) -> Any:
    """A field of a custom request's params: pygls hands them over as attribute objects."""
    if isinstance(params, dict):
        return params.get(name, default)
    return getattr(params, name, default)


def _path_of(uri: Any) -> str | None:
    if not isinstance(uri, str) or not uri:
        return None
    if "://" not in uri:
        return uri  # a plain path, as a CLI-minded client may send
    return to_fs_path(uri) if uri.startswith("file:") else None


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What a file (or a folder's files) looked like when it was read."""

    size: int
    mtime_ns: int
    key: tuple[Any, ...]  # all that must be unchanged for a cached report to stand

    def as_json(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns}


def stamp_of(path: str) -> Stamp:
    """The stat stamp of a file; of a folder (or a sharded index), every file beside it, since a
    shard rewritten in place changes what the index shows."""
    info = Path(path).stat()
    if not stat.S_ISDIR(info.st_mode) and not path.endswith(".index.json"):
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(path, "not a regular file (a device, pipe or socket)")
        return Stamp(info.st_size, info.st_mtime_ns, (info.st_size, info.st_mtime_ns, info.st_ino))
    folder = path if stat.S_ISDIR(info.st_mode) else str(Path(path).parent)
    entries: list[tuple[str, int, int]] = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if len(entries) >= 1_000:
                break
            with contextlib.suppress(OSError):
                if entry.is_file():
                    child = entry.stat()
                    entries.append((entry.name, child.st_size, child.st_mtime_ns))
    entries.sort()
    if stat.S_ISDIR(info.st_mode):
        size = sum(entry[1] for entry in entries)
        mtime = max([entry[2] for entry in entries] + [info.st_mtime_ns])
    else:
        size, mtime = info.st_size, info.st_mtime_ns
    return Stamp(size, mtime, (info.st_size, info.st_mtime_ns, tuple(entries)))


def viewer_extras(summary: dict[str, Any]) -> dict[str, Any]:
    """What the viewer shows beside the inspect document, taken from it."""
    details = summary.get("details") or {}
    shards = details.get("shards")
    root = summary.get("tree") or {}
    root_values = root.get("values") or {}
    config = details.get("config") or {}

    def version(*names: str) -> str | None:
        for name in names:
            value = root_values.get(name)
            if isinstance(value, str):
                return value
        return None

    versions: dict[str, str | None] = {
        "torch": version("torch_version", "pytorch_version", "torch"),
        "transformers": config.get("transformers_version")
        if isinstance(config.get("transformers_version"), str)
        else version("transformers_version"),
    }
    lightning = version("pytorch-lightning_version", "lightning_version")
    if lightning is not None:
        versions["lightning"] = lightning
    metadata = details.get("metadata")
    return {
        "shards": None
        if not isinstance(shards, list)
        else [
            {"file": s.get("file"), "tensors": s.get("tensors", 0), "bytes": s.get("bytes", 0)}
            for s in shards
        ],
        "shard_problems": list(details.get("shard_problems") or []),
        "versions": versions,
        "hparams": _hparams(root),
        "metadata": metadata if isinstance(metadata, dict) else None,
    }


def _hparams(root: dict[str, Any]) -> dict[str, Any] | None:
    """Lightning's `hyper_parameters` (save_hyperparameters()), as the plain values the reader
    kept, one level of nested mappings included."""
    for child in root.get("children") or []:
        if child.get("path") in ("['hyper_parameters']", "['hparams']"):
            values: dict[str, Any] = dict(child.get("values") or {})
            for nested in child.get("children") or []:
                name = nested.get("path", "")[len(child["path"]) :].strip("[]'\"")
                if name and nested.get("values"):
                    values[name] = dict(nested["values"])
            return values
    return None


class Checkpoints:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server
        # real path -> (stamp key, the answer without "cached")
        self._reports: OrderedDict[str, tuple[tuple[Any, ...], dict[str, Any]]] = OrderedDict()
        self._reading: dict[tuple[str, tuple[Any, ...]], asyncio.Future[dict[str, Any]]] = {}

    async def handle(self, method: str, params: Any) -> dict[str, Any]:
        """Answer one of the viewer's requests; a bad file or a bug is an answer's one-line
        `error`, never an LSP error the client would show as a failure of the extension."""
        handler = {
            INSPECT: self.inspect,
            MODEL_TARGETS: self.model_targets,
            COMPARE_MODEL: self.compare_model,
            DIFF: self.diff,
        }[method]
        try:
            return await handler(params)
        except Exception as exc:
            log.exception("%s failed", method)
            return {"error": f"{method} failed: {type(exc).__name__}: {str(exc)[:200]}"}

    # -- torchls/inspect ---------------------------------------------------------------------

    async def inspect(self, params: Any) -> dict[str, Any]:
        path = _path_of(param(params, "uri"))
        if path is None:
            return {"error": "torchls/inspect needs the file: URI of a checkpoint"}
        return await self.report(path)

    async def report(self, path: str) -> dict[str, Any]:
        """The viewer's document for `path`, from the cache while the file is unchanged."""
        name = Path(path).name or path
        real = os.path.realpath(path)
        try:
            stamp = stamp_of(real)
        except FileNotFoundError:
            return {"error": f"{name}: no such file or folder"}
        except CheckpointError as exc:
            return {"error": f"{name}: {exc.reason}"}
        except OSError as exc:
            return {"error": f"{name}: cannot read it ({exc.strerror or exc})"}
        cached = self._reports.get(real)
        if cached is not None and cached[0] == stamp.key:
            self._reports.move_to_end(real)
            return {**cached[1], "cached": True}
        key = (real, stamp.key)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(real, name, stamp))
            self._reading[key] = reading
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        answer = await asyncio.shield(reading)
        if "error" not in answer:
            self._reports[real] = (stamp.key, answer)
            while len(self._reports) > CACHE_ENTRIES:
                self._reports.popitem(last=False)
        return {**answer, "cached": False} if "error" not in answer else answer

    async def _read(self, real: str, name: str, stamp: Stamp) -> dict[str, Any]:
        try:
            summary = await read_isolated_async(real, mode="viewer")
        except CheckpointError as exc:
            return {"error": f"{name}: {exc.reason}"}
        return {"report": summary, "stamp": stamp.as_json(), **viewer_extras(summary)}

    def forget(self, path: str) -> None:
        self._reports.pop(os.path.realpath(path), None)

    # -- torchls/modelTargets ----------------------------------------------------------------

    async def model_targets(self, params: Any) -> dict[str, Any]:
        blocker = self.server.model_cost.blocker()
        if blocker is not None:
            return {"targets": [], "reason": blocker}
        root = self.server.workspace_root
        if not root:
            return {"targets": [], "reason": "no workspace folder is open"}
        project = self.server.model_cost.project()
        found: list[dict[str, Any]] = []
        for path in _python_files(root):
            module = project.module_file(path)
            if module is None:
                continue
            try:
                targets = FileModels(project, module).targets()
            except Exception:  # one odd file must not hide the others' models
                log.exception("model targets of %s", path)
                continue
            shown = os.path.relpath(path, root)
            for target in targets:
                found.append(
                    {
                        "label": f"{target.name} ({shown}:{target.line})",
                        "uri": from_fs_path(path),
                        "line": target.line - 1,
                        "name": target.name,
                        "kind": target.kind,
                    }
                )
            await asyncio.sleep(0)  # parsing a workspace must not hold up other requests
        return {"targets": found}

    # -- torchls/compareModel ----------------------------------------------------------------

    async def compare_model(self, params: Any) -> dict[str, Any]:
        path = _path_of(param(params, "uri"))
        target_params = param(params, "target")
        target_path = _path_of(param(target_params, "uri"))
        line = param(target_params, "line")
        name = param(target_params, "name")
        if path is None or target_path is None or not isinstance(name, str):
            return {"error": "torchls/compareModel needs a checkpoint uri and a target"}
        blocker = self.server.model_cost.blocker()
        if blocker is not None:
            return {"error": f"Comparing with a model builds it, which runs your code: {blocker}"}
        project = self.server.model_cost.project()
        module = project.module_file(target_path)
        if module is None:
            return {"error": f"{Path(target_path).name}: cannot read it"}
        models = FileModels(project, module)
        target = _find_target(models.targets(), name, line)
        if target is None:
            where = f"{Path(target_path).name}:{line + 1 if isinstance(line, int) else '?'}"
            return {"error": f"no model {name} at {where} (was the file edited?)"}
        prepared = prepare(
            dataclasses.replace(target, inputs=None),
            models.project,
            models.module.path,
            torch_version=self.server.current_status.torch,
        )
        checker = self.server.load_checks.checker
        report, result = await asyncio.gather(
            self.report(path), asyncio.shield(checker.models.get(prepared))
        )
        if "error" in report:
            return {"error": report["error"]}
        if not result.ok:
            if result.error_kind == protocol.ERROR_UNTRUSTED:
                return {"error": "this workspace is not trusted, so torchls builds no model"}
            return {"error": f"building `{target.call_text()}` failed: {result.message}"}
        model = ModelKeys.from_job(result.value)
        if target.wrapper_prefix:
            model = model.wrapped(target.wrapper_prefix)
        return model_comparison(Checkpoint.from_summary(report["report"]), model)

    # -- torchls/diff ------------------------------------------------------------------------

    async def diff(self, params: Any) -> dict[str, Any]:
        from torchls.checkpoint.diff import diff_documents

        a = _path_of(param(params, "a"))
        b = _path_of(param(params, "b"))
        if a is None or b is None:
            return {"error": "torchls/diff needs two checkpoint URIs, a and b"}
        first, second = await asyncio.gather(self.report(a), self.report(b))
        for answer in (first, second):
            if "error" in answer:
                return {"error": answer["error"]}
        return diff_documents(first["report"], second["report"])


def _find_target(targets: list[ModelTarget], name: str, line: Any) -> ModelTarget | None:
    named = [t for t in targets if t.name == name]
    for target in named:
        if isinstance(line, int) and target.line - 1 == line:
            return target
    return named[0] if len(named) == 1 else None


def _container_name(path: str) -> str:
    """ "['state_dict']" as the key the user writes, `state_dict`; deeper paths as they are."""
    if path.startswith("['") and path.endswith("']") and path.count("['") == 1:
        return path[2:-2]
    return path


def model_comparison(checkpoint: Checkpoint, model: ModelKeys) -> dict[str, Any]:
    """What `model.load_state_dict(<the checkpoint's state dict>)` would do, as the viewer shows
    it: the comparison the load_state_dict diagnostics make."""
    if "" in checkpoint.candidates:
        container: str | None = ""
    else:
        container = best_candidate(checkpoint, "", model)
    if container is None or container not in checkpoint.containers:
        return {
            "error": "the checkpoint holds no state dict (no mapping of names to tensors) "
            "to compare with"
        }
    keys = checkpoint.containers[container].tensors
    comparison = compare(model.keys, keys)
    matched = sum(1 for key in model.keys if key in keys) - len(comparison.mismatched)
    prefix = None
    fixes: list[str] = []
    name = _container_name(container)
    if container:
        fixes.append(f"load checkpoint[{name!r}], not the whole checkpoint")
    fix = comparison.prefix_fix
    if fix is not None:
        prefix = {"checkpoint": fix.strip, "model": fix.add}
        if fix.strip:
            fixes.append(
                f"strip {fix.strip!r} from the checkpoint's keys: "
                f"{{k.removeprefix({fix.strip!r}): v for k, v in state_dict.items()}} "
                f"({fix.keys_matched} keys then match)"
            )
        else:
            fixes.append(
                f"add {fix.add!r} to the checkpoint's keys: "
                f"{{{fix.add!r} + k: v for k, v in state_dict.items()}} "
                f"({fix.keys_matched} keys then match)"
            )
    if comparison.loads_strict:
        summary = f"load_state_dict loads it: all {matched} keys of {model.class_name} match"
    else:
        parts = []
        if comparison.missing:
            parts.append(f"{len(comparison.missing)} missing")
        if comparison.unexpected:
            parts.append(f"{len(comparison.unexpected)} unexpected")
        if comparison.mismatched:
            parts.append(f"{len(comparison.mismatched)} shape-mismatched")
        summary = (
            f"load_state_dict(strict=True) fails for {model.class_name}: {', '.join(parts)} "
            f"keys, {matched} match"
        )
        if prefix is not None:
            summary += (
                f"; the checkpoint's keys start with {fix.strip!r}"  # type: ignore[union-attr]
                if prefix["checkpoint"]
                else f"; the model's keys start with {prefix['model']!r}"
            )
        if comparison.loads_non_strict and fix is None:
            fixes.append(
                f"strict=False loads the {matched} matching keys and skips "
                f"{len(comparison.missing)} missing and {len(comparison.unexpected)} unexpected"
            )
        elif comparison.mismatched and comparison.head_only:
            fixes.append(
                "only the last layer differs in shape (another num_classes?): build the model "
                "with the checkpoint's size, or drop the head's keys and load with strict=False"
            )
    return {
        "matched": matched,
        "missing": comparison.missing,
        "unexpected": comparison.unexpected,
        "mismatched": [
            {"key": m.key, "checkpoint": list(m.checkpoint), "model": list(m.model)}
            for m in comparison.mismatched
        ],
        "prefix": prefix,
        "container": name,
        "summary": summary,
        "fixes": fixes,
    }


def _python_files(root: str) -> Iterator[str]:
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in _SKIPPED_FOLDERS
            and not (Path(folder) / d / "pyvenv.cfg").is_file()
        )
        for name in sorted(files):
            if name.endswith(".py"):
                count += 1
                if count > MAX_WORKSPACE_FILES:
                    return
                yield str(Path(folder) / name)


def viewer_link(path: str) -> str:
    """The hover's link to the viewer, as the contract says: a command URI whose argument is the
    url-encoded JSON array [uri]."""
    argument = quote(json.dumps([from_fs_path(path)]))
    return f"[Open in the checkpoint viewer](command:{OPEN_VIEWER_COMMAND}?{argument})"
