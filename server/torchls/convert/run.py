"""Run a conversion (safetensors, extract, cast) with the downgrade's guarantees, and its code:

1. the input is read first by torchls's torch-free reader (a restricted unpickler in a child):
   a file naming globals `weights_only=True` refuses, or code-running ones, is refused before
   torch opens it, and the state dict to convert is chosen from the reader's candidates;
2. a one-shot worker loads with `weights_only=True`, writes temporary files beside the output,
   reads them back and compares every tensor with the input;
3. the reader reads the written files again (format, tensors, globals);
4. they are renamed into place (atomic on one file system), never over an existing output
   unless replacing was asked for; a folder output (shards, a model folder) as a whole.
The output is claimed for the whole run, cancelling or any failure kills the worker and removes
the temporary files, and the input is only ever read. Used by `torchls convert` and, with the
server's reader and progress, by the language server's commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchls.checkpoint.errors import CheckpointError
from torchls.checkpoint.structure import subscript
from torchls.cost import report
from torchls.downgrade.run import (
    Environment,
    Progress,
    _Claim,
    _fsync_dir,
    _os_error,
    _place,
    _read_in_child,
    _Refused,
    _remove,
    _run_worker,
)
from torchls.downgrade.targets import (
    MAX_INDEX_BYTES,
    TargetError,
    _check_path,
    _index_shards,
    is_model_folder,
)

KINDS = ("safetensors", "extract", "cast", "consolidate", "weights-only")
CAST_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
INDEX = "model.safetensors.index.json"
_BIN = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")
_CONVENTIONAL = ("pytorch_model.bin.index.json",)


@dataclass
class Options:
    kind: str  # safetensors | extract | cast
    output: Path | None = None
    overwrite: bool = False
    key: str | None = None  # the state dict to convert, as the reader names it (`['ema']`)
    max_shard_bytes: int = 0  # safetensors: shards above this size (0: one file)
    strip_prefix: str = ""  # extract
    dtype: str = "bf16"  # cast: bf16 | fp16 | fp32
    keep_norm_fp32: bool = False  # cast: BatchNorm running stats stay fp32


@dataclass
class Outcome:
    ok: bool
    reason: str  # "" when ok; exists | refused-globals | several-state-dicts | overflow | ...
    message: str
    input: Path
    output: Path | None = None
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dropped: dict[str, str] = field(default_factory=dict)  # safetensors: dropped -> kept
    removed: list[str] = field(default_factory=list)  # extract: entries left out
    replaced: list[str] = field(default_factory=list)  # weights-only: what became plain data
    candidates: list[str] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)
    before: int = 0  # cast: the state dict's bytes before and after
    after: int = 0
    torch: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": self.ok, "message": self.message, "input": str(self.input)}
        if self.output is not None:
            data["output"] = str(self.output)
            data["outputUri"] = self.output.absolute().as_uri()
        if self.ok:
            data.update(
                verified=True,
                tensors=self.tensors,
                bytes=self.bytes,
                seconds=round(self.seconds, 3),
                dropped=self.dropped,
                removed=self.removed,
                replaced=self.replaced,
                torch=self.torch,
            )
            if self.before:
                data.update(before=self.before, after=self.after)
        else:
            data["reason"] = self.reason
            for name in ("candidates", "globals"):
                if getattr(self, name):
                    data[name] = getattr(self, name)
        return data


@dataclass
class _Job:
    """One weight file to write: its source(s), format and its final name."""

    source: Path
    format: str  # torch | safetensors (what the reader found)
    name: str  # the final name inside a folder output, or the output file's name
    key: str = ""
    tensors: int = 0  # in the chosen state dict, as the reader counts them
    shards: tuple[Path, ...] = ()  # consolidate: the shards merged into this one file


@dataclass
class _Plan:
    input: Path
    output: Path
    folder: bool
    jobs: list[_Job]
    copies: list[Path] = field(default_factory=list)
    index: bool = False  # a folder output gets model.safetensors.index.json
    shard_stem: str = "model"  # shards: model-00001-of-00002.safetensors, and their index
    shard_ext: str = ".safetensors"
    index_name: str = INDEX


def default_output(source: Path, options: Options, sharded: bool = False) -> Path:
    """`model.bin` -> `model.safetensors` (a folder `model-safetensors` for shards, and for a
    model folder `folder-safetensors`); `model.weights.pt`; `model.bf16.pt`."""
    if source.is_dir():
        return source.with_name(f"{source.name}-{options.kind}")
    stem = source.name[: -len(source.suffix)] if source.suffix else source.name
    if options.kind == "safetensors":
        return source.with_name(f"{stem}-safetensors" if sharded else f"{stem}.safetensors")
    if options.kind == "extract":
        return source.with_name(f"{stem}.weights.pt")
    if options.kind == "weights-only":
        return source.with_name(f"{stem}.clean{source.suffix or '.pt'}")
    return source.with_name(f"{stem}.{options.dtype}{source.suffix or '.pt'}")


async def convert(
    source: Path, options: Options, environment: Environment, progress: Progress | None = None
) -> Outcome:
    """Never raises for anything a user can cause: the outcome says what happened."""
    started = time.perf_counter()
    say = progress or (lambda message, percentage: None)
    temps: list[Path] = []
    claim: _Claim | None = None
    output: Path | None = None
    try:
        if options.kind not in KINDS:
            raise _Refused("error", f"unknown conversion {options.kind!r}")
        _check_path(source, "the checkpoint path")
        if options.output is not None:
            _check_path(options.output, "the output")
        source = source.expanduser()
        if not source.exists():
            raise TargetError("not-found", f"{source} does not exist")
        say("checking the input", 0.0)
        read = environment.read_summary or _read_in_child
        plan = await _plan(source, options, read)
        output = plan.output
        claim = _Claim(plan.output, "conversion")
        if os.path.lexists(plan.output) and not options.overwrite:
            kind = "folder" if plan.output.is_dir() else "file"
            raise _Refused("exists", f"{plan.output} exists; the {kind} was left as it is")
        sizes = sum(job.source.stat().st_size for job in plan.jobs)
        if environment.memory_limit_mb:
            environment = replace(
                environment, memory_limit_mb=environment.memory_limit_mb + 3 * (sizes >> 20)
            )
        if environment.timeout_seconds:
            environment = replace(
                environment, timeout_seconds=environment.timeout_seconds + 60 * sizes / 2**30
            )
        outcome = await _convert(plan, options, environment, say, read, temps)
        outcome.seconds = time.perf_counter() - started
        return outcome
    except TargetError as exc:
        return Outcome(False, exc.reason, str(exc), source)
    except _Refused as exc:
        refused = Outcome(False, exc.reason, str(exc), source, **exc.extra)
        if exc.reason == "exists":
            refused.output = output
        return refused
    except CheckpointError as exc:
        return Outcome(False, "not-a-checkpoint", str(exc), source)
    except asyncio.CancelledError:
        _remove(temps)
        raise
    except OSError as exc:
        return Outcome(False, "error", _os_error(exc, source), source)
    finally:
        _remove(temps)
        if claim is not None:
            claim.release()


async def _plan(source: Path, options: Options, read: Any) -> _Plan:
    if options.kind == "consolidate":
        return await _plan_consolidate(source, options, read)
    if source.is_dir():
        if options.kind != "safetensors" or not is_model_folder(source):
            raise TargetError(
                "not-a-checkpoint",
                f"{source} is a folder; only a Hugging Face model folder (config.json and "
                "pytorch_model*.bin) is converted as a whole, to safetensors",
            )
        return await _plan_folder(source, options, read)
    summary = await read(source)
    if options.kind == "weights-only":
        return _plan_weights_only(source, options, summary)
    _preflight(source, summary)
    fmt = "safetensors" if summary.get("format") == "safetensors" else "torch"
    if options.kind == "safetensors" and fmt == "safetensors":
        raise _Refused("already", f"{source.name} is already a safetensors file")
    key = _choose(source, summary, options)
    if options.kind == "extract" and not key:
        raise _Refused(
            "already", f"{source.name} is already a plain state dict: nothing to extract"
        )
    chosen_tensors = [t for t in summary.get("tensors") or [] if t["container"] == key]
    chosen = sum(int(t.get("bytes") or 0) for t in chosen_tensors)
    sharded = options.kind == "safetensors" and 0 < options.max_shard_bytes < chosen
    output = options.output or default_output(source, options, sharded)
    if options.output is not None and output.is_dir() and not sharded:
        output = output / default_output(source, options).name
    _check_place(source, output, sharded)
    return _Plan(
        source,
        output,
        sharded,
        [_Job(source, fmt, output.name, key, len(chosen_tensors))],
        index=sharded,
    )


async def _plan_folder(folder: Path, options: Options, read: Any) -> _Plan:
    if options.max_shard_bytes:
        # Each pytorch_model*.bin becomes one model*.safetensors: the folder keeps its sharding.
        raise _Refused(
            "error",
            "a model folder keeps its shards; --max-shard-size applies to one file "
            "(convert consolidate re-shards the result)",
        )
    names = sorted(p.name for p in folder.iterdir())
    bins = [n for n in names if _BIN.match(n)]
    if not bins:
        raise _Refused(
            "already",
            f"{folder.name} has no pytorch_model*.bin to convert"
            + (" (its weights are already safetensors)" if "model.safetensors" in names or INDEX
               in names else ""),
        )  # fmt: skip
    jobs = []
    for name in bins:
        summary = await read(folder / name)
        _preflight(folder / name, summary)
        new = "model" + name.removeprefix("pytorch_model").removesuffix(".bin") + ".safetensors"
        jobs.append(_Job(folder / name, "torch", new, ""))
    output = options.output or default_output(folder, options)
    _check_place(folder, output, True)
    skip = {*bins, *_CONVENTIONAL, "model.safetensors", INDEX, ".git"}
    copies = [folder / n for n in names if n not in skip and ".tmp-" not in n]
    return _Plan(folder, output, True, jobs, copies, index=len(bins) > 1)


async def _plan_consolidate(source: Path, options: Options, read: Any) -> _Plan:
    """An index (or the folder holding one) -> one file beside it; one file with a shard size
    -> a folder of shards and their index."""
    index = source
    if source.is_dir():
        found = sorted(source.glob("*.index.json"))
        if len(found) != 1:
            raise _Refused(
                "no-index",
                f"{source.name} has {len(found)} shard indexes"
                + (f" ({', '.join(p.name for p in found)}): name one" if found else ""),
            )
        index = found[0]
    if index.name.endswith(".index.json"):
        if options.max_shard_bytes:
            raise _Refused("error", "--max-shard-size cuts one file into shards, not an index")
        shards = [index.parent / name for name in _index_shards(index)]
        formats = set()
        for shard in shards:
            summary = await read(shard)
            _preflight(shard, summary)
            formats.add("safetensors" if summary.get("format") == "safetensors" else "torch")
        if len(formats) != 1:
            raise _Refused("error", f"{index.name} mixes safetensors and torch shards")
        fmt = formats.pop()
        name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
        if not index.name.startswith(("model.", "pytorch_model.")):
            name = index.name.removesuffix(".index.json")
            name += "" if name.endswith((".safetensors", ".bin", ".pt")) else ".pt"
        output = options.output or index.with_name(name)
        if options.output is not None and output.is_dir():
            output = output / name
        _check_place(index, output, False)
        job = _Job(shards[0], fmt, output.name, "", 0, tuple(shards))
        return _Plan(index, output, False, [job])
    if not options.max_shard_bytes:
        raise _Refused(
            "already",
            f"{source.name} is one file already; --max-shard-size SIZE cuts it into shards",
        )
    summary = await read(source)
    _preflight(source, summary)
    if "" not in {c["path"] for c in summary.get("candidates") or []}:
        raise _Refused(
            "no-state-dict",
            f"{source.name} is not a plain state dict: extract the weights first (convert extract)",
        )
    fmt = "safetensors" if summary.get("format") == "safetensors" else "torch"
    stem = source.name[: -len(source.suffix)] if source.suffix else source.name
    output = options.output or source.with_name(f"{stem}-shards")
    _check_place(source, output, True)
    count = len(summary.get("tensors") or [])
    job = _Job(source, fmt, output.name, "", count)
    if fmt == "safetensors":
        return _Plan(source, output, True, [job], index=True)
    return _Plan(
        source, output, True, [job], index=True, shard_stem="pytorch_model", shard_ext=".bin",
        index_name="pytorch_model.bin.index.json",
    )  # fmt: skip


def _plan_weights_only(source: Path, options: Options, summary: dict[str, Any]) -> _Plan:
    """Only a file torchls's reader has read through, naming no global that runs code, reaches
    the worker's weights_only=False load (which imports nothing beyond torch's allowlist and
    plain-data types even then)."""
    _preflight(source, summary, refused_ok=True)
    verdict = summary.get("weights_only") or {}
    if verdict.get("accepted"):
        raise _Refused("already", f"{source.name} already loads with torch.load(weights_only=True)")
    output = options.output or default_output(source, options)
    if options.output is not None and output.is_dir():
        output = output / default_output(source, options).name
    _check_place(source, output, False)
    return _Plan(source, output, False, [_Job(source, "torch", output.name)])


def _preflight(path: Path, summary: dict[str, Any], refused_ok: bool = False) -> None:
    fmt = summary.get("format")
    if fmt not in {"torch-zip", "torch-legacy", "safetensors"}:
        raise _Refused(
            "not-a-checkpoint",
            f"{path.name} is not a torch checkpoint or safetensors file (it reads as {fmt})",
        )
    verdict = summary.get("weights_only") or {}
    dangerous = list(verdict.get("dangerous_globals") or [])
    if dangerous:
        raise _Refused(
            "refused-globals",
            f"{path.name} names globals that run code when it is loaded: {', '.join(dangerous)}; "
            "nothing was loaded",
            globals=dangerous,
        )
    if verdict.get("unsupported_opcodes"):
        raise _Refused("refused-globals", f"{path.name}: {verdict.get('reason')}")
    refused = list(verdict.get("refused_globals") or [])
    if refused and not refused_ok:
        raise _Refused(
            "refused-globals",
            f"{path.name} needs globals that torch.load(weights_only=True) does not allow: "
            f"{', '.join(refused)}; nothing was loaded",
            globals=refused,
        )


def _choose(path: Path, summary: dict[str, Any], options: Options) -> str:
    """The reader's path of the state dict to convert: the one asked for, the file itself, or the
    single largest candidate; several equally large ones are a question for the user."""
    candidates = [
        c["path"]
        for c in summary.get("candidates") or []
        if not str(c["path"]).startswith("(pickled module)")
    ]
    sizes = {c["path"]: int(c["bytes"]) for c in summary.get("candidates") or []}
    if options.key is not None:
        for wanted in (options.key, subscript("", options.key)):
            if wanted in candidates:
                return str(wanted)
        raise _Refused(
            "no-such-key",
            f"{path.name} has no state dict at {options.key!r}; it has "
            + (", ".join(candidates) or "none"),
            candidates=candidates,
        )
    if "" in candidates:
        return ""
    if not candidates:
        raise _Refused("no-state-dict", f"{path.name} holds no mapping of names to tensors")
    largest = max(sizes[c] for c in candidates)
    top = [c for c in candidates if sizes[c] == largest]
    if len(top) > 1:
        raise _Refused(
            "several-state-dicts",
            f"{path.name} holds several state dicts of the same size: {', '.join(top)}; choose one",
            candidates=top,
        )
    return str(top[0])


def _check_place(source: Path, output: Path, folder: bool) -> None:
    out, src = output.resolve(), source.resolve()
    if out == src:
        raise TargetError("error", "the output would replace the original, which is never changed")
    if folder and (out.is_relative_to(src) or src.is_relative_to(out)):
        raise TargetError("error", f"the output folder {out} must be outside {src}")
    if not out.parent.is_dir():
        raise TargetError(
            "error",
            f"the output's folder {out.parent} does not exist: create it or choose another output",
        )
    if not folder and out.is_dir():
        raise TargetError("error", f"{out} is a folder; choose another output")
    ours = out.is_dir() and any(
        (out / name).exists()
        for name in (INDEX, "model.safetensors", "pytorch_model.bin.index.json")
    )
    if folder and out.exists() and not ours:
        # Replacing it (when asked) removes it: only ever an earlier output of this command.
        raise TargetError(
            "error", f"{out} exists and is not a safetensors folder torchls wrote; choose another"
        )


async def _convert(
    plan: _Plan, options: Options, env: Environment, say: Progress, read: Any, temps: list[Path]
) -> Outcome:
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging: Path | None = None
    if plan.folder:
        staging = plan.output.with_name(f".{plan.output.name}.tmp-{tag}")
        staging.mkdir()
        temps.append(staging)
    outputs = []
    for n, job in enumerate(plan.jobs):
        if staging is not None:
            base = staging / f".part-{n}"
            # At most one shard per tensor: the worker uses the first names it needs.
            count = 1 if not plan.index or len(plan.jobs) > 1 else max(1, job.tensors)
            names = [str(base.with_name(f"{base.name}-{i}")) for i in range(count)]
        else:
            temp = plan.output.with_name(f".{plan.output.name}.tmp-{tag}")
            temps.append(temp)
            names = [str(temp)]
        sources = [str(s) for s in job.shards or (job.source,)]
        outputs.append({"sources": sources, "format": job.format, "temps": names})
    params = {
        "kind": options.kind,
        "outputs": outputs,
        "key": plan.jobs[0].key,
        "max_shard_bytes": options.max_shard_bytes if plan.index and len(plan.jobs) == 1 else 0,
        "strip_prefix": options.strip_prefix,
        "dtype": options.dtype,
        "keep_norm_fp32": options.keep_norm_fp32,
    }
    result = await _run_worker(params, env, say, "convert")
    say("checking the written files", 97.0)
    written = result["outputs"]
    for job_result in written:
        for file in job_result["files"]:
            _check_written(Path(file["temp"]), await read(Path(file["temp"])), file, options)
    dropped: dict[str, str] = {}
    for job_result in written:
        dropped.update(job_result.get("dropped") or {})
    if staging is not None:
        _name_files(plan, staging, written)
        for copy in plan.copies:
            if copy.is_dir() and not copy.is_symlink():
                shutil.copytree(copy, staging / copy.name, symlinks=True)
            else:
                shutil.copy2(copy, staging / copy.name, follow_symlinks=False)
        _fsync_dir(staging)
    built = staging or Path(written[0]["files"][0]["temp"])
    if not _place(built, plan.output, options.overwrite, tag, temps):
        raise _Refused(
            "exists", f"{plan.output} appeared while the conversion ran; it was left as it is"
        )
    temps[:] = [t for t in temps if ".old-" in t.name]
    _remove(temps)
    _fsync_dir(plan.output.parent)
    tensors = sum(int(w["tensors"]) for w in written)
    size = sum(int(w["bytes"]) for w in written)
    removed = [e for w in written for e in w.get("dropped_entries") or []]
    replaced = [e for w in written for e in w.get("replaced") or []]
    before = sum(int(w.get("before") or 0) for w in written)
    after = sum(int(w.get("after") or 0) for w in written)
    what = f"{tensors} tensors, {report.size(size)}"
    if dropped:
        what += f", {len(dropped)} shared dropped"
    if options.kind == "cast":
        what += f"; state dict {report.size(before)} -> {report.size(after)}"
    if options.kind == "weights-only":
        what += (
            f", {len(replaced)} replaced by plain data; loaded with weights_only=False only "
            "after torchls's reader found no code-running global"
        )
    verb = {
        "safetensors": "Converted",
        "extract": "Extracted",
        "cast": "Cast",
        "weights-only": "Cleaned",
    }.get(options.kind, "Consolidated" if not plan.folder else "Sharded")
    message = (
        f"{verb} {plan.input.name} -> {plan.output.name} ({what}; verified: torch "
        f"{result.get('torch')} and torchls read it back, every tensor equal)"
    )
    return Outcome(
        True,
        "",
        message,
        plan.input,
        plan.output,
        tensors=tensors,
        bytes=size,
        dropped=dropped,
        removed=removed,
        replaced=replaced,
        before=before,
        after=after,
        torch=result.get("torch"),
    )


def _name_files(plan: _Plan, staging: Path, written: list[dict[str, Any]]) -> None:
    """Give the staged files their final names and write the index a sharded output needs."""
    weight_map: dict[str, str] = {}
    total = 0
    if len(plan.jobs) == 1 and plan.index:
        files = written[0]["files"]
        finals = [
            f"{plan.shard_stem}-{i + 1:05d}-of-{len(files):05d}{plan.shard_ext}"
            for i in range(len(files))
        ]
        pairs = list(zip(files, finals, strict=True))
    else:
        pairs = [(w["files"][0], job.name) for w, job in zip(written, plan.jobs, strict=True)]
    for file, final in pairs:
        Path(file["temp"]).rename(staging / final)
        for name in file.get("names") or []:
            weight_map[name] = final
        total += int(file["bytes"])
    if plan.index:
        total = sum(int(w.get("total_size") or 0) for w in written)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        if len(text) > MAX_INDEX_BYTES:
            raise _Refused("error", "the shard index would be too large")
        (staging / plan.index_name).write_text(text, encoding="utf-8")


def _check_written(
    path: Path, summary: dict[str, Any], written: dict[str, Any], options: Options
) -> None:
    """torchls's own reader must agree with the worker: the format, the tensors, no global that
    weights_only refuses."""
    expected = written["format"]
    if summary.get("format") != expected:
        raise _Refused("verify", f"the written file reads as {summary.get('format')}")
    verdict = summary.get("weights_only") or {}
    if not verdict.get("accepted", True):
        raise _Refused("verify", f"the written file: {verdict.get('reason')}")
    if "names" in written:
        seen = sorted(t["key"] for t in summary.get("tensors") or [] if not t["container"])
        if seen != sorted(written["names"]):
            raise _Refused(
                "verify",
                f"torchls reads {len(seen)} tensors in the written file where the worker wrote "
                f"{len(written['names'])}; it was not kept",
            )
