"""Run a real editor (Neovim, Emacs) headless against `torchls serve` on a copy of examples/.

The editor script does the LSP work and writes its findings as JSON; the tests assert on them.
Everything the editor or the server writes goes into the test's temporary folder: HOME and the
XDG folders point there, and the workspace is a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HERE = Path(__file__).resolve().parent
# The editor's own waits are 90 s for the hover and 90 s for each diagnostics change; this is the
# last resort for an editor that hangs.
EDITOR_TIMEOUT_SECONDS = 300
SERVER_COMMAND = [sys.executable, "-m", "torchls", "serve"]
MODULE_FIX_TITLE = "Strip the `module.` prefix"
FIXED_LOAD = (
    'model.load_state_dict({k.removeprefix("module."): v for k, v in '
    'torch.load("checkpoints/dataparallel.pt").items()})'
)


def copy_examples(destination: Path) -> Path:
    """examples/ copied to `destination`, with its checkpoints (made there if missing)."""
    shutil.copytree(
        EXAMPLES, destination, ignore=shutil.ignore_patterns("__pycache__", ".torchls-cache")
    )
    if not (destination / "checkpoints").is_dir():
        subprocess.run(
            [sys.executable, str(destination / "make_checkpoints.py")],
            cwd=destination,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return destination


@dataclass
class EditorRun:
    result: dict[str, Any]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    home: Path

    def explain(self, extra_log: Path | None = None) -> str:
        """Everything worth reading when an assertion fails."""
        parts = [
            f"exit {self.returncode} after {self.seconds:.1f} s",
            f"result: {json.dumps(self.result, indent=1)[:6000]}",
            f"stdout (end): {self.stdout[-3000:]}",
            f"stderr (end): {self.stderr[-3000:]}",
        ]
        if extra_log is not None and extra_log.is_file():
            parts.append(f"{extra_log.name} (end): {extra_log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def run_editor(
    argv: list[str], workspace: Path, scratch: Path, extra_env: dict[str, str] | None = None
) -> EditorRun:
    """Run `argv` (an editor running one of this folder's scripts) with HOME/XDG in `scratch`."""
    home = scratch / "home"
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(scratch / "run"),
        TORCHLS_WORKSPACE=str(workspace),
        TORCHLS_SERVER_CMD=json.dumps(SERVER_COMMAND),
        TORCHLS_RESULT=str(scratch / "result.json"),
        PYTHONPATH=str(ROOT / "server"),
    )
    env.update(extra_env or {})
    for folder in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        Path(env[folder]).mkdir(parents=True, exist_ok=True)
    (scratch / "run").mkdir(mode=0o700, exist_ok=True)
    started = time.monotonic()
    # A session of its own: on a timeout the editor, the server and the worker go together.
    process = subprocess.Popen(
        argv,
        cwd=workspace,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=EDITOR_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[killed after {EDITOR_TIMEOUT_SECONDS} s]"
    seconds = time.monotonic() - started
    result_file = scratch / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return EditorRun(result, seconds, process.returncode, stdout, stderr, home)


def check_hover_and_fix(run: EditorRun, workspace: Path, extra_log: Path | None = None) -> None:
    """The assertions both editors share."""
    why = run.explain(extra_log)
    result = run.result
    assert run.returncode == 0 and result.get("error") is None, why
    assert "20,234" in result["hover"], why
    assert "SmallConvNet" in result["hover"], why
    assert any(MODULE_FIX_TITLE in title for title in result["actions"]), why
    assert MODULE_FIX_TITLE in result["chosen"], why
    assert 'removeprefix("module.")' in result["edited_line"], why
    assert result["edited_line"] == FIXED_LOAD, why
    assert result["line_count_change"] == 0, why
    # The editor saved the buffer: the file on disk has the fix and nothing else changed.
    original = (EXAMPLES / "train.py").read_text().splitlines()
    edited = (workspace / "train.py").read_text().splitlines()
    assert [line for line in edited if line not in original] == [FIXED_LOAD], why
    # The server checked the edited text again: that error is gone, the other load's stays.
    assert result["diagnostic_cleared"] is True, why
    assert any("['state_dict']" in str(d) for d in result["diagnostics_after"]), why
    assert result.get("server_stopped") is True, why
