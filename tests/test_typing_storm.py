"""Typing fast in a 2,000-line file with several models, as an editor sends it: one incremental
didChange per keystroke, 40 a second. After the last keystroke the diagnostics are those of the
final text (never a stale set published after them), the hover counts the final model, nothing
queued up on the way, and the server and its worker go back to idle within seconds."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import torch
from lsprotocol import types
from tests.conftest import Session, lsp_session
from tests.loadcheck.test_lsp_diagnostics import _open
from tests.profiling.test_hover import _hover, _number

KEYSTROKE_SECONDS = 0.025


def _source() -> str:
    lines = ["import torch", "from torch import nn", ""]
    for n, width in enumerate((8, 16, 24, 32)):
        lines += [
            f"class Model{n}(nn.Module):",
            "    def __init__(self, width=4):",
            "        super().__init__()",
            f"        self.a = nn.Linear({width}, width)",
            "        self.b = nn.Linear(width, 4)",
            "",
            "    def forward(self, x):",
            "        return self.b(torch.relu(self.a(x)))",
            "",
            "",
        ]
    n = 0
    while len(lines) < 1998:
        lines += [f"def helper_{n}(x):", f"    return x * {n} + 1", "", ""]
        n += 1
    lines += [
        "# notes:",
        "net = Model1(width=16)",
        'net.load_state_dict(torch.load("bad.pt"))',
        "",
    ]
    return "\n".join(lines)


class _Model1(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, width)
        self.b = torch.nn.Linear(width, 4)


def _keystrokes(text: str) -> list[tuple[types.Range, str, str]]:
    """(range, new text, the document after it): typing a comment, then retyping the load's
    path from "bad.pt" to "good.pt" (missing, then a file that fits), then the width 16 -> 48."""
    lines = text.split("\n")
    edits: list[tuple[types.Range, str, str]] = []

    def put(line: int, start: int, end: int, new: str) -> None:
        lines[line] = lines[line][:start] + new + lines[line][end:]
        rng = types.Range(types.Position(line, start), types.Position(line, end))
        edits.append((rng, new, "\n".join(lines)))

    notes = lines.index("# notes:")
    for char in " retype the path, then widen the model":
        put(notes, len(lines[notes]), len(lines[notes]), char)
    load = notes + 2
    start = lines[load].index("bad.pt")
    for _ in "bad":  # backspaces
        put(load, start, start + 1, "")
    for n, char in enumerate("good"):
        put(load, start + n, start + n, char)
    build = notes + 1
    at = lines[build].index("16")
    put(build, at, at + 2, "")
    for n, char in enumerate("48"):
        put(build, at + n, at + n, char)
    return edits


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _idle_after(pids: list[int], limit: float = 10.0) -> float:
    """Seconds until a 1 s window in which the processes together used under 5% of a core."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = sum(_cpu_seconds(p) for p in pids)
        await asyncio.sleep(1.0)
        if sum(_cpu_seconds(p) for p in pids) - before < 0.05:
            return time.monotonic() - started
    raise AssertionError(f"still busy {limit:g} s after the last keystroke")


async def test_typing_fast_leaves_current_diagnostics_and_an_idle_server(tmp_path: Path) -> None:
    torch.save(_Model1(48).state_dict(), tmp_path / "good.pt")
    text = _source()
    assert len(text.split("\n")) >= 2000
    path = tmp_path / "models.py"
    path.write_text(text)
    published: list[tuple[int | None, list[types.Diagnostic]]] = []
    async with lsp_session(workspace=tmp_path) as session:
        client = session.client

        # pytest-lsp keeps only the latest diagnostics, without their version: record each set.
        features = client.protocol.fm.features
        keep = features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]

        def on_diagnostics(params: types.PublishDiagnosticsParams) -> None:
            keep(params)
            published.append((params.version, list(params.diagnostics)))

        features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = on_diagnostics

        await session.wait_for_status(lambda s: s.get("state") == "ready", timeout=120)
        uri = _open(session, path, text)
        first = time.monotonic()
        while not any(any(d.source == "torchls" for d in found) for _, found in published):
            assert time.monotonic() - first < 60, "no first diagnostics"
            await asyncio.sleep(0.05)
        queued: list[dict[str, Any]] = []
        version = 1
        keystrokes = _keystrokes(text)
        for rng, new, _ in keystrokes:
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=[types.TextDocumentContentChangePartial(range=rng, text=new)],
                )
            )
            if version % 8 == 0:
                queued.append(await session.command("torchls.status"))
            await asyncio.sleep(KEYSTROKE_SECONDS)
        last_keystroke = time.monotonic()
        final = keystrokes[-1][2]
        # The diagnostics of the final text arrive, and no older set after them.
        while not published or published[-1][0] != version:
            assert time.monotonic() - last_keystroke < 10, f"nothing for version {version}"
            await asyncio.sleep(0.05)
        settle = time.monotonic() - last_keystroke
        status = await session.command("torchls.status")
        idle = await _idle_after([session.server_pid, int(status["worker_pid"])])
        assert published[-1][0] == version
        mine = [d for d in published[-1][1] if d.source == "torchls"]
        # good.pt fits Model1(width=48): the load is fine, so torchls says nothing about it.
        assert [d.message for d in mine] == [], mine
        hover = await _hover_until(session, uri, final, "Model1(width=48)")
        queued.append(await session.command("torchls.status"))
    expected = sum(p.numel() for p in _Model1(48).parameters())
    assert _number(hover, "Parameters") == expected
    assert max(s["worker_jobs_waiting"] for s in queued) <= 2
    assert max(s["checks_pending"] for s in queued) <= 1
    assert queued[-1]["worker_jobs_waiting"] == 0 and queued[-1]["checks_pending"] == 0
    waiting = max(s["worker_jobs_waiting"] for s in queued)
    pending = max(s["checks_pending"] for s in queued)
    print(f"final diagnostics {settle:.2f} s after the last keystroke; idle after {idle:.1f} s; "
          f"at most {waiting} worker jobs waiting, {pending} checks pending")  # fmt: skip


async def _hover_until(session: Session, uri: str, text: str, needle: str) -> str:
    lines = text.split("\n")
    line = next(n for n, value in enumerate(lines) if needle in value)
    position = types.Position(line, lines[line].index(needle) + 1)
    deadline = time.monotonic() + 60
    while True:
        found = await _hover(session, uri, position)
        if found and "| Parameters |" in found:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)
