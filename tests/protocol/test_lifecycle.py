"""JSON-RPC and the LSP lifecycle at the edges (issue 14, should-fix): every request with an id
gets a result or a proper error, one line and no traceback; `exit` exits with LSP's codes;
junk in notifications costs one line in the log."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tests.protocol.raw import RawServer, status_request

INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
SERVER_NOT_INITIALIZED = -32002
STATUS = {"command": "torchls.status", "arguments": []}


@pytest.fixture
def raw() -> Iterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def server(raw: RawServer) -> RawServer:
    assert "result" in raw.initialize()
    return raw


def assert_error(response: dict[str, object], code: int) -> str:
    error = response.get("error")
    assert isinstance(error, dict), response
    assert error["code"] == code, error
    message = error["message"]
    assert isinstance(message, str) and message and "\n" not in message, error
    assert "traceback" not in json.dumps(response).lower(), response
    return message


def notify(server: RawServer, method: str, params: object) -> None:
    server.send_message({"jsonrpc": "2.0", "method": method, "params": params})


def still_answers(server: RawServer, msg_id: int = 900) -> bool:
    server.send_message(status_request(msg_id))
    return "result" in server.wait_for(msg_id)


def test_a_request_with_invalid_params_gets_invalid_params(server: RawServer) -> None:
    hover = {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": "x"}}
    message = assert_error(server.request(2, "textDocument/hover", hover), INVALID_PARAMS)
    assert "textDocument/hover" in message and "position.character" in message
    assert_error(server.request(3, "textDocument/hover", None), INVALID_PARAMS)
    negative = {"textDocument": {"uri": "file:///x.py"}, "position": {"line": -1, "character": 0}}
    assert_error(server.request(4, "textDocument/hover", negative), INVALID_PARAMS)
    assert still_answers(server)
    assert "Traceback" not in server.log


def test_an_unknown_command_is_one_line(server: RawServer) -> None:
    params = {"command": "torchls.noSuchCommand", "arguments": []}
    message = assert_error(server.request(2, "workspace/executeCommand", params), INVALID_PARAMS)
    assert "torchls.noSuchCommand" in message
    assert "Traceback" not in server.log


def test_requests_before_initialize_get_server_not_initialized(raw: RawServer) -> None:
    hover = {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0}}
    message = assert_error(raw.request(2, "textDocument/hover", hover), SERVER_NOT_INITIALIZED)
    assert "initialize" in message
    assert_error(raw.request(3, "workspace/executeCommand", STATUS), SERVER_NOT_INITIALIZED)
    notify(raw, "textDocument/didOpen", {"textDocument": {}})  # dropped, as LSP says
    assert "result" in raw.initialize()
    assert still_answers(raw)
    assert "Traceback" not in raw.log


def test_requests_after_shutdown_get_invalid_request(server: RawServer) -> None:
    assert server.request(2, "shutdown") == {"jsonrpc": "2.0", "id": 2, "result": None}
    message = assert_error(server.request(3, "workspace/executeCommand", STATUS), INVALID_REQUEST)
    assert "shutdown" in message
    notify(server, "exit", None)
    assert server.exit_code() == 0


def test_exit_without_shutdown_exits_with_1(server: RawServer) -> None:
    notify(server, "exit", None)
    assert server.exit_code() == 1
    assert "Traceback" not in server.log and "never retrieved" not in server.log


def test_shutdown_then_exit_exits_with_0(server: RawServer) -> None:
    server.request(2, "shutdown")
    notify(server, "exit", None)
    assert server.exit_code() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "1.0", "id": 2, "method": "shutdown"},
        {"id": 2, "method": "shutdown"},
        {"jsonrpc": "2.0", "id": 2, "method": 17},
    ],
    ids=["jsonrpc-1.0", "no-jsonrpc", "method-not-a-string"],
)
def test_malformed_requests_get_invalid_request(
    server: RawServer, message: dict[str, object]
) -> None:
    server.send_message(message)
    assert_error(server.wait_for(2), INVALID_REQUEST)
    assert still_answers(server)


@pytest.mark.parametrize(
    "params",
    [{"id": "not-running"}, {"id": None}, {"id": {"a": 1}}, {"id": [1]}, {"id": 12345}, {}, None],
    ids=["string", "null", "object", "array", "unknown-int", "no-id", "no-params"],
)
def test_cancel_request_with_junk_ids(server: RawServer, params: object) -> None:
    notify(server, "$/cancelRequest", params)
    assert still_answers(server)
    assert "Traceback" not in server.log
    assert "was never retrieved" not in server.log
    assert len([line for line in server.log.splitlines() if "cancel" in line.lower()]) <= 1


def test_a_client_preferring_utf8_positions_gets_utf16(raw: RawServer) -> None:
    # Neovim offers utf-8 first; torchls counts every column in UTF-16 code units.
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "processId": None,
            "rootUri": None,
            "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16", "utf-32"]}},
        },
    }
    raw.send_message(initialize)
    capabilities = raw.wait_for(1)["result"]["capabilities"]
    assert capabilities.get("positionEncoding", "utf-16") == "utf-16"


def test_a_nul_in_a_document_uri_costs_no_traceback(server: RawServer) -> None:
    notify(server, "initialized", {})
    text = (
        "import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(2, 2)\n"
        "\nnet = Net()\nnet.load_state_dict(torch.load('dp.pt'))\n"
    )
    uri = "file:///tmp/a%00b/model.py"
    notify(
        server,
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
    )
    hover = {"textDocument": {"uri": uri}, "position": {"line": 3, "character": 7}}
    assert "result" in server.request(2, "textDocument/hover", hover)
    actions = {
        "textDocument": {"uri": uri},
        "range": {"start": {"line": 9, "character": 0}, "end": {"line": 9, "character": 3}},
        "context": {"diagnostics": []},
    }
    assert "result" in server.request(3, "textDocument/codeAction", actions)
    assert server.request(4, "shutdown")["result"] is None
    notify(server, "exit", None)
    assert server.exit_code() == 0
    assert "Traceback" not in server.log and "never retrieved" not in server.log
