"""What a downgrade reads and writes: output names next to the input, and the files of a Hugging
Face model folder. Pure: file names and directory listings only, no torch, nothing opened.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar", ".pkl"}
DEFAULT_SUFFIX = "legacy"
_SHARD = re.compile(r"^(pytorch_model|model)-\d+-of-\d+\.(bin|safetensors)$")
_INDEXES = ("pytorch_model.bin.index.json", "model.safetensors.index.json")
_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")
MAX_INDEX_BYTES = 50 * 1024 * 1024
MAX_NAME_BYTES = 255  # one path component, on every common file system


class TargetError(Exception):
    """A one-line reason the input cannot be downgraded (before anything is loaded)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Output:
    """One file to write: `name` (relative to the output folder for a model folder, else the
    output file's own name), from one source or several merged (safetensors shards)."""

    name: str
    sources: tuple[Path, ...]
    format: str  # torch | safetensors


@dataclass
class Target:
    input: Path
    output: Path
    folder: bool
    outputs: list[Output]
    copies: list[Path] = field(default_factory=list)  # a model folder's other files, copied
    skipped: list[str] = field(default_factory=list)  # weight files not carried over, and why


def output_path(source: Path, suffix: str = DEFAULT_SUFFIX) -> Path:
    """`model.pt` -> `model.legacy.pt`; `model.safetensors` -> `model.legacy.bin` (the result is
    a torch pickle, and a `.safetensors` name would lie about it); folder -> `folder-legacy`."""
    suffix = _clean_suffix(suffix)
    if source.is_dir():
        name = f"{source.name}-{suffix}"
    else:
        ext = ".bin" if source.suffix == ".safetensors" else source.suffix
        stem = source.name[: -len(source.suffix)] if source.suffix else source.name
        name = f"{stem}.{suffix}{ext}"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise TargetError(
            "error",
            f"the output suffix makes the name {name[:40]}... longer than a file name can be "
            f"({MAX_NAME_BYTES} bytes): choose a shorter suffix",
        )
    return source.with_name(name)


def _clean_suffix(suffix: str) -> str:
    cleaned = suffix.strip().strip(".-")
    if (
        not cleaned
        or any(c in cleaned for c in "/\\:")
        or ".." in cleaned
        or any(ord(c) < 32 or ord(c) == 127 for c in cleaned)
    ):
        raise TargetError(
            "error",
            f"the output suffix {suffix!r} is not a usable file name part (no path separators, "
            "'..' or control characters): use letters, digits, '-' or '_' (the default is "
            f"{DEFAULT_SUFFIX!r})",
        )
    return cleaned


def _check_path(path: Path, what: str) -> None:
    """A path no file can have is refused in a sentence; the OS would raise ValueError."""
    text = str(path)
    if "\x00" in text:
        raise TargetError(
            "error",
            f"{what} {text!r} contains a NUL character, which no file name can hold: "
            "choose another",
        )
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.parts):
        raise TargetError(
            "error",
            f"{what} {text[:60]!r}... has a name longer than a file name can be "
            f"({MAX_NAME_BYTES} bytes): choose a shorter one",
        )


def is_model_folder(folder: Path) -> bool:
    """A Hugging Face model folder: `config.json` beside weights (single or sharded)."""
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return False
    return "config.json" in names and (
        any(n in names for n in (*_WEIGHT_FILES, *_INDEXES)) or any(_SHARD.match(n) for n in names)
    )


def plan(source: Path, output: Path | None = None, suffix: str = DEFAULT_SUFFIX) -> Target:
    _check_path(source, "the checkpoint path")
    if output is not None:
        _check_path(output, "the output")
    source = source.expanduser()
    if not source.exists():
        raise TargetError("not-found", f"{source} does not exist")
    if output is not None and output.is_dir() and not source.is_dir():
        output = output / output_path(source, suffix).name  # into that folder, the usual name
    if source.is_dir():
        if not is_model_folder(source):
            raise TargetError(
                "not-a-checkpoint",
                f"{source} is a folder without a Hugging Face model (config.json and weights)",
            )
        target = _plan_folder(source, output or output_path(source, suffix))
    else:
        fmt = "safetensors" if source.suffix == ".safetensors" else "torch"
        final = output or output_path(source, suffix)
        target = Target(source, final, False, [Output(final.name, (source,), fmt)])
    _check_output(target)
    return target


