"""The checkpoint viewer's requests (`torchls/inspect`, `torchls/modelTargets`,
`torchls/compareModel`, `torchls/diff`) and the hover on a checkpoint path in code.

The contract with the client is /work/notes/viewer-protocol.md. Checkpoints are read by the
isolated reader process (no torch here, no pickle code run), so these requests work in untrusted
workspaces; only `compareModel` builds a model, in the worker, and refuses when it may not.
"""

from __future__ import annotations

import ast
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

from lsprotocol import types
from pygls.uris import from_fs_path, to_fs_path

from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.isolated import read_viewer_async
from torchls.checkpoint.summary import TENSOR_COLUMNS, tensors_from_rows
from torchls.compare import compare
from torchls.cost.request import prepare
from torchls.inspect_report import FORMAT_NAMES
from torchls.loadcheck.analysis import Checkpoint, ModelKeys, best_candidate
from torchls.lsp.document_kinds import ELSEWHERE
from torchls.lsp.encoded import RawJSON, Verbatim, plain
from torchls.source.models import FileModels, ModelTarget
from torchls.source.text import Lines
from torchls.worker import protocol

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

log = logging.getLogger(__name__)

INSPECT = "torchls/inspect"
MODEL_TARGETS = "torchls/modelTargets"
COMPARE_MODEL = "torchls/compareModel"
DIFF = "torchls/diff"
OPEN_VIEWER_COMMAND = "torchls.openCheckpointViewer"

