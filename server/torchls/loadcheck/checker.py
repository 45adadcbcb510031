"""Check every load site of a file: find the sites, read their checkpoints (in the isolated
reader process), get the models' keys (the worker's `state_dict` job), analyse, and propose
fixes. Shared by the language server and `torchls check`; caches by file stamp and by the
model's source fingerprint, so re-checking an unchanged file costs no I/O beyond a `stat`.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.checkpoint.errors import CheckpointError
from torchls.cost.cache import ProfileCache
from torchls.cost.request import prepare
from torchls.loadcheck import fixes as fixes_module
from torchls.loadcheck.analysis import (
    ERROR,
    INFORMATION,
    WARNING,
    Checkpoint,
    Environment,
    Finding,
    ModelKeys,
    Outcome,
    analyse,
    pretrained_file_finding,
    pretrained_takes_file,
)
from torchls.source.loads import LoadSite, find_load_sites, saved_construction
from torchls.source.models import FileModels, ModelTarget
from torchls.source.project import ModuleFile
from torchls.worker import protocol
from torchls.worker.client import JobResult

ReadSummary = Callable[[str], Awaitable[dict[str, Any]]]
RunJob = Callable[[dict[str, Any]], Awaitable[JobResult]]
MAX_SITES = 64  # per file
_STAMP_CACHE = 128


@dataclass
class SiteReport:
    site: LoadSite
    outcome: Outcome
    checkpoint: Checkpoint | None = None
    model: ModelKeys | None = None
    checkpoint_path: str | None = None  # the file found, when it exists
    notes: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return self.outcome.findings

    @property
    def unchecked(self) -> str | None:
        """Why torchls could not check this load's keys (or none of it), or None."""
        if self.site.unchecked is not None:
            return self.site.unchecked
        if self.outcome.has("unchecked") and self.notes:
            return self.notes[0]
        return None


