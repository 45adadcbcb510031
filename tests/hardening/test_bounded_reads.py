"""The server bounds every file it reads by size first: a huge or endless file costs nothing."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from lsprotocol import types
from tests.conftest import lsp_session

from torchls.files import read_bounded


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_read_bounded_refuses_what_it_cannot_read_whole(tmp_path: Path) -> None:
    small = tmp_path / "small.json"
    small.write_bytes(b"{}")
    assert read_bounded(small, 2) == b"{}"
    assert read_bounded(small, 1) is None  # over the limit: refused, not cut
    assert read_bounded(tmp_path, 10) is None  # a folder
    assert read_bounded(tmp_path / "missing", 10) is None
    assert read_bounded(str(tmp_path / "nul\0name"), 10) is None
    fifo = tmp_path / "model.py"
    os.mkfifo(fifo)
    done = threading.Event()
    result: list[bytes | None] = []

    def read() -> None:
        result.append(read_bounded(fifo, 10))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "read_bounded blocked on a FIFO"
    assert result == [None]


async def test_a_sparse_2gb_config_json_is_not_read_by_the_server(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    with open(folder / "config.json", "wb") as handle:
        handle.write(b'{"model_type": "bert", "pad": "')
        handle.truncate(2 * 1024**3)  # sparse: 2 GB of NULs that take no disk
    source = tmp_path / "load.py"
    text = 'from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("./m")\n'
    source.write_text(text)
    async with lsp_session(workspace=tmp_path) as session:
        uri = source.as_uri()
        session.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id="python", version=1, text=text
                )
            )
        )
        hover = await asyncio.wait_for(
            session.client.text_document_hover_async(
                types.HoverParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=2, character=22),
                )
            ),
            120,
        )
        await asyncio.sleep(2)  # the load check of the same open, too
        peak = _peak_rss_mb(session.server_pid)
        # Before the fix the server read the file whole (peak 2.1 GB); it imports no torch,
        # so it stays near its own size.
        assert peak < 300, f"server peak RSS {peak:.0f} MB"
        assert hover is None or hover.contents is not None