CACHE_ENTRIES = 16  # reports kept
# ... and bytes of tensor tables (JSON text, as the reader wrote it) kept in all of them together:
# 50,000 tensors take about 7 MB, and this process's budget is 100 MB, with room needed for the
# copies a request makes while it is sent. The newest report is always kept.
CACHE_BYTES = 24 * 2**20
MAX_WORKSPACE_FILES = 2_000  # Python files scanned for model targets
# What a string in code must end with to be hovered as a checkpoint file (a folder qualifies when
# it holds weights). `.tar` is torch's old habit (`checkpoint.pth.tar`).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".index.json", ".tar")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HOVER_KEYS = 12  # top-level keys a hover lists
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
        converter = getattr(server.protocol, "_converter", None)
        if converter is not None:
            converter.register_unstructure_hook(Verbatim, lambda verbatim: verbatim.value)
        self._verbatim = converter is not None
        # real path -> (stamp key, the answer without "cached")
        self._reports: OrderedDict[str, tuple[tuple[Any, ...], dict[str, Any]]] = OrderedDict()
        self._reading: dict[tuple[str, tuple[Any, ...]], asyncio.Future[dict[str, Any]]] = {}
        self._trees: dict[str, tuple[int | None, str, ast.Module | None]] = {}

    async def handle(self, method: str, params: Any) -> Verbatim | dict[str, Any]:
        """Answer one of the viewer's requests; a bad file or a bug is an answer's one-line
        `error`, never an LSP error the client would show as a failure of the extension."""
        handler = {
            INSPECT: self.inspect,
            MODEL_TARGETS: self.model_targets,
            COMPARE_MODEL: self.compare_model,
            DIFF: self.diff,
        }[method]
        try:
            answer = await handler(params)
            # Large answers skip the converter's walk and carry the reader's tensor table as
            # it is (see encoded.py); tests that run the server in-process, without pygls'
            # converter hook, get plain data.
            return Verbatim(answer) if self._verbatim else plain(answer)
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
        """The viewer's document for `path`, from the cache while the file is unchanged. Its
        report's "tensors" is empty: they are the rows of "tensor_rows", RawJSON (see
        full_report)."""
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
            # A file that cannot be read stays unreadable until it changes: its error is kept
            # too, so that hovering on it again does not start the reader again.
            return cached[1] if "error" in cached[1] else {**cached[1], "cached": True}
        key = (real, stamp.key)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(real, name, stamp))
            self._reading[key] = reading
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        answer = await asyncio.shield(reading)
        self._reports[real] = (stamp.key, answer)
        self._reports.move_to_end(real)
        while len(self._reports) > 1 and (
            len(self._reports) > CACHE_ENTRIES or self._cached_bytes() > CACHE_BYTES
        ):
            self._reports.popitem(last=False)
        return {**answer, "cached": False} if "error" not in answer else answer

    async def _read(self, real: str, name: str, stamp: Stamp) -> dict[str, Any]:
        try:
            summary, tensors = await read_viewer_async(real)
        except CheckpointError as exc:
            return {"error": f"{name}: {exc.reason}"}
        return {
            "report": summary,
            "tensor_columns": list(TENSOR_COLUMNS),
            "tensor_rows": RawJSON(tensors),
            "stamp": stamp.as_json(),
            **viewer_extras(summary),
        }

    def _cached_bytes(self) -> int:
        return sum(
            len(entry[1]["tensor_rows"].text)
            for entry in self._reports.values()
            if "tensor_rows" in entry[1]
        )

    async def full_report(self, path: str) -> dict[str, Any]:
        """As report, with the report's tensors as `torchls inspect --json` has them (for
        comparisons, which need them)."""
        answer = await self.report(path)
        if "report" not in answer:
            return answer
        tensors = tensors_from_rows(answer["tensor_rows"].decode())
        return {**answer, "report": {**answer["report"], "tensors": tensors}}

    # -- hover on a checkpoint path in code ----------------------------------------------------

    async def hover(self, params: types.HoverParams) -> types.Hover | None:
        """A checkpoint path under the cursor (a string, or a name bound to one at the top of the
        file): what the file holds, read as data, so in untrusted workspaces too."""
        uri = params.text_document.uri
        kind = self.server.model_cost.kind(uri)
        if kind.kind == ELSEWHERE or kind.path is None:
            return None
        if self.server.model_cost.too_large(uri) is not None:
            return None
        document = self.server.workspace.get_text_document(uri)
        tree = self._tree(uri, document.version, document.source)
        if tree is None:
            return None
        lines = Lines(document.source)
        found = path_at(tree, lines, params.position.line, params.position.character)
        if found is None:
            return None
        written, node = found
        path = existing_checkpoint(written, kind.path, self.server.workspace_root)
        if path is None:
            return None
        answer = await self.report(path)
        span = lines.span(
            node.lineno, node.col_offset, node.end_lineno or node.lineno, node.end_col_offset or 0
        )
        return types.Hover(
            contents=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=hover_markdown(path, answer)
            ),
            range=types.Range(
                start=types.Position(line=span.start_line, character=span.start_char),
                end=types.Position(line=span.end_line, character=span.end_char),
            ),
        )

    def _tree(self, uri: str, version: int | None, text: str) -> ast.Module | None:
        cached = self._trees.get(uri)
        if cached is not None and cached[0] == version and cached[1] is text:
            return cached[2]
        try:
            tree: ast.Module | None = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        self._trees[uri] = (version, text, tree)
        while len(self._trees) > 8:
            self._trees.pop(next(iter(self._trees)))
        return tree

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
                # A construction shows its arguments: `Net(num_classes=3)` and the class `Net`
                # build different models.
                named = target.name if target.kind == "class" else target.call_text()
                found.append(
                    {
                        "label": f"{named} ({shown}:{target.line})",
                        "uri": from_fs_path(path),
                        "line": target.line - 1,
                        "name": target.name,
                        "kind": target.kind,
                    }
                )
            await asyncio.sleep(0)  # parsing a workspace must not hold up other requests
        found.sort(key=lambda t: t["kind"] != "class")  # classes first, each in file order
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
            self.full_report(path), asyncio.shield(checker.models.get(prepared))
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
        first, second = await asyncio.gather(self.full_report(a), self.full_report(b))
        for answer in (first, second):
            if "error" in answer:
                return {"error": answer["error"]}
        document = diff_documents(first["report"], second["report"])
        if param(params, "values", False):
            from torchls.checkpoint.diff import add_values

            # The numbers come from the worker's interpreter (it has torch), in a child of its
            # own, off the event loop; the files' bytes are never read into this process.
            python = self.server.options.worker_command()[0]
            try:
                await asyncio.to_thread(add_values, document, a, b, python)
            except CheckpointError as exc:
                return {"error": f"{Path(exc.path).name}: {exc.reason}"}
        return document


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
                f"({_matching(fix.keys_matched)})"
            )
        else:
            fixes.append(
                f"add {fix.add!r} to the checkpoint's keys: "
                f"{{{fix.add!r} + k: v for k, v in state_dict.items()}} "
                f"({_matching(fix.keys_matched)})"
            )
    if comparison.loads_strict:
        every = f"all {matched} keys of {model.class_name} match"
        if matched == 1:
            every = f"the one key of {model.class_name} matches"
        summary = f"load_state_dict loads it: {every}"
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


