"""Broken LSP frames (issue 14, must-fix 4): one bad frame costs at most that message; a frame
that cannot be recovered ends the server with an error so that the client restarts it."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.protocol.raw import RawServer, status_request


def body(msg_id: int) -> bytes:
    return json.dumps(status_request(msg_id)).encode()


def framed(payload: bytes, length: int | str | None = None, extra_headers: bytes = b"") -> bytes:
    claimed = len(payload) if length is None else length
    return b"Content-Length: %s\r\n" % str(claimed).encode() + extra_headers + b"\r\n" + payload


def answered(server: RawServer, msg_id: int) -> bool:
    response = server.wait_for(msg_id)
    return response.get("result", {}).get("state") is not None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("error", [-10, 40], ids=["10-bytes-short", "40-bytes-long"])
@pytest.mark.parametrize("pipelined", [True, False], ids=["next-follows", "client-waits"])
def test_a_wrong_content_length_costs_nothing(
    server: RawServer, error: int, pipelined: bool
) -> None:
    broken = framed(body(2), len(body(2)) + error)
    if pipelined:
        server.send(broken + framed(body(3)))
    else:
        # The client sends one frame and waits for its answer, as editors do.
        server.send(broken)
        assert answered(server, 2)
        server.send(framed(body(3)))
    assert answered(server, 3)
    assert answered(server, 2)
    assert server.process.poll() is None
    assert "Traceback" not in server.log


def test_a_claimed_100_gb_length_is_never_allocated(server: RawServer) -> None:
    before = rss_mb(server.process.pid)
    server.send(framed(body(2), 100 * 1024**3))
    server.send(framed(body(3)))
    assert answered(server, 3)
    assert answered(server, 2)
    assert rss_mb(server.process.pid) < before + 50
    assert "MemoryError" not in server.log and "Traceback" not in server.log


def test_a_message_over_the_limit_that_keeps_coming_ends_the_server_with_an_error(
    server: RawServer,
) -> None:
    server.send(b"Content-Length: %d\r\n\r\n" % (100 * 1024**3))
    chunk = b"x" * (1024 * 1024)
    try:
        for _ in range(80):
            server.send(chunk)
    except BrokenPipeError:
        pass  # the server stopped reading: what this test expects
    assert server.exit_code() == 1
    errors = [line for line in server.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, server.log
    assert "over torchls' limit" in errors[0]
    assert "Traceback" not in server.log


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(b"garbage between messages\r\n", id="garbage-line"),
        pytest.param(b"\x00\xff\xfe{not json}", id="binary-garbage"),
        pytest.param(b"\r\n\r\n\r\n", id="blank-lines"),
        pytest.param(b"Content-Type: application/json\r\n\r\n" + body(2), id="no-length"),
        pytest.param(framed(body(2), -5), id="negative-length"),
        pytest.param(framed(body(2), "12abc"), id="non-numeric-length"),
        pytest.param(framed(body(2), ""), id="empty-length"),
        pytest.param(framed(b'{"jsonrpc": "2.0", "id": 2, "meth'), id="truncated-json"),
        pytest.param(framed(b"[1, 2, 3]"), id="json-not-an-object"),
        pytest.param(framed(b"[" * 100_000), id="deeply-nested"),
        pytest.param(framed(b"\xff\xfe\xfd"), id="not-utf8"),
        pytest.param(b"Content-Length: " + b"9" * 10_000 + b"\r\n\r\n", id="endless-length"),
        pytest.param(b"X" * 20_000, id="endless-header-line"),
    ],
)
def test_frames_no_client_should_send_are_skipped(server: RawServer, prefix: bytes) -> None:
    server.send(prefix + framed(body(3)))
    assert answered(server, 3)
    assert server.process.poll() is None
    assert "Traceback" not in server.log


def test_content_type_headers_are_accepted(server: RawServer) -> None:
    header = b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
    server.send(framed(body(2), extra_headers=header))
    server.send(header + framed(body(3))[: -len(body(3)) - 2] + b"\r\n" + body(3))
    assert answered(server, 2)
    assert answered(server, 3)
    assert "WARNING" not in server.log


def _fuzz_frames(rng: random.Random, count: int) -> Iterator[tuple[bytes, int | None]]:
    """(bytes, the id of a request they carry intact, if they do)."""
    msg_id = 100
    for _ in range(count):
        msg_id += 1
        payload = body(msg_id)
        kind = rng.choice(
            ["valid"] * 4
            + ["short", "long", "huge", "garbage", "random", "nolength", "badlength", "cut"]
        )
        if kind == "valid":
            yield framed(payload), msg_id
        elif kind == "short":
            yield framed(payload, len(payload) - rng.randint(1, len(payload))), None
        elif kind == "long":
            yield framed(payload, len(payload) + rng.randint(1, 300)), None
        elif kind == "huge":
            yield framed(payload, rng.choice([10**6, 10**12, 2**70])), None
        elif kind == "garbage":
            yield rng.choice([b"\r\n", b"hello\r\n", b"}", b"Content-Type: x\r\n"]), None
        elif kind == "random":
            yield rng.randbytes(rng.randint(1, 200)), None
        elif kind == "nolength":
            yield b"X-Other: 1\r\n\r\n" + payload, None
        elif kind == "badlength":
            yield (
                framed(payload, rng.choice(["-1", "0x10", "1e3", " ", "99999999999999999999x"])),
                None,
            )
        else:
            yield framed(payload)[: rng.randint(1, len(framed(payload)) - 1)], None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_framing_never_leaves_a_deaf_server(server: RawServer, seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(data for data, _ in _fuzz_frames(rng, 80))
    # Written in pieces of random sizes with short pauses, so frames are split across reads and
    # some broken frames meet the reader's idle check.
    position = 0
    while position < len(stream):
        step = rng.randint(1, 600)
        server.send(stream[position : position + step])
        position += step
        if rng.random() < 0.05:
            time.sleep(rng.uniform(0.0, 0.3))
    time.sleep(0.5)  # anything salvaged from the stream is answered before the final request
    server.send(framed(body(99)))
    assert answered(server, 99)
    assert server.process.poll() is None
    assert "Traceback" not in server.log


def test_a_slow_message_whose_text_holds_a_header_is_read_whole(server: RawServer) -> None:
    # A document about LSP, sent in pieces with pauses longer than the reader's idle check: the
    # header inside its text must not be taken for the next frame.
    uri = "file:///tmp/torchls-protocol-test/frames.py"
    text = 'FRAME = b"Content-Length: 12\\r\\n\\r\\n{\\"a\\": 1}"\n' * 50
    did_open = {
        "jsonrpc": "2.0",
        "method": "textDocument/didOpen",
        "params": {
            "textDocument": {"uri": uri, "languageId": "plaintext", "version": 1, "text": text}
        },
    }
    frame = framed(json.dumps(did_open).encode())
    for start in range(0, len(frame), 700):
        server.send(frame[start : start + 700])
        time.sleep(0.4)
    params = {"command": "torchls.test.documentText", "arguments": [uri]}
    response = server.request(2, "workspace/executeCommand", params)
    assert response["result"] == {"text": text, "version": 1}
    assert "WARNING" not in server.log
