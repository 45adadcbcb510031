"""A path that names a file that is not a checkpoint gets a message that quotes none of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.loadcheck.helpers import check_file

from torchls.checkpoint import CheckpointError, read_checkpoint

SECRET = b"root:$6$Xy7Pq2$SecretHashValue:19000:0:99999:7:::\n"


@pytest.mark.parametrize(
    "content",
    [SECRET, b"\x00\x01secret-bytes-here", b"#!/bin/sh\necho hunter2\n"],
    ids=["shadow-like", "binary", "script"],
)
def test_reader_message_quotes_no_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "shadow"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    for size in (4, 5, 6):
        for start in range(len(content) - size):
            piece = content[start : start + size].decode("latin-1")
            if piece.strip() and piece.isprintable():
                assert piece not in message.replace(str(path), ""), message
    assert "not a checkpoint format torchls knows" in message


async def test_load_diagnostic_quotes_none_of_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    source = tmp_path / "train.py"
    source.write_text(
        "import torch\nfrom torch import nn\n\nmodel = nn.Linear(2, 2)\n"
        f"model.load_state_dict(torch.load({str(secret)!r}))\n"
    )
    reports = await check_file(tmp_path, "train.py")
    messages = [f.message for report, _ in reports for f in report.findings]
    assert any("not a checkpoint format" in m for m in messages), messages
    text = repr(reports)
    assert "SecretHashValue" not in text and "root:" not in text, text
