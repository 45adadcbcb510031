"""Shared helpers: a real torchls server over stdio, driven by pytest-lsp's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

# Test modules import `tests.<module>`, a namespace package found through the checkout on
# sys.path; importing torchls in-process takes the checkout off sys.path (torchls.boundary), so
# the package is imported here first, whichever test file runs first.
import tests  # noqa: F401
from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities
from pytest_lsp.client import make_test_lsp_client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


class Session:
    """A running server plus everything it told the client."""

    def __init__(self, client: LanguageClient, init_result: types.InitializeResult) -> None:
        self.client = client
        self.init_result = init_result
        self.statuses: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def record_status(self, params: Any) -> None:
        self.statuses.append(_plain(params))
        self._changed.set()

    async def wait_for_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0, after: int = 0
    ) -> dict[str, Any]:
        """The first status, from index `after` on, that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for status in self.statuses[after:]:
                if predicate(status):
                    return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching status within {timeout} s: {self.statuses}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def command(self, name: str, *arguments: Any) -> Any:
        result = await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments))
        )
        return _plain(result)

    @property
    def log_messages(self) -> list[types.LogMessageParams]:
        return list(self.client.log_messages)

    @property
    def server_pid(self) -> int:
        server = self.client._server
        assert server is not None
        return server.pid


def lsp_frame(message: dict[str, Any]) -> bytes:
    """One LSP message with its Content-Length header, for tests that talk raw bytes."""
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


INITIALIZE_REQUEST = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"capabilities": {}, "processId": None, "rootUri": None},
}


def _plain(value: Any) -> Any:
    """pygls hands custom payloads over as namedtuple-like objects; make them dicts and lists."""
    if hasattr(value, "_asdict"):
        return {key: _plain(item) for key, item in value._asdict().items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TORCHLS_WORKER_TEST_JOBS"] = "1"
    env["PYTHONPATH"] = str(ROOT / "server")
    env.update(extra)
    return env


@asynccontextmanager
async def lsp_session(
    initialization_options: Any = None,
    workspace: Path = EXAMPLES,
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[Session]:
    """Start `torchls serve --stdio` (or `command`, in `cwd`), initialize it as VS Code would,
    and shut it down after."""
    client = make_test_lsp_client()
    await client.start_io(
        *(command or [sys.executable, "-m", "torchls", "serve", "--stdio"]),
        env=env or server_env(),
        cwd=None if cwd is None else str(cwd),
    )
    holder: dict[str, Session] = {}
    early: list[Any] = []

    @client.feature("torchls/status")
    def on_status(params: Any) -> None:
        if "session" in holder:
            holder["session"].record_status(params)
        else:
            early.append(params)

    try:
        result = await client.initialize_session(
            types.InitializeParams(
                capabilities=client_capabilities("visual-studio-code"),
                root_uri=workspace.as_uri(),
                workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")],
                initialization_options=initialization_options,
            )
        )
        session = Session(client, result)
        for item in early:
            session.record_status(item)
        holder["session"] = session
        yield session
        await client.shutdown_session()
    finally:
        # After a failed assertion the session was not shut down; pygls' client would then wait
        # for the server to exit on its own, forever.
        server = client._server
        if server is not None and server.returncode is None and not client._stop_event.is_set():
            with contextlib.suppress(ProcessLookupError):
                server.terminate()
        await client.stop()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter with nothing installed: no torch, no pygls."""
    folder = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")
