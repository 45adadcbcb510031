"""What a conversion refuses, and that a refusal runs nothing and leaves nothing: hostile
pickles, globals weights_only refuses, existing outputs, a write that fails half-way."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.convert.helpers import cli, run
from tests.downgrade.helpers import fingerprint


class _Boom:
    """Unpickling it runs a shell command that leaves a sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


class Config:
    """A custom class: weights_only=True refuses it."""

    def __init__(self) -> None:
        self.depth = 3


@pytest.mark.parametrize("kind", ["safetensors", "extract", "cast", "consolidate", "weights-only"])
async def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(
    tmp_path: Path, kind: str
) -> None:
    sentinel = tmp_path / "ran"
    source = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": _Boom(sentinel)}, source)
    outcome = await run(source, kind, dtype="fp16", max_shard_bytes=1000 * (kind == "consolidate"))
    assert not outcome.ok and outcome.reason == "refused-globals"
    assert "run code" in outcome.message and any("system" in g for g in outcome.globals)
    assert not sentinel.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


async def test_a_custom_class_is_refused_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "c.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": Config()}, source)
    outcome = await run(source, "safetensors")
    assert not outcome.ok and outcome.reason == "refused-globals"
    assert outcome.globals == [f"{__name__}.Config"] and "Config" in outcome.message


async def test_an_existing_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    out = tmp_path / "w.safetensors"
    out.write_text("mine")
    refused = cli("safetensors", str(source))
    assert refused.returncode == 1 and "--force" in refused.stderr and out.read_text() == "mine"
    assert len(refused.stderr.strip().splitlines()) == 1
    forced = cli("safetensors", str(source), "--force")
    assert forced.returncode == 0 and out.read_bytes()[:1] != b"m"
    assert cli("safetensors", str(tmp_path / "missing.pt")).returncode == 2
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    unreadable = cli("safetensors", str(tmp_path / "notes.pt"))
    assert unreadable.returncode == 2 and len(unreadable.stderr.strip().splitlines()) == 1
    assert cli("safetensors").returncode == 2
    assert cli("cast", str(source)).returncode == 2  # --dtype is required


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")
@pytest.mark.parametrize(
    ("kind", "shard"), [("safetensors", 0), ("safetensors", 70_000), ("extract", 0), ("cast", 0)]
)
async def test_a_write_that_fails_half_way_leaves_no_partial_file(
    tmp_path: Path, kind: str, shard: int
) -> None:
    """A full disk, simulated by a file size limit on the worker: nothing may remain (a file,
    or a folder of shards whose first shards were written)."""
    source = tmp_path / "big.ckpt"
    state = {f"w{i}": torch.randn(128, 128) for i in range(7)}  # 64 KiB each: shards that fit
    state["last"] = torch.randn(256, 256)  # 256 KiB: past the limit
    torch.save({"state_dict": state, "step": 1}, source)
    before = fingerprint(source)
    limited = ("prlimit", "--fsize=100000", sys.executable)
    outcome = await run(source, kind, dtype="fp16", command=limited, max_shard_bytes=shard)
    assert not outcome.ok and "\n" not in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.ckpt"]
    assert fingerprint(source) == before


@pytest.mark.parametrize("shard", [0, 100_000])
async def test_cancelling_mid_write_removes_the_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: int
) -> None:
    """The editor's Cancel: the worker is held once its temporary file is written (the
    downgrade's test pause), then the task is cancelled; a file or a folder of shards."""
    monkeypatch.setenv("TORCHLS_WORKER_TEST_JOBS", "1")
    monkeypatch.setenv("TORCHLS_TEST_DOWNGRADE_PAUSE", "60")
    source = tmp_path / "big.pt"
    torch.save({f"layer{i}.weight": torch.randn(128, 128) for i in range(4)}, source)
    before = fingerprint(source)
    progress: list[tuple[str, float | None]] = []
    task = asyncio.ensure_future(
        run(source, "safetensors", max_shard_bytes=shard, progress=progress)
    )
    deadline = time.monotonic() + 60
    while not any(_written(p) for p in tmp_path.iterdir() if ".tmp-" in p.name):
        assert time.monotonic() < deadline, "the worker never wrote its temporary output"
        await asyncio.sleep(0.05)
    # The worker says "writing" before it writes; on a busy machine the file can be on disk
    # before this process has read that line from the pipe. The user cancels what they see.
    while not any(m.startswith("writing") for m, _ in progress):
        assert time.monotonic() < deadline, f"no 'writing' progress: {progress}"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before


def _written(temp: Path) -> bool:
    if temp.is_dir():
        return any(p.stat().st_size for p in temp.iterdir())
    return temp.stat().st_size > 0


def test_shard_sizes_read_as_transformers_writes_them() -> None:
    from torchls.convert.command import size_argument

    assert size_argument("5GB") == 5 * 10**9
    assert size_argument("500MiB") == 500 * 2**20
    assert size_argument("1.5kb") == 1500
    assert size_argument("4096") == 4096
    for bad in ("", "5 GX", "-1GB", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            size_argument(bad)
    usage = cli("safetensors", "x.pt", "--max-shard-size", "lots")
    assert usage.returncode == 2 and "is not a size" in usage.stderr
