"""The language server: state on a LanguageServer subclass, one small handler per feature.

Nothing here imports torch. Work that needs torch goes to the worker through `WorkerClient`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from typing import Any, cast
from urllib.parse import unquote

from lsprotocol import types
from pygls.uris import to_fs_path

from torchls import __version__, boundary, status
from torchls.config import InitOptions, parse_init_options
from torchls.lsp import checkpoints
from torchls.lsp.codelens import CodeLenses
from torchls.lsp.convert import CMD_CONVERT, ConvertCommand
from torchls.lsp.downgrade import CMD_DOWNGRADE, DowngradeCommand
from torchls.lsp.encoded import Verbatim
from torchls.lsp.inlay import InlayHints
from torchls.lsp.kfold_actions import KFoldActions
from torchls.lsp.load_checks import DEBOUNCE_SECONDS, LoadChecks
from torchls.lsp.model_cost import ModelCost
from torchls.lsp.model_report import MODEL_REPORT, ModelReport
from torchls.lsp.protocol import RobustLanguageServer
from torchls.lsp.shape_checks import ShapeChecks
from torchls.worker.client import JobResult, WorkerClient, WorkerSettings
from torchls.worker.protocol import test_jobs_enabled

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "torchls/status"
# Libraries the server process must never import (DESIGN.md, boundary 1); `torchls.status`
# reports any that slipped in, and the tests check the list is empty.
HEAVY_MODULES = ("torch", "thop", "transformers", "sklearn", "numpy")
CMD_STATUS = "torchls.status"
CMD_RESTART_WORKER = "torchls.restartWorker"
CMD_TEST_RUN_JOB = "torchls.test.runWorkerJob"
CMD_TEST_DOCUMENT_TEXT = "torchls.test.documentText"

# A worker that dies this often within the window is not restarted eagerly any more; it still
# starts again on the next request that needs it.
_CRASH_WINDOW_SECONDS = 60.0
_CRASHES_BEFORE_BACKOFF = 3
# A shape check of an opened or saved file starts after the warm-up has queued its jobs.
SHAPE_CHECK_DELAY_SECONDS = 0.2


class TorchLanguageServer(RobustLanguageServer):
    def __init__(self) -> None:
        super().__init__("torchls", __version__)
        self.options = InitOptions()
        self.workspace_root: str | None = None
        self.worker: WorkerClient | None = None
        self.current_status = status.ServerStatus(status.STARTING, "torchls is starting")
        self._recent_exits: deque[float] = deque(maxlen=_CRASHES_BEFORE_BACKOFF)
        self._probing = 0  # environment probes running or queued
        self._tasks: set[asyncio.Task[Any]] = set()
        self.model_cost = ModelCost(self)
        self.inlay_hints = InlayHints(self)
        self.code_lenses = CodeLenses(self)
        self.model_report = ModelReport(self)
        self._watch_profiles()
        self.load_checks = LoadChecks(self)
        # Shape-mismatch diagnostics: told of each profile result, published with load_checks'.
        self.shape_checks = ShapeChecks(self)
        self.kfold = KFoldActions(self)
        self.downgrade = DowngradeCommand(self)
        self.convert = ConvertCommand(self)
        self.checkpoints = checkpoints.Checkpoints(self)

    # -- set-up --------------------------------------------------------------------------------

    def configure(self, params: types.InitializeParams) -> list[str]:
        if self.worker is not None:
            self._forget_first_initialize()
        self.options, warnings = parse_init_options(params.initialization_options)
        self.workspace_root = _workspace_root(params)
        if self.workspace_root:
            warnings += _keep_workspace_out(self.workspace_root)
        self.worker = WorkerClient(
            WorkerSettings(
                command=self.options.worker_command(),
                workspace=self.workspace_root,
                allow_user_code=self.options.user_code_allowed,
                timeout_seconds=self.options.worker.timeout_seconds,
                memory_limit_mb=self.options.worker.memory_limit_mb,
            ),
            on_exit=self.on_worker_exit,
            on_start=self.on_worker_start,
        )
        self.current_status = self._status(status.STARTING, "starting the worker")
        return warnings

    def _forget_first_initialize(self) -> None:
        """A second `initialize` (another root, other trust): nothing the first one set up may
        go on, least of all a worker allowed to run the old workspace's code."""
        assert self.worker is not None
        old_worker = self.worker
        self.worker = None
        self.spawn(old_worker.stop())
        self.load_checks.close()
        self.shape_checks.close()
        self.model_cost.close()
        self.inlay_hints.close()
        self.model_cost = ModelCost(self)
        self.inlay_hints = InlayHints(self)
        self._watch_profiles()
        self.load_checks = LoadChecks(self)
        self.shape_checks = ShapeChecks(self)
        self._recent_exits.clear()

    def _watch_profiles(self) -> None:
        """Inlay hints index each profile result as it arrives (and ask for a refresh)."""
        self.model_cost.cache.add_listener(self.inlay_hints.record)

    def spawn(self, coroutine: Any) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the worker's state, as the user sees it -----------------------------------------------

    def _status(self, state: str, message: str, **extra: Any) -> status.ServerStatus:
        worker = self.worker
        if state in (status.STARTING, status.RESTARTING, status.ERROR):
            # The same interpreter comes back after a restart: keep what is known of it (the
            # torch version is part of every profile's cache key, and a hover must not find
            # its answer "from an earlier version" because the worker was restarted).
            previous = self.current_status
            for known in ("python", "torch", "cuda"):
                extra.setdefault(known, getattr(previous, known))
        return status.ServerStatus(
            state=state,
            message=message,
            trusted=self.options.trusted,
            user_code_allowed=self.options.user_code_allowed,
            worker_pid=worker.pid if worker else None,
            worker_starts=worker.starts if worker else 0,
            last_worker_exit=worker.last_exit if worker else None,
            **extra,
        )

    def publish_status(self, new_status: status.ServerStatus) -> None:
        self.current_status = new_status
        log.info("status: %s: %s", new_status.state, new_status.message)
        self.protocol.notify(STATUS_NOTIFICATION, new_status.as_json())

    async def probe_environment(self) -> JobResult:
        assert self.worker is not None
        self._probing += 1
        try:
            result = await self.worker.run("environment")
        finally:
            self._probing -= 1
        if result.ok:
            state, message, torch_version = status.status_from_environment(result.value)
            torch_info = result.value.get("libraries", {}).get("torch", {})
            cuda = torch_info.get("cuda") if torch_version else None
            known = (self.current_status.torch, self.current_status.cuda)
            if known != (torch_version, cuda if isinstance(cuda, bool) else None):
                # Checks that ran before the probe answered did not know the torch version or
                # whether CUDA is there (weights_only's default, CUDA storages): again.
                self.spawn(self._recheck_open_documents())
            self.publish_status(
                self._status(
                    state,
                    message,
                    python=result.value.get("python"),
                    torch=torch_version,
                    cuda=cuda if isinstance(cuda, bool) else None,
                )
            )
        else:
            self.publish_status(self._status(status.ERROR, result.message))
        return result

    async def _recheck_open_documents(self) -> None:
        await asyncio.sleep(0)  # after the status is published
        for uri in list(self.workspace.text_documents):
            self.load_checks.schedule(uri)

    def on_worker_start(self, pid: int) -> None:
        """A worker started for whatever job: after an error (crashes in a row, a forged
        answer) the status must not go on saying there is none."""
        if self.current_status.state in (status.ERROR, status.RESTARTING) and not self._probing:
            self.spawn(self.probe_environment())

    def on_worker_exit(self, description: str) -> None:
        now = time.monotonic()
        self._recent_exits.append(now)
        crashing = (
            len(self._recent_exits) == _CRASHES_BEFORE_BACKOFF
            and now - self._recent_exits[0] < _CRASH_WINDOW_SECONDS
        )
        if crashing:
            self.publish_status(
                self._status(
                    status.ERROR,
                    f"the worker ended ({description}) {_CRASHES_BEFORE_BACKOFF} times within "
                    f"{_CRASH_WINDOW_SECONDS:g} s; it will start again on the next request",
                )
            )
            return
        self.publish_status(
            self._status(status.RESTARTING, f"the worker ended ({description}); restarting it")
        )
        self.spawn(self.probe_environment())


