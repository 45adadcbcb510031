"""A safety option with a wrong type means "no", and a second `initialize` leaves nothing of the
first running (issue 14, must fix 2).

`{"trusted": "false"}`, `{"trusted": 0}` and `{"allowUserCode": "no"}` were logged as bad values
and replaced by the default `true`, and the workspace's code ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from tests.conftest import lsp_session, process_alive
from tests.profiling.test_hover import _hover, _open, _position

from torchls.config import parse_init_options

SPY = """\
from torch import nn


# torchls: input=(1, 4)
class Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with open({mark!r}, "a") as ran:
            ran.write("workspace code ran\\n")
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""

WRONG_TYPES = [
    {"trusted": "false"},
    {"trusted": 0},
    {"trusted": None},
    {"trusted": "no", "allowUserCode": True},
    {"allowUserCode": "no"},
    {"allowUserCode": 0},
    {"trusted": True, "allowUserCode": "false"},
]


@pytest.mark.parametrize("raw", WRONG_TYPES, ids=repr)
def test_a_safety_option_of_the_wrong_type_means_no(raw: dict[str, Any]) -> None:
    options, warnings = parse_init_options(raw)
    assert options.user_code_allowed is False
    assert len(warnings) == 1
    assert "must be true or false" in warnings[0] and "no workspace code runs" in warnings[0]


def test_options_that_are_not_an_object_allow_no_user_code() -> None:
    options, warnings = parse_init_options(["trusted", False])
    assert options.user_code_allowed is False
    assert "must be an object" in warnings[0]


def test_absent_safety_options_keep_the_documented_default() -> None:
    options, warnings = parse_init_options({"worker": {"timeoutSeconds": 10}})
    assert options.trusted and options.allow_user_code and warnings == []


def _spy_workspace(folder: Path) -> tuple[Path, Path]:
    mark = folder / "RAN"
    model = folder / "spy.py"
    model.write_text(SPY.format(mark=str(mark)))
    return model, mark


@pytest.mark.parametrize(
    "raw",
    [{"trusted": "false"}, {"trusted": 0}, {"allowUserCode": "no"}, None],
    ids=["trusted-string", "trusted-zero", "allowUserCode-string", "control: nothing sent"],
)
async def test_wrongly_typed_trust_runs_no_workspace_code(tmp_path: Path, raw: Any) -> None:
    model, mark = _spy_workspace(tmp_path)
    text = model.read_text()
    async with lsp_session(raw, workspace=tmp_path) as session:
        ready = await session.wait_for_status(lambda s: s["state"] == "ready")
        uri = _open(session, model, text)
        markdown = await _hover(session, uri, _position(text, "class Spy"))
        assert markdown is not None
        if raw is None:  # the control: the same hover, trusted, does run the model's code
            assert "Parameters" in markdown and mark.exists()
            return
        assert ready["user_code_allowed"] is False
        assert "Parameters" not in markdown
        assert "runs none of" in markdown
        messages = [m.message for m in session.log_messages]
        assert any("no workspace code runs" in m for m in messages), messages
    assert not mark.exists()


async def test_a_second_initialize_stops_the_first_worker(tmp_path: Path) -> None:
    first = tmp_path / "first"
    second = tmp_path / "second"
    first.mkdir()
    second.mkdir()
    async with lsp_session(workspace=first) as session:
        await session.wait_for_status(lambda s: s["state"] == "ready")
        old_pid = (await session.command("torchls.status"))["worker_pid"]
        assert old_pid is not None and process_alive(old_pid)
        after = len(session.statuses)
        await session.client.protocol.send_request_async(
            types.INITIALIZE,
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                root_uri=second.as_uri(),
                workspace_folders=[types.WorkspaceFolder(uri=second.as_uri(), name="second")],
                initialization_options={"trusted": False},
            ),
        )
        session.client.initialized(types.InitializedParams())
        ready = await session.wait_for_status(
            lambda s: s["state"] == "ready" and s["trusted"] is False, after=after
        )
        assert ready["worker_pid"] != old_pid
        assert not process_alive(old_pid)
        env = await session.command("torchls.test.runWorkerJob", "environment")
        assert env["value"]["workspace"] == str(second)
        assert env["value"]["user_code_allowed"] is False
