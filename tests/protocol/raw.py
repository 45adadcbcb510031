"""A torchls server driven with raw bytes: frames no LSP client library would send."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from tests.conftest import INITIALIZE_REQUEST, ROOT, lsp_frame, server_env


class RawServer:
    """`torchls serve --stdio` as a subprocess. What it writes is parsed into messages by a
    strict reader here (the server must frame its own output correctly); stderr is kept."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "torchls", "serve", "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server_env(),
            cwd=ROOT,
        )
        self._messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received: list[dict[str, Any]] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert length is not None, "the server wrote a frame without Content-Length"
            self._messages.put(json.loads(stream.read(length)))

    def _read_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for line in stream:
            self._stderr.append(line)

    @property
    def log(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(data)
        stdin.flush()

    def send_message(self, message: dict[str, Any]) -> None:
        self.send(lsp_frame(message))

    def wait_for(self, msg_id: int | str, timeout: float = 20.0) -> dict[str, Any]:
        """The response to request `msg_id`; AssertionError if none comes in time."""
        deadline = time.monotonic() + timeout
        for message in self.received:
            if message.get("id") == msg_id and "method" not in message:
                return message
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no response to {msg_id!r} within {timeout} s; got {self.received}\n"
                    f"server log:\n{self.log}"
                )
            try:
                message = self._messages.get(timeout=remaining)
            except queue.Empty:
                continue
            self.received.append(message)
            if message.get("id") == msg_id and "method" not in message:
                return message

    def request(self, msg_id: int | str, method: str, params: Any = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send_message(message)
        return self.wait_for(msg_id)

    def initialize(self) -> dict[str, Any]:
        self.send_message(INITIALIZE_REQUEST)
        return self.wait_for(INITIALIZE_REQUEST["id"])

    def exit_code(self, timeout: float = 20.0) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def status_request(msg_id: int) -> dict[str, Any]:
    """A request every torchls answers quickly, whatever its state."""
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "workspace/executeCommand",
        "params": {"command": "torchls.status", "arguments": []},
    }