def _keep_workspace_out(root: str) -> list[str]:
    """The server imports nothing from the workspace: what its start left on sys.path (it
    should be nothing) goes, and what was imported before torchls could stop it is reported."""
    removed = boundary.drop_workspace_paths(root)
    imported = boundary.modules_from(root)
    warnings = []
    if removed:
        warnings.append(f"took the workspace's folders off the server's import path: {removed}")
    if imported:
        warnings.append(
            f"the server process imported these modules from the workspace before torchls "
            f"started: {', '.join(imported)}; check PYTHONPATH and the .pth files of "
            f"{sys.prefix}, and start the server with `python -I`"
        )
    return warnings


def _workspace_root(params: types.InitializeParams) -> str | None:
    uri = None
    if params.workspace_folders:
        uri = params.workspace_folders[0].uri
    elif params.root_uri:
        uri = params.root_uri
    if uri is not None:
        return to_fs_path(uri)
    return params.root_path or None


def create_server() -> TorchLanguageServer:
    server = TorchLanguageServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: TorchLanguageServer, params: types.InitializeParams) -> None:
        for warning in ls.configure(params):
            log.warning("%s", warning)
            ls.window_log_message(
                types.LogMessageParams(type=types.MessageType.Warning, message=warning)
            )

    @server.feature(types.INITIALIZED)
    def initialized(ls: TorchLanguageServer, params: types.InitializedParams) -> None:
        # Start the worker now, in the background, so the status bar can show the torch version
        # and the first real request finds torch already imported.
        ls.spawn(ls.probe_environment())
        ls.spawn(ls.load_checks.register_watcher())

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    async def hover(ls: TorchLanguageServer, params: types.HoverParams) -> types.Hover | None:
        try:
            on_path = await ls.checkpoints.hover(params)
            if on_path is not None:
                return on_path
            return await ls.model_cost.hover(params)
        except Exception:  # a hover must never take the server down
            log.exception("hover failed at %s", params.position)
            return None

    @server.feature(types.TEXT_DOCUMENT_INLAY_HINT, types.InlayHintOptions(resolve_provider=True))
    def inlay_hint(ls: TorchLanguageServer, params: types.InlayHintParams) -> Any:
        try:
            hints = ls.inlay_hints.hints(params)
            # JSON made once per version, sent as it is: the converter's walk of a whole
            # file's hints would cost more than making them
            return hints if hints is None else Verbatim(cast(Any, hints))
        except Exception:  # an inlay hint request must never take the server down
            log.exception("inlay hints failed for %s", params.text_document.uri)
            return None

    @server.feature(types.INLAY_HINT_RESOLVE)
    def inlay_hint_resolve(ls: TorchLanguageServer, hint: types.InlayHint) -> types.InlayHint:
        try:
            return ls.inlay_hints.resolve(hint)
        except Exception:
            log.exception("resolving an inlay hint failed")
            return hint

    @server.feature(types.TEXT_DOCUMENT_CODE_LENS, types.CodeLensOptions(resolve_provider=True))
    def code_lens(
        ls: TorchLanguageServer, params: types.CodeLensParams
    ) -> list[types.CodeLens] | None:
        try:
            return ls.code_lenses.lenses(params)
        except Exception:
            log.exception("code lenses failed for %s", params.text_document.uri)
            return None

    @server.feature(types.CODE_LENS_RESOLVE)
    async def code_lens_resolve(ls: TorchLanguageServer, lens: types.CodeLens) -> types.CodeLens:
        try:
            return await ls.code_lenses.resolve(lens)
        except Exception:
            log.exception("resolving a code lens failed")
            return lens

    @server.feature(MODEL_REPORT)
    async def model_report(ls: TorchLanguageServer, params: Any) -> Any:
        answer = await ls.model_report.handle(params)
        # the tree may hold thousands of rows: sent as it is, past the converter's walk
        return Verbatim(answer) if getattr(ls.protocol, "_converter", None) else answer

    @server.feature(checkpoints.INSPECT)
    async def inspect_checkpoint(ls: TorchLanguageServer, params: Any) -> Any:
        return await ls.checkpoints.handle(checkpoints.INSPECT, params)

    @server.feature(checkpoints.MODEL_TARGETS)
    async def model_targets(ls: TorchLanguageServer, params: Any) -> Any:
        return await ls.checkpoints.handle(checkpoints.MODEL_TARGETS, params)

    @server.feature(checkpoints.COMPARE_MODEL)
    async def compare_model(ls: TorchLanguageServer, params: Any) -> Any:
        return await ls.checkpoints.handle(checkpoints.COMPARE_MODEL, params)

    @server.feature(checkpoints.DIFF)
    async def diff_checkpoints(ls: TorchLanguageServer, params: Any) -> Any:
        return await ls.checkpoints.handle(checkpoints.DIFF, params)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: TorchLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        refused = ls.model_cost.kind(params.text_document.uri).refused()
        if refused is not None:
            log.info("%s: %s", params.text_document.uri, refused)
        # Diagnostics first: their worker job queues ahead of the hover warm-up.
        ls.load_checks.schedule(params.text_document.uri)
        ls.model_cost.warm(params.text_document.uri)
        # After the warm-up has queued its jobs (it shares them): a profile cached before the
        # file was opened tells no listener, so the shape checks ask for it themselves.
        ls.shape_checks.schedule(params.text_document.uri, SHAPE_CHECK_DELAY_SECONDS)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: TorchLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.load_checks.edited(params.text_document.uri)
        ls.model_cost.edited(params.text_document.uri)
        ls.load_checks.schedule(params.text_document.uri, DEBOUNCE_SECONDS)
        ls.load_checks.schedule_others(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: TorchLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.load_checks.schedule(params.text_document.uri)
        ls.model_cost.warm(params.text_document.uri)
        ls.shape_checks.schedule(params.text_document.uri, SHAPE_CHECK_DELAY_SECONDS)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: TorchLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.load_checks.forget(params.text_document.uri)
        ls.shape_checks.forget(params.text_document.uri)
        ls.model_cost.forget(params.text_document.uri)
        ls.inlay_hints.forget(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def watched_files(ls: TorchLanguageServer, params: types.DidChangeWatchedFilesParams) -> None:
        for change in params.changes:
            path = to_fs_path(change.uri)
            if path is None:
                continue
            if path.endswith(".py"):
                ls.load_checks.schedule_others(change.uri, 0.0)  # a model's module, on disk
            else:
                ls.load_checks.checkpoint_changed(path)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[
                types.CodeActionKind.QuickFix,
                types.CodeActionKind.RefactorRewrite,
                types.CodeActionKind.Source,
            ],
            resolve_provider=True,
        ),
    )
    def code_action(
        ls: TorchLanguageServer, params: types.CodeActionParams
    ) -> list[types.CodeAction] | None:
        actions: list[types.CodeAction] = []
        for provider in (
            ls.load_checks.code_actions,
            ls.shape_checks.code_actions,
            ls.kfold.code_actions,
        ):
            try:
                actions += provider(params)
            except Exception:  # a code action request must never take the server down
                log.exception("code actions failed at %s", params.range)
        return actions or None

    @server.feature(types.CODE_ACTION_RESOLVE)
    def code_action_resolve(ls: TorchLanguageServer, action: types.CodeAction) -> types.CodeAction:
        try:
            if ls.kfold.owns(action):
                return ls.kfold.resolve(action)
        except Exception:
            log.exception("resolving %r failed", action.title)
        return action

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: TorchLanguageServer, params: None) -> None:
        ls.load_checks.close()
        ls.shape_checks.close()
        ls.model_cost.close()
        ls.inlay_hints.close()
        if ls.worker is not None:
            await ls.worker.stop()

    @server.command(CMD_STATUS)
    def server_status(ls: TorchLanguageServer, *args: Any) -> dict[str, Any]:
        loaded = [name for name in HEAVY_MODULES if name in sys.modules]
        return {
            **ls.current_status.as_json(),
            "heavy_modules_loaded": loaded,
            "profiles_cached": ls.model_cost.cache.size,
            # What is queued: stays bounded however fast the user types (tests check it).
            "worker_jobs_waiting": ls.worker.jobs_waiting if ls.worker else 0,
            "checks_pending": ls.load_checks.pending,
            "background_tasks": len(ls._tasks),
        }

    @server.command(CMD_RESTART_WORKER)
    async def restart_worker(ls: TorchLanguageServer, *args: Any) -> dict[str, Any]:
        if ls.worker is not None:
            await ls.worker.restart()
            ls.publish_status(ls._status(status.STARTING, "restarting the worker"))
            await ls.probe_environment()
        return ls.current_status.as_json()

    @server.command(CMD_DOWNGRADE)
    async def downgrade_checkpoint(ls: TorchLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.downgrade.run(args)

    @server.command(CMD_CONVERT)
    async def convert_checkpoint(ls: TorchLanguageServer, *args: Any) -> dict[str, Any]:
        return await ls.convert.run(args)

    if test_jobs_enabled():

        @server.command(CMD_TEST_RUN_JOB)
        async def run_worker_job(ls: TorchLanguageServer, *args: Any) -> dict[str, Any]:
            job = str(args[0]) if args else "environment"
            params = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            timeout = float(args[2]) if len(args) > 2 and args[2] is not None else None
            assert ls.worker is not None
            return (await ls.worker.run(job, params, timeout)).as_json()

        @server.command(CMD_TEST_DOCUMENT_TEXT)
        def document_text(ls: TorchLanguageServer, *args: Any) -> dict[str, Any] | None:
            """The server's copy of an open document, for tests that compare it with theirs."""
            document = ls.workspace.text_documents.get(unquote(str(args[0]))) if args else None
            if document is None:
                return None
            return {"text": document.source, "version": document.version}

    return server
