"""What a downgrade refuses, and that a refusal writes nothing and runs nothing: pickles that
name globals weights_only does not allow, dtypes the legacy format cannot load back, files that
are not checkpoints, outputs that exist."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tests.downgrade.helpers import fingerprint, leftovers, run

ROOT = Path(__file__).resolve().parents[2]


class _Boom:
    """Unpickling it runs a shell command that leaves a sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


async def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    source = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Boom(sentinel)}, source)
    before = fingerprint(source)
    outcome = await run(source)
    assert not outcome.ok and outcome.reason == "refused-globals"
    assert outcome.globals == ["posix.system"]
    assert "posix.system" in outcome.message and "runs the file's code" in outcome.message
    assert not sentinel.exists()
    assert fingerprint(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # nothing written
    # Allowing globals is refused outright where the workspace is not trusted.
    untrusted = await run(source, trusted=False, allow_globals=("posix.system",))
    assert untrusted.reason == "untrusted" and not sentinel.exists()


async def test_a_global_the_user_allows_in_a_trusted_workspace(tmp_path: Path) -> None:
    """Old training scripts saved their argparse.Namespace in the checkpoint: a common reason
    weights_only refuses a file that is harmless."""
    source = tmp_path / "with_args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(3)}, source)
    refused = await run(source)
    assert refused.reason == "refused-globals" and refused.globals == ["argparse.Namespace"]
    outcome = await run(source, allow_globals=("argparse.Namespace",))
    assert outcome.ok, outcome.message
    with torch.serialization.safe_globals([argparse.Namespace]):
        loaded = torch.load(tmp_path / "with_args.legacy.pt", weights_only=True)
    assert loaded["args"].lr == 0.1 and torch.equal(loaded["w"], torch.ones(3))


async def test_dtypes_old_torch_cannot_read_are_refused_or_cast_when_asked(tmp_path: Path) -> None:
    f8 = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    u16 = torch.tensor([0, 1, 65535], dtype=torch.uint16)
    u64 = torch.tensor([0, 2**62], dtype=torch.uint64)
    c32 = torch.tensor([1 + 1j, -2j], dtype=torch.complex64).to(torch.complex32)
    source = tmp_path / "new_dtypes.pt"
    torch.save({"f8": f8, "u16": u16, "u64": u64, "c32": c32, "ok": torch.ones(1)}, source)
    refused = await run(source)
    assert not refused.ok and refused.reason == "unsupported-dtypes"
    assert refused.dtypes == ["complex32", "float8_e4m3fn", "uint16", "uint64"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new_dtypes.pt"]
    outcome = await run(source, cast=True)
    assert outcome.ok, outcome.message
    assert sorted(outcome.cast) == [
        "['c32']: complex32 -> complex64",
        "['f8']: float8_e4m3fn -> float32",
        "['u16']: uint16 -> int32",
        "['u64']: uint64 -> int64",
    ]
    loaded = torch.load(tmp_path / "new_dtypes.legacy.pt", weights_only=True)
    assert loaded["f8"].tolist() == [0.5, -2.0, 448.0]
    assert loaded["u16"].tolist() == [0, 1, 65535] and loaded["u64"].tolist() == [0, 2**62]
    assert loaded["c32"].tolist() == [1 + 1j, -2j]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not-a-checkpoint"),
        (b"hello, not a checkpoint\n", "not-a-checkpoint"),
        (pickle.dumps({"a": 1}), "not-a-checkpoint"),
    ],
    ids=["empty", "text", "plain-pickle"],
)
async def test_files_that_are_not_checkpoints_get_one_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    source = tmp_path / "x.pt"
    source.write_bytes(content)
    outcome = await run(source)
    assert not outcome.ok and outcome.reason == reason
    assert "\n" not in outcome.message and "Traceback" not in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


async def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:-500])
    outcome = await run(cut)
    assert not outcome.ok and outcome.reason == "not-a-checkpoint", outcome.message
    assert not (tmp_path / "cut.legacy.pt").exists() and leftovers(tmp_path) == []


async def test_an_archive_that_is_already_legacy_is_left_alone(tmp_path: Path) -> None:
    source = tmp_path / "old.pt"
    torch.save({"w": torch.ones(2)}, source, _use_new_zipfile_serialization=False)
    outcome = await run(source)
    assert not outcome.ok and outcome.reason == "already-legacy"
    assert "torch < 1.6 loads it as it is" in outcome.message


async def test_an_existing_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    existing = tmp_path / "w.legacy.pt"
    existing.write_text("mine")
    outcome = await run(source)
    assert outcome.reason == "exists" and existing.read_text() == "mine"
    assert outcome.output == existing
    replaced = await run(source, overwrite=True)
    assert replaced.ok and torch.equal(torch.load(existing, weights_only=True)["w"], torch.ones(2))
    assert leftovers(tmp_path) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    return subprocess.run(
        [sys.executable, "-m", "torchls", "downgrade", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_the_cli_exit_codes_and_messages(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    done = _cli(str(source))
    assert done.returncode == 0 and "Downgraded w.pt -> w.legacy.pt" in done.stdout
    assert "verified" in done.stdout
    again = _cli(str(source))
    assert again.returncode == 1 and "exists" in again.stderr and "--force" in again.stderr
    forced = _cli(str(source), "--force", "--format", "json")
    assert forced.returncode == 0
    import json

    result = json.loads(forced.stdout)
    assert result["ok"] and result["verified"] and result["tensors"] == 1
    assert result["outputUri"] == (tmp_path / "w.legacy.pt").as_uri()
    out = tmp_path / "sub.pt"
    assert _cli(str(source), "-o", str(out)).returncode == 0 and out.exists()
    assert _cli(str(tmp_path / "missing.pt")).returncode == 1
    assert _cli().returncode == 2  # usage: the path is required


def test_a_zip_that_is_not_a_torch_archive(tmp_path: Path) -> None:
    source = tmp_path / "a.pt"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("readme.txt", "not torch")
    done = _cli(str(source))
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


async def test_an_output_folder_is_never_replaced_by_a_file_or_emptied(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, source)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "precious.txt").write_text("keep")
    outcome = await run(source, output=shelf, overwrite=True)
    assert outcome.ok and outcome.output == shelf / "w.legacy.pt"  # written into the folder
    assert (shelf / "precious.txt").read_text() == "keep"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, model / "pytorch_model.bin")
    refused = await run(model, output=shelf, overwrite=True)
    assert not refused.ok and "is not a model folder torchls wrote" in refused.message
    assert (shelf / "precious.txt").read_text() == "keep"