def path_at(
    tree: ast.Module, lines: Lines, line: int, character: int
) -> tuple[str, ast.expr] | None:
    """The path under the cursor and the node to highlight: a string, a name bound to a path at
    the top of the module (`CKPT = "best.pt"` ... `torch.load(CKPT)`), or the whole path
    expression the cursor is in -- `os.path.join("runs", "best.pt")`, `Path("runs") /
    "best.pt"`, `f"{RUNS}/best.pt"` -- when each of its parts is such a constant. A part that
    is not (a loop variable, an argument) gives no path: nothing is guessed."""
    best: ast.expr | None = None
    on_call: ast.Call | None = None
    parents: dict[ast.AST, ast.AST] = {}
    os_path = _os_path_names(tree)
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        # On `os.path.join` or `Path` of a path call: the call is the path.
        if (
            isinstance(node, ast.Call)
            and _path_call(node, os_path) is not None
            and node.func.end_lineno is not None
            and lines.span(
                node.func.lineno,
                node.func.col_offset,
                node.func.end_lineno,
                node.func.end_col_offset or 0,
            ).contains(line, character)
        ):
            on_call = node
            continue
        if not isinstance(node, (ast.Constant, ast.Name)) or node.end_lineno is None:
            continue
        if not node.lineno - 1 <= line <= node.end_lineno - 1:
            continue
        if isinstance(node, ast.Constant) and not isinstance(node.value, str):
            continue
        span = lines.span(node.lineno, node.col_offset, node.end_lineno, node.end_col_offset or 0)
        if span.contains(line, character):
            best = node
    best = on_call or best  # not `os`, `path` or `join` alone
    if best is None:
        return None
    # The largest path expression the name or string is a part of.
    whole: ast.expr = best
    while True:
        parent = parents.get(whole)
        if parent is None or not _builds_path(parent, whole, os_path):
            break
        assert isinstance(parent, ast.expr)
        whole = parent
    found = PathValues(tree, best.lineno).value(whole)
    return (found[0], whole) if found is not None else None


def _builds_path(parent: ast.AST, child: ast.AST, os_path: frozenset[str]) -> bool:
    """Whether `parent` makes a path of `child`: a part of a join, a Path(...), a `/` or `+`, an
    f-string."""
    if isinstance(parent, ast.JoinedStr):
        return True
    if isinstance(parent, ast.FormattedValue):
        return parent.value is child
    if isinstance(parent, ast.BinOp):
        return isinstance(parent.op, (ast.Div, ast.Add))
    if isinstance(parent, ast.Call):
        return child in parent.args and _path_call(parent, os_path) is not None
    return False


def _os_path_names(tree: ast.Module) -> frozenset[str]:
    """The names this module gives os.path: `import os` (os.path), `import os.path as osp`,
    `from os import path`."""
    names: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.name == "os":
                    names.add(f"{alias.asname or 'os'}.path")
                elif alias.name == "os.path":
                    names.add(alias.asname or "os.path")
        elif isinstance(statement, ast.ImportFrom) and statement.module == "os":
            for alias in statement.names:
                if alias.name == "path":
                    names.add(alias.asname or "path")
    return frozenset(names)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _path_call(node: ast.Call, os_path: frozenset[str]) -> str | None:
    """ "join" for os.path.join(...), "path" for Path(...) / pathlib.Path(...), "str" for
    str(...); None for any other call."""
    name = _dotted(node.func)
    if name is None or node.keywords:
        return None
    if name in ("Path", "PurePath", "PosixPath", "pathlib.Path", "pathlib.PurePath"):
        return "path"
    if name == "str" and len(node.args) == 1:
        return "str"
    if name.endswith(".join") and name[: -len(".join")] in os_path and node.args:
        return "join"
    return None


class PathValues:
    """Values of path expressions made of constants, as Python would compute them."""

    MAX_DEPTH = 12  # names bound to names bound to names...

    def __init__(self, tree: ast.Module, used_at: int) -> None:
        self.tree = tree
        self.used_at = used_at
        self.os_path = _os_path_names(tree)
        self.depth = 0

    def value(self, node: ast.expr | None) -> tuple[str, bool] | None:
        """(the string, whether it is a Path object) or None when any part is not constant."""
        if node is None or self.depth > self.MAX_DEPTH:
            return None
        self.depth += 1
        try:
            return self._value(node)
        finally:
            self.depth -= 1

    def _value(self, node: ast.expr) -> tuple[str, bool] | None:
        if isinstance(node, ast.Constant):
            return (node.value, False) if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            return self.value(_bound_to(self.tree, node.id, self.used_at))
        if isinstance(node, ast.JoinedStr):
            parts = []
            for part in node.values:
                if isinstance(part, ast.FormattedValue):
                    if part.format_spec is not None or part.conversion not in (-1, ord("s")):
                        return None
                    inner = self.value(part.value)
                elif isinstance(part, ast.Constant):
                    inner = self.value(part)
                else:
                    return None
                if inner is None:
                    return None
                parts.append(inner[0])
            return "".join(parts), False
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Add)):
            left, right = self.value(node.left), self.value(node.right)
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.Add):  # str + str; a Path has no +
                return None if left[1] or right[1] else (left[0] + right[0], False)
            if not (left[1] or right[1]):  # str / str is a TypeError
                return None
            return str(Path(left[0], right[0])), True
        if isinstance(node, ast.Call):
            kind = _path_call(node, self.os_path)
            if kind is None:
                return None
            values = [self.value(arg) for arg in node.args]
            if any(v is None for v in values):
                return None
            texts = [v[0] for v in values if v is not None]
            if kind == "str":
                return texts[0], False
            if kind == "path":
                return str(Path(*texts)), True
            return str(Path(*texts)), False
        return None


