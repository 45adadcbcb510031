"""`torchls.convertCheckpoint` through a real LSP session (`torchls serve`): the file written
and loadable, the original untouched, the progress, the state dict to choose when there are
several, and Cancel on the progress leaving nothing behind."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from lsprotocol import types
from tests.conftest import lsp_session, server_env
from tests.downgrade.helpers import fingerprint

COMMAND = "torchls.convertCheckpoint"


async def test_convert_to_safetensors_writes_a_loadable_copy_beside_the_original(
    tmp_path: Path,
) -> None:
    source = tmp_path / "pytorch_model.bin"
    weights = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}
    torch.save(weights, source)
    before = fingerprint(source)
    async with lsp_session(workspace=tmp_path) as session:
        result = await session.command(COMMAND, source.as_uri(), {"kind": "safetensors"})
        await asyncio.sleep(0.2)  # the last notifications
        progress = [v for vs in session.client.progress_reports.values() for v in vs]
        messages = [m.message for m in session.client.messages]
        status = await session.command("torchls.status")
    out = tmp_path / "pytorch_model.safetensors"
    assert result["ok"] and result["verified"] and result["tensors"] == 2, result
    assert result["output"] == str(out) and result["outputUri"] == out.as_uri()
    loaded = safetensors.torch.load_file(out)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert fingerprint(source) == before
    assert progress[0].cancellable is True
    assert "Converting pytorch_model.bin to safetensors" in progress[0].title
    assert type(progress[-1]).__name__ == "WorkDoneProgressEnd"
    assert result["message"] in messages  # notify defaults to on: a client without its own UI
    assert status["heavy_modules_loaded"] == []  # the server itself never imported torch


async def test_cast_and_extract_take_their_options(tmp_path: Path) -> None:
    source = tmp_path / "train.ckpt"
    weights = {"module.w": torch.randn(8, 8), "module.steps": torch.tensor(3)}
    torch.save({"state_dict": weights, "optimizer": {"lr": 0.1}, "epoch": 2}, source)
    async with lsp_session(workspace=tmp_path) as session:
        extracted = await session.command(
            COMMAND, source.as_uri(), {"kind": "extract", "stripPrefix": "module.", "notify": False}
        )
        cast = await session.command(
            COMMAND, extracted["outputUri"], {"kind": "cast", "dtype": "fp16", "notify": False}
        )
        bad = await session.command(COMMAND, source.as_uri(), {"kind": "cast", "dtype": "int3"})
    assert extracted["ok"], extracted
    plain = torch.load(extracted["output"], weights_only=True)
    assert sorted(plain) == ["steps", "w"] and torch.equal(plain["w"], weights["module.w"])
    assert cast["ok"], cast
    half = torch.load(cast["output"], weights_only=True)
    assert half["w"].dtype == torch.float16 and half["steps"].dtype == torch.int64
    assert bad["reason"] == "error" and "dtype" in bad["message"] and "\n" not in bad["message"]


async def test_several_state_dicts_are_named_and_one_is_chosen_by_key(tmp_path: Path) -> None:
    source = tmp_path / "ema.pt"
    model, ema = {"w": torch.zeros(5)}, {"w": torch.ones(5)}
    torch.save({"model": model, "ema": ema}, source)
    async with lsp_session(workspace=tmp_path) as session:
        asked = await session.command(COMMAND, source.as_uri(), {"kind": "safetensors"})
        assert asked["reason"] == "several-state-dicts" and len(asked["candidates"]) == 2
        [ema_key] = [c for c in asked["candidates"] if "ema" in c]
        chosen = await session.command(
            COMMAND, source.as_uri(), {"kind": "safetensors", "key": ema_key}
        )
    assert chosen["ok"], chosen
    assert torch.equal(safetensors.torch.load_file(chosen["output"])["w"], ema["w"])


async def test_an_existing_output_is_replaced_only_after_asking(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(3)}, source)
    existing = tmp_path / "w.safetensors"
    existing.write_text("keep me")
    asked: list[str] = []
    answer: dict[str, str] = {}
    async with lsp_session(workspace=tmp_path) as session:

        @session.client.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
        def on_request(params: types.ShowMessageRequestParams) -> Any:
            asked.append(params.message)
            title = answer.get("title")
            return types.MessageActionItem(title=title) if title else None

        kept = await session.command(COMMAND, source.as_uri(), {"kind": "safetensors"})
        assert kept["reason"] == "exists" and existing.read_text() == "keep me"
        assert len(asked) == 1 and "w.safetensors exists" in asked[0]
        answer["title"] = "Replace it"
        replaced = await session.command(COMMAND, source.as_uri(), {"kind": "safetensors"})
    assert replaced["ok"] and len(asked) == 2
    assert torch.equal(safetensors.torch.load_file(existing)["w"], torch.ones(3))


async def test_cancel_from_the_progress_mid_write_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.randn(128, 128) for i in range(4)}, source)
    before = fingerprint(source)
    env = server_env(TORCHLS_TEST_DOWNGRADE_PAUSE="60")
    async with lsp_session(workspace=tmp_path, env=env) as session:
        started = time.monotonic()
        running = asyncio.ensure_future(
            session.command(COMMAND, source.as_uri(), {"kind": "safetensors"})
        )
        while not any(".tmp-" in p.name and _written(p) for p in tmp_path.iterdir()):
            assert time.monotonic() < started + 60, "the worker never wrote its temporary file"
            await asyncio.sleep(0.05)
        [token] = list(session.client.progress_reports)
        session.client.window_work_done_progress_cancel(
            types.WorkDoneProgressCancelParams(token=token)
        )
        result = await asyncio.wait_for(running, 30)
    assert not result["ok"] and result["reason"] == "cancelled"
    assert time.monotonic() - started < 45  # the paused worker was killed, not waited for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"]
    assert fingerprint(source) == before


def _written(temp: Path) -> bool:
    if temp.is_dir():
        return any(p.stat().st_size for p in temp.iterdir())
    return temp.stat().st_size > 0