class LoadChecker:
    def __init__(
        self,
        read_summary: ReadSummary,
        run_job: RunJob,
        environment: Callable[[], Environment],
        may_build: Callable[[], bool] = lambda: True,
    ) -> None:
        """`may_build` False: no user code may run (an untrusted workspace, no torch), so only
        the checkpoints are checked."""
        self._read_summary = read_summary
        self._environment = environment
        self._may_build = may_build
        self.models = ProfileCache(lambda params, background: run_job(params))
        self._checkpoints: OrderedDict[str, tuple[Any, Checkpoint | None, str | None]] = (
            OrderedDict()
        )
        self._reading: dict[
            tuple[str, Any], asyncio.Future[tuple[Checkpoint | None, str | None]]
        ] = {}

    def forget_checkpoint(self, path: str) -> None:
        self._checkpoints.pop(os.path.realpath(path), None)

    async def check(self, models: FileModels, workspace: str | None) -> list[SiteReport]:
        sites = find_load_sites(models, workspace)[:MAX_SITES]
        return list(await asyncio.gather(*(self._check_site(models, site) for site in sites)))

    async def _check_site(self, models: FileModels, site: LoadSite) -> SiteReport:
        if site.unchecked is not None:
            # Said, never silent: a load that is not checked is not a load that is fine. A
            # state dict copied between models in memory is no checkpoint load: counted only.
            outcome = Outcome()
            if not site.in_memory:
                message = f"torchls cannot check this load: {site.unchecked}."
                outcome.findings.append(Finding(INFORMATION, "unchecked", message, site.span))
            return SiteReport(site, outcome)
        environment = self._environment()
        found = _existing(site.candidates)
        weights_file = (
            found is not None and site.kind == "from_pretrained" and not Path(found).is_dir()
        )
        if weights_file and not pretrained_takes_file(site):
            # transformers reads the file as the model's config (JSON) and raises
            outcome = Outcome([pretrained_file_finding(site)])
            return SiteReport(site, outcome, checkpoint_path=found)
        checkpoint: Checkpoint | None = None
        unreadable: str | None = None
        model: ModelKeys | None = None
        notes: list[str] = []
        saved: ModelTarget | None = None  # the model as built from the checkpoint's values
        if found is not None and site.kind == "load_from_checkpoint":
            # Lightning builds the model from the hyper-parameters saved in the checkpoint.
            checkpoint, unreadable = await self._checkpoint(found)
            if checkpoint is not None:
                hparams = checkpoint.containers.get("['hyper_parameters']")
                values = dict(hparams.values) if hparams is not None else {}
                model, notes = await self._model(models, site, environment, values)
        elif found is not None and _arguments_may_be_saved(site):
            # GPT(GPTConfig(**checkpoint["model_args"])): the checkpoint first, then the model
            # built with the values saved in it.
            checkpoint, unreadable = await self._checkpoint(found)
            saved = _with_saved_values(models, site, checkpoint)
            model, notes = await self._model(models, site, environment, target=saved)
        elif found is not None:
            # Both at once: the worker job is queued before anything else (a hover warm-up)
            # can take the worker, and the reader runs meanwhile in its own process.
            (checkpoint, unreadable), (model, notes) = await asyncio.gather(
                self._checkpoint(found, site.kind == "from_pretrained" and not weights_file),
                self._model(models, site, environment),
            )
        outcome = analyse(site, checkpoint, model, environment, unreadable)
        if (
            site.model is None
            and site.kind == "load_state_dict"
            and checkpoint is not None
            and self._may_build()
            and not outcome.errors
        ):
            # The file was read, but without the model its keys were compared with nothing.
            notes.append(
                site.model_unknown
                or f"torchls cannot tell which model `{site.model_text}` is (it follows "
                "`x = Net(...)`, `self.x = Net(...)` in a class and workspace factory "
                "functions, in the same scope)"
            )
        if saved is not None and model is not None and site.model is not None:
            where = Path(site.path or "").name or "the checkpoint"
            read = [
                f"`{value['unknown']}`"
                for value in [*site.model.args, *site.model.kwargs.values()]
                if "unknown" in value
            ]
            for finding in outcome.findings:
                if finding.severity in (ERROR, WARNING):
                    finding.message = (
                        f"{finding.message.rstrip('.')}; the model is built with "
                        f"{' and '.join(read) or 'its arguments'} as saved in {where}."
                    )
        if notes and checkpoint is not None:
            message = f"torchls cannot check the keys of this load: {notes[0]}"
            outcome.findings.append(Finding(INFORMATION, "unchecked", message, site.span))
        return SiteReport(site, outcome, checkpoint, model, found, notes)

    async def _checkpoint(
        self, path: str, folder: bool = False
    ) -> tuple[Checkpoint | None, str | None]:
        real = os.path.realpath(path)
        try:
            info = Path(real).stat()
        except OSError as exc:
            return None, f"cannot read `{path}`: {exc.strerror or exc}"
        if stat.S_ISDIR(info.st_mode) and not folder:
            return None, f"`{path}` is a folder; this loader needs a file."
        if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
            return None, f"`{path}` is not a regular file (a device, pipe or socket)."
        stamp: Any = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stat.S_ISDIR(info.st_mode):
            stamp = (stamp, _folder_stamp(real))
        cached = self._checkpoints.get(real)
        if cached is not None and cached[0] == stamp:
            self._checkpoints.move_to_end(real)
            return cached[1], cached[2]
        key = (real, stamp)
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(real))
            self._reading[key] = reading
        try:
            checkpoint, error = await asyncio.shield(reading)
        finally:
            self._reading.pop(key, None)
        self._checkpoints[real] = (stamp, checkpoint, error)
        while len(self._checkpoints) > _STAMP_CACHE:
            self._checkpoints.popitem(last=False)
        return checkpoint, error

    async def _read(self, path: str) -> tuple[Checkpoint | None, str | None]:
        try:
            summary = await self._read_summary(path)
        except CheckpointError as exc:
            return None, f"torchls cannot read this checkpoint: {exc.reason}."
        return Checkpoint.from_summary(summary), None

    async def _model(
        self,
        models: FileModels,
        site: LoadSite,
        environment: Environment,
        hparams: dict[str, Any] | None = None,
        target: ModelTarget | None = None,
    ) -> tuple[ModelKeys | None, list[str]]:
        target = target or site.model
        if target is None or not self._may_build():
            return None, []
        prepared = prepare(
            dataclasses.replace(target, inputs=None),
            models.project,
            models.module.path,
            torch_version=environment.torch_version,
        )
        if hparams:
            params = {**prepared.params, "hparams": hparams}
            key = prepared.key + json.dumps(hparams, sort_keys=True)
            prepared = dataclasses.replace(prepared, params=params, key=key)
        result = await asyncio.shield(self.models.get(prepared))
        if result.ok:
            return ModelKeys.from_job(result.value), []
        if result.error_kind == protocol.ERROR_UNTRUSTED:
            return None, []
        return None, [f"building `{target.call_text()}` failed: {result.message}"]

    def fixes(self, models: FileModels, report: SiteReport) -> list[fixes_module.Fix]:
        """Quick fixes for one site, each re-checked on the edited text."""
        site = report.site

        def recheck(
            text: str, at: tuple[int, int] | None = None
        ) -> tuple[LoadSite, Outcome] | None:
            module = ModuleFile(
                models.module.path, models.module.module, models.module.is_package, text
            )
            edited = FileModels(models.project, module)
            start = at or (site.span.start_line, site.span.start_char)
            for candidate in find_load_sites(edited, str(models.project.root or "") or None):
                if (candidate.span.start_line, candidate.span.start_char) == start:
                    candidate.candidates = site.candidates
                    outcome = analyse(
                        candidate, report.checkpoint, report.model, self._environment()
                    )
                    return candidate, outcome
            return None

        return fixes_module.propose(
            site, report.outcome, report.checkpoint, report.model, models.module.text, recheck
        )