def _bound_to(tree: ast.Module, name: str, before_line: int) -> ast.expr | None:
    """The expression last bound to `name` by a plain assignment at the top of the module
    (before the use, or anywhere when the use is in a function that runs later)."""
    value: ast.expr | None = None
    for statement in tree.body:
        targets: list[ast.expr] = []
        bound: ast.expr | None = None
        if isinstance(statement, ast.Assign):
            targets, bound = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, bound = [statement.target], statement.value
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        if statement.lineno > before_line and value is not None:
            break
        value = bound
    return value


def existing_checkpoint(written: str, document: str, workspace: str | None) -> str | None:
    """The checkpoint file or model folder `written` names, looked for as torch.load would
    (from the working directory, usually the workspace root) and beside the file."""
    if not written or "\0" in written or len(written) > 4096 or "\n" in written:
        return None
    candidate = Path(written)
    bases = [] if candidate.is_absolute() else [Path(document).parent]
    if workspace and not candidate.is_absolute():
        bases.append(Path(workspace))
    for place in [candidate] if candidate.is_absolute() else [b / candidate for b in bases]:
        try:
            if place.is_file() and place.name.endswith(CHECKPOINT_SUFFIXES):
                return str(place)
            if place.is_dir() and _holds_weights(place):
                return str(place)
        except (OSError, ValueError):
            continue
    return None


def _holds_weights(folder: Path) -> bool:
    if any((folder / name).is_file() for name in WEIGHT_FILES):
        return True
    return any(folder.glob("*.index.json"))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{n:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n:,} bytes"


def _md(text: str) -> str:
    """Text from a file, shown literally in markdown."""
    return "".join("\\" + c if c in "\\`*_[]<>|~#" else c for c in text)


def _code(text: str) -> str:
    """Text from a file as inline code (in which nothing is escaped, and only a backtick
    could end it early)."""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _matching(n: int) -> str:
    return f"{n:,} key then matches" if n == 1 else f"{n:,} keys then match"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _verdict_reason(reason: str) -> str:
    """The reader's reason without the sentence the hover already says."""
    for said in (
        "torch.load(weights_only=True) accepts this file",
        "torch.load(weights_only=True) refuses this file",
    ):
        if reason.startswith(said):
            return reason[len(said) :].lstrip(":;,. ")
    return reason


def hover_markdown(path: str, answer: dict[str, Any]) -> str:
    name = Path(path).name or path
    link = viewer_link(path)
    if "error" in answer:
        reason = _md(answer["error"])
        return f"**{_md(name)}**: torchls cannot read this checkpoint: {reason}\n\n{link}"
    report = answer["report"]
    totals = report["totals"]
    described = FORMAT_NAMES.get(report["format"], report["format"])
    lines = [f"**{_md(name)}**: {_md(described)}, {_size(report['file_size'])}"]
    dtypes = ", ".join(
        f"{dtype} {entry['elements']:,}" for dtype, entry in totals["by_dtype"].items()
    )
    lines.append(
        f"{_plural(totals['tensors'], 'tensor')}, {_plural(totals['elements'], 'element')}"
        + (f" ({dtypes})" if dtypes else "")
    )
    tree = report.get("tree") or {}
    keys = tree.get("keys") or []
    if keys:
        shown = ", ".join(_code(str(k)) for k in keys[:HOVER_KEYS])
        more = tree.get("items", len(keys)) - min(len(keys), HOVER_KEYS)
        lines.append(f"top-level keys: {shown}" + (f" and {more:,} more" if more > 0 else ""))
    verdict = report.get("weights_only")
    if verdict is not None:
        reason = _verdict_reason(str(verdict["reason"]))
        said = "accepts it" if verdict["accepted"] else "**refuses** it"
        lines.append(
            f"`torch.load(weights_only=True)` {said}" + (f": {_md(reason)}" if reason else "")
        )
        if verdict.get("dangerous_globals"):
            runs = ", ".join(_code(g) for g in verdict["dangerous_globals"])
            lines.append(f"with `weights_only=False` it **runs code**: {runs}")
    if answer.get("shard_problems"):
        problems = _plural(len(answer["shard_problems"]), "problem")
        lines.append(f"{problems} between the index and its shards")
    lines.append(link)
    return "\n\n".join(lines)
