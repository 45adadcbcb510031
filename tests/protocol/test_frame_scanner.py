"""The frame reader without a process: many seeded streams of broken and valid frames, read in
random pieces with silences between some of them, as a pipe delivers them."""

from __future__ import annotations

import itertools
import random

import pytest
from tests.protocol.test_framing import _fuzz_frames, body, framed

from torchls.lsp.transport import MAX_BODY_BYTES, FrameScanner, FramingError


@pytest.mark.parametrize("seed", range(300))
def test_every_fuzzed_stream_ends_with_the_final_request_read(seed: int) -> None:
    rng = random.Random(seed)
    frames = list(_fuzz_frames(rng, 80))
    stream = b"".join(data for data, _ in frames) + framed(body(99))
    scanner = FrameScanner()
    read: list[object] = []
    position = 0
    while position < len(stream):
        step = rng.randint(1, 2000)
        read += scanner.feed(stream[position : position + step])
        position += step
        assert scanner.buffered <= MAX_BODY_BYTES
        if rng.random() < 0.1:
            read += scanner.idle()
    read += scanner.idle()
    ids = [message["id"] for message in read if isinstance(message, dict)]
    assert ids[-1] == 99
    # Nothing made up: every message read is one that was sent, and none twice.
    sent = {100 + n for n in range(1, len(frames) + 1)} | {99}
    assert set(ids) <= sent and len(ids) == len(set(ids))
    # Every frame that was sent intact right after another intact frame is read.
    for (_, before), (_, intact) in itertools.pairwise(frames):
        if before is not None and intact is not None:
            assert intact in ids


def test_a_body_over_the_limit_that_keeps_coming_is_an_error() -> None:
    scanner = FrameScanner(max_body=1000)
    scanner.feed(b"Content-Length: 5000\r\n\r\n")
    with pytest.raises(FramingError, match="5000 bytes is over torchls' limit of 1000"):
        scanner.feed(b"x" * 1500)


def test_a_claim_over_the_limit_followed_by_a_frame_resyncs() -> None:
    scanner = FrameScanner(max_body=1000)
    read = scanner.feed(b"Content-Length: 5000\r\n\r\n" + b"x" * 1200 + framed(body(3)))
    assert [message["id"] for message in read] == [3]
