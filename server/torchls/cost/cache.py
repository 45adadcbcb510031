"""Profile results by key, with in-flight sharing and the last answer per target.

A hover and a background warm-up asking for the same key share one worker job. Failures the
user can fix by editing (constructor errors, time-outs) are cached like results, since the same
input would fail the same way; failures of the machinery (a crash, a worker that would not
start) are not, so the next hover tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from torchls.cost.request import PreparedProfile
from torchls.worker import protocol
from torchls.worker.client import JobResult

# (job parameters, background) -> result; background jobs yield the worker to any other.
Runner = Callable[[dict[str, Any], bool], Awaitable[JobResult]]
# Told of every result as it arrives (inlay hints index it and ask the client to refresh).
Listener = Callable[[PreparedProfile, JobResult], None]
log = logging.getLogger(__name__)
_NOT_CACHED = {
    protocol.ERROR_CRASH,
    protocol.ERROR_START,
    protocol.ERROR_CANCELLED,
    protocol.ERROR_INTERNAL,
    protocol.ERROR_MEMORY,
    protocol.ERROR_MISSING,
    protocol.ERROR_PROTOCOL,  # whatever the worker said, it was not this job's answer
}


class ProfileCache:
    def __init__(self, run: Runner, max_entries: int = 256) -> None:
        self._run = run
        self._max_entries = max_entries
        self._results: OrderedDict[str, JobResult] = OrderedDict()
        self._latest: dict[str, tuple[str, JobResult]] = {}
        self._inflight: dict[str, asyncio.Future[JobResult]] = {}
        self._listeners: list[Listener] = []
        # Grows whenever what the cache holds changes: views computed from its results (inlay
        # hints, lenses) are valid while it stays the same.
        self.generation = 0

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def peek_key(self, key: str) -> JobResult | None:
        """The cached result under `key`, without touching its place in the LRU order."""
        return self._results.get(key)

    def peek(self, prepared: PreparedProfile) -> JobResult | None:
        result = self._results.get(prepared.key)
        if result is not None:
            self._results.move_to_end(prepared.key)
        return result

    def previous(self, prepared: PreparedProfile) -> JobResult | None:
        """The last answer for the same target computed from other source text, if any."""
        entry = self._latest.get(prepared.identity)
        if entry is None or entry[0] == prepared.key or not entry[1].ok:
            return None
        return entry[1]

    def is_running(self, prepared: PreparedProfile) -> bool:
        return prepared.key in self._inflight

    def get(self, prepared: PreparedProfile, background: bool = False) -> asyncio.Future[JobResult]:
        """A future for the result: done at once when cached, else shared with any running job.

        The job runs to the end even when every caller stops waiting (a cancelled hover still
        warms the cache for the next one)."""
        cached = self.peek(prepared)
        if cached is not None:
            done: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
            done.set_result(cached)
            return done
        running = self._inflight.get(prepared.key)
        if running is None:
            running = asyncio.ensure_future(self._compute(prepared, background))
            self._inflight[prepared.key] = running
        return running

    async def _compute(self, prepared: PreparedProfile, background: bool) -> JobResult:
        try:
            result = await self._run(prepared.params, background)
        finally:
            self._inflight.pop(prepared.key, None)
        if result.ok or result.error_kind not in _NOT_CACHED:
            self._results[prepared.key] = result
            while len(self._results) > self._max_entries:
                self._results.popitem(last=False)
            self.generation += 1
        if result.ok:
            self._latest[prepared.identity] = (prepared.key, result)
        for listener in list(self._listeners):
            try:
                listener(prepared, result)
            except Exception:  # a view's bug must not lose the result for the hover
                log.exception("a profile cache listener failed")
        return result

    @property
    def size(self) -> int:
        return len(self._results)

    def clear(self) -> None:
        self._results.clear()
        self._latest.clear()
        self.generation += 1
