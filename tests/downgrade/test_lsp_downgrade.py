"""`torchls.downgradeCheckpoint` through a real LSP session: progress the editor shows, the
questions it asks, cancellation from the progress notification, and the result message."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import torch
from lsprotocol import types
from tests.conftest import Session, lsp_session, server_env
from tests.downgrade.helpers import fingerprint, is_legacy, leftovers

COMMAND = "torchls.downgradeCheckpoint"


def _answer(session: Session) -> tuple[list[str], dict[str, str]]:
    """Answer every showMessageRequest with answer["title"] (missing: dismiss); returns the
    questions asked and the answer to change."""
    asked: list[str] = []
    answer: dict[str, str] = {}

    @session.client.feature(types.WINDOW_SHOW_MESSAGE_REQUEST)
    def on_request(params: types.ShowMessageRequestParams) -> types.MessageActionItem | None:
        asked.append(params.message)
        title = answer.get("title")
        return types.MessageActionItem(title=title) if title else None

    return asked, answer


def _progress(session: Session) -> list[Any]:
    return [value for values in session.client.progress_reports.values() for value in values]


async def test_the_command_downgrades_with_progress_and_a_message(tmp_path: Path) -> None:
    source = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.randn(4, 4), "fc.bias": torch.zeros(4)}, source)
    before = fingerprint(source)
    async with lsp_session(workspace=tmp_path) as session:
        result = await session.command(COMMAND, source.as_uri())
        await asyncio.sleep(0.2)  # the last notifications
        messages = [m.message for m in session.client.messages]
        progress = _progress(session)
    assert result["ok"] and result["verified"] and result["tensors"] == 2
    out = tmp_path / "model.legacy.pth"
    assert result["output"] == str(out) and is_legacy(out) and fingerprint(source) == before
    assert any(
        "Downgraded model.pth -> model.legacy.pth" in m and "verified" in m for m in messages
    )
    kinds = [type(v).__name__ for v in progress]
    assert kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd"
    assert progress[0].cancellable is True and "Downgrading model.pth" in progress[0].title
    assert any(str(getattr(v, "message", "")).startswith("writing ") for v in progress)


async def test_an_existing_output_is_replaced_only_after_asking(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save({"w": torch.ones(3)}, source)
    existing = tmp_path / "w.legacy.pt"
    existing.write_text("keep me")
    async with lsp_session(workspace=tmp_path) as session:
        asked, answer = _answer(session)
        answer["title"] = "Cancel"
        kept = await session.command(COMMAND, source.as_uri())
        assert kept["reason"] == "exists" and existing.read_text() == "keep me"
        assert len(asked) == 1 and "w.legacy.pt exists" in asked[0]
        # A client that cannot answer questions passes interactive: false and gets the reason.
        quiet = await session.command(COMMAND, source.as_uri(), {"interactive": False})
        assert quiet["reason"] == "exists" and len(asked) == 1
        answer["title"] = "Replace it"
        replaced = await session.command(COMMAND, source.as_uri(), {"notify": False})
    assert replaced["ok"] and len(asked) == 2
    assert torch.equal(torch.load(existing, weights_only=True)["w"], torch.ones(3))


async def test_cancel_from_the_progress_notification(tmp_path: Path) -> None:
    source = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.randn(128, 128) for i in range(4)}, source)
    before = fingerprint(source)
    env = server_env(TORCHLS_TEST_DOWNGRADE_PAUSE="60")
    async with lsp_session(workspace=tmp_path, env=env) as session:
        running = asyncio.ensure_future(session.command(COMMAND, source.as_uri()))
        deadline = time.monotonic() + 60
        while not any(".tmp-" in p.name for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "the temporary file never appeared"
            await asyncio.sleep(0.05)
        [token] = list(session.client.progress_reports)
        session.client.window_work_done_progress_cancel(
            types.WorkDoneProgressCancelParams(token=token)
        )
        result = await asyncio.wait_for(running, 30)
    assert not result["ok"] and result["reason"] == "cancelled"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pt"] and leftovers(tmp_path) == []
    assert fingerprint(source) == before


async def test_refusals_say_why_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    async with lsp_session(workspace=tmp_path) as session:
        bad = await session.command(COMMAND, (tmp_path / "notes.pt").as_uri())
        missing = await session.command(COMMAND, (tmp_path / "nope.pt").as_uri())
        nothing = await session.command(COMMAND)
        relative = await session.command(COMMAND, "notes.pt")
        status = await session.command("torchls.status")
    assert bad["reason"] == "not-a-checkpoint" and "\n" not in bad["message"]
    assert missing["reason"] == "not-found" and "does not exist" in missing["message"]
    assert nothing["reason"] == "error" and "needs a checkpoint's file URI" in nothing["message"]
    assert relative["reason"] == "error"
    assert status["heavy_modules_loaded"] == []  # the server itself never imported torch


async def test_globals_are_allowed_only_after_a_warning_and_only_in_a_trusted_workspace(
    tmp_path: Path,
) -> None:
    import argparse

    source = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(2)}, source)
    async with lsp_session(
        workspace=tmp_path, initialization_options={"trusted": False}
    ) as session:
        asked, _ = _answer(session)
        untrusted = await session.command(COMMAND, source.as_uri())
    assert untrusted["reason"] == "refused-globals" and untrusted["globals"] == [
        "argparse.Namespace"
    ]
    assert asked == [] and not (tmp_path / "args.legacy.pt").exists()
    async with lsp_session(workspace=tmp_path) as session:
        asked, answer = _answer(session)
        answer["title"] = "Allow and run its code"
        trusted = await session.command(COMMAND, source.as_uri())
    assert len(asked) == 1 and "runs the file's code" in asked[0]
    assert trusted["ok"], trusted