def _arguments_may_be_saved(site: LoadSite) -> bool:
    """The model's construction reads something torchls could not see, and the state dict
    comes from a torch.load whose result may hold it (`checkpoint["model_args"]`)."""
    model = site.model
    return (
        model is not None
        and bool(model.problems)
        and site.loader_call is not None
        and site.construction is not None
    )


def _with_saved_values(
    models: FileModels, site: LoadSite, checkpoint: Checkpoint | None
) -> ModelTarget | None:
    """The site's construction read again with the checkpoint's plain values (numbers,
    strings, booleans, dicts of them) standing in for what its torch.load returns; None when
    that sees no more of the arguments than the source alone."""
    if checkpoint is None or site.loader_call is None or site.construction is None:
        return None
    if site.model is None:
        return None
    saved = _saved_value(checkpoint, "", 0)
    if saved is None:
        return None
    ast.copy_location(saved, site.loader_call)
    saved.end_lineno = site.loader_call.end_lineno
    saved.end_col_offset = site.loader_call.end_col_offset
    target = saved_construction(models, site.construction, site.loader_call, saved)
    if target is None or len(target.problems) >= len(site.model.problems):
        return None
    target.wrapper_prefix = site.model.wrapper_prefix
    target.inputs = None
    return target


_MAX_SAVED_DEPTH = 6


def _saved_value(checkpoint: Checkpoint, path: str, depth: int) -> ast.expr | None:
    """A checkpoint's dict as a literal of its plain values and of its dicts that hold only
    such values (`model_args`); entries that are neither (a state dict, an optimizer's lists)
    are left out. None when `path` is not such a dict."""
    container = checkpoint.containers.get(path)
    if container is None or container.type not in {"dict", "OrderedDict"}:
        return None
    keys: list[ast.expr | None] = []
    values: list[ast.expr] = []
    complete = True
    for key in dict.fromkeys([*container.keys, *container.values]):
        value: ast.expr | None = None
        if key in container.values:
            value = _constant(container.values[key])
        elif depth < _MAX_SAVED_DEPTH:
            value = _saved_value(checkpoint, f"{path}[{key!r}]", depth + 1)
        if value is None:
            complete = False
            continue
        keys.append(ast.Constant(key))
        values.append(value)
    if depth and (not complete or len(keys) < container.items):
        return None  # a nested dict is whole or not at all: `**` must pass every key
    return ast.Dict(keys=keys, values=values)


def _constant(value: Any) -> ast.expr | None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return ast.Constant(value)
    return None


def _folder_stamp(folder: str) -> tuple[tuple[str, int, int], ...]:
    """A model folder changes when any file in it does (weights rewritten in place)."""
    entries: list[tuple[str, int, int]] = []
    with contextlib.suppress(OSError), os.scandir(folder) as scan:
        for entry in scan:
            if len(entries) >= 500:
                break
            with contextlib.suppress(OSError):
                if entry.is_file():
                    info = entry.stat()
                    entries.append((entry.name, info.st_mtime_ns, info.st_size))
    return tuple(sorted(entries))


def _existing(candidates: list[str]) -> str | None:
    for candidate in candidates:
        try:
            if Path(candidate).exists():
                return candidate
        except (OSError, ValueError):
            continue
    return None