def _check_output(target: Target) -> None:
    try:
        _check_output_place(target)
    except OSError as exc:  # a component too long, a loop of links, a folder we may not list
        why = (exc.strerror or type(exc).__name__).lower()
        raise TargetError("error", f"the output {target.output}: {why}; choose another") from None


def _check_output_place(target: Target) -> None:
    out, source = target.output.resolve(), target.input.resolve()
    if out == source:
        raise TargetError("error", "the output would replace the original, which is never changed")
    if target.folder and (out.is_relative_to(source) or source.is_relative_to(out)):
        raise TargetError("error", f"the output folder {out} must be outside the model folder")
    if not out.parent.is_dir():
        raise TargetError(
            "error",
            f"the output's folder {out.parent} does not exist: create it or choose another output",
        )
    if not target.folder and out.is_dir():
        raise TargetError("error", f"{out} is a folder; choose another output")
    if target.folder and out.exists() and not (out.is_dir() and is_model_folder(out)):
        # Replacing it (when asked) removes it: only ever an earlier output, never a folder
        # that happens to have the name.
        raise TargetError(
            "error", f"{out} exists and is not a model folder torchls wrote; choose another output"
        )


def _plan_folder(folder: Path, output: Path) -> Target:
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    names = [p.name for p in entries if p.is_file()]
    outputs: list[Output] = []
    if "pytorch_model.bin" in names:
        outputs.append(Output("pytorch_model.bin", (folder / "pytorch_model.bin",), "torch"))
    elif "pytorch_model.bin.index.json" in names:
        shards = _index_shards(folder / "pytorch_model.bin.index.json")
        outputs += [Output(shard, (folder / shard,), "torch") for shard in shards]
    elif "model.safetensors" in names:
        outputs.append(Output("pytorch_model.bin", (folder / "model.safetensors",), "safetensors"))
    elif "model.safetensors.index.json" in names:
        shards = _index_shards(folder / "model.safetensors.index.json")
        # Old transformers read one pytorch_model.bin (sharding came with 4.18): merge them.
        sources = tuple(folder / shard for shard in shards)
        outputs.append(Output("pytorch_model.bin", sources, "safetensors"))
    else:
        raise TargetError("not-a-checkpoint", f"{folder} has no weights torchls can convert")
    # Weights: the usual names, and whatever an index names (shards may be called anything).
    weights = {n for n in names if _SHARD.match(n)} | set(_WEIGHT_FILES) | set(_INDEXES)
    for index in _INDEXES:
        if index in names:
            weights |= set(_index_shards(folder / index))
    written = {o.name for o in outputs}
    if any(o.format == "torch" and o.name != "pytorch_model.bin" for o in outputs):
        written.add("pytorch_model.bin.index.json")  # the shards keep their names: copied as is
    copies = [
        entry
        for entry in entries
        if (entry.name not in weights or entry.name in written - {o.name for o in outputs})
        and entry.name != ".git"
        and ".tmp-" not in entry.name
    ]
    carried = {s.name for o in outputs for s in o.sources} | {c.name for c in copies}
    skipped = [f"{n} (the legacy weights replace it)" for n in names if n in weights - carried]
    return Target(folder, output, True, outputs, copies, skipped)


def _index_shards(index: Path) -> list[str]:
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise TargetError("error", f"{index.name} is too large to be a shard index")
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        shards = sorted({str(v) for v in weight_map.values()})
    except TargetError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TargetError("error", f"{index.name} is not a readable shard index ({exc})") from None
    for shard in shards:
        if Path(shard).name != shard or not (index.parent / shard).is_file():
            raise TargetError("error", f"{index.name} names a shard that is not there: {shard}")
    return shards
