"""The in-memory broker's result reads, job-state queries, statistics, dead letters and
operator tools (``vaultq stats``, ``vaultq dead``, ``vaultq job``, ``vaultq cancel``), as a
base class of :class:`~vaultq.brokers.memory.MemoryBroker`: off the fetch and settle path,
like ``redis_ops.py`` for the Redis broker.

Internal to :mod:`vaultq.brokers.memory`; the names here are not public API.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from vaultq.brokers.base import (
    RETRYABLE_REASONS,
    CancelState,
    DeadLetter,
    EnqueueItem,
    JobInfo,
    QueuedEntry,
    QueueStats,
)
from vaultq.brokers.memory_space import Job, Space
from vaultq.brokers.memory_store import MemoryStore

__all__ = ["POLL_MAX", "POLL_MIN", "MemoryOperatorTools"]

POLL_MIN = 0.001
POLL_MAX = 0.02
"""Longest pause of a blocking read between two looks (changes from another thread)."""


class MemoryOperatorTools:
    """Results, job state and what :class:`MemoryBroker` offers operators, on the broker's
    store under its lock (the attributes and helpers are declared here for the type
    checker)."""

    _store: MemoryStore
    _namespace: str
    _caps: tuple[int, float]

    if TYPE_CHECKING:

        def _insert(self, space: Space, item: EnqueueItem, now: float) -> Job: ...

        def _bury(
            self,
            space: Space,
            job: Job,
            reason: str,
            detail: str,
            now: float,
            envelope: bytes | None,
        ) -> None: ...

    # -- results ----------------------------------------------------------------------

    async def get_result(self, queue: str, job_id: str) -> bytes | None:
        store = self._store
        with store.lock:
            data = store.space(self._namespace).result((queue, job_id), store.now())
        await anyio.lowlevel.checkpoint()
        return data

    async def wait_result(self, queue: str, job_id: str, timeout: float) -> bytes | None:
        store = self._store
        deadline = anyio.current_time() + max(timeout, 0.0)
        pause = POLL_MIN
        while True:
            with store.lock:
                data = store.space(self._namespace).result((queue, job_id), store.now())
                event = None if data is not None else store.waiter()
            if event is None:
                await anyio.lowlevel.checkpoint()
                return data
            try:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    await anyio.lowlevel.checkpoint()
                    return None
                with anyio.move_on_after(min(pause, remaining)):
                    await event.wait()
            finally:
                with store.lock:
                    store.drop_waiter(event)
            pause = min(pause * 2, POLL_MAX)

    # -- job state --------------------------------------------------------------------

    async def is_running(self, queue: str, job_id: str) -> bool:
        store = self._store
        with store.lock:
            running = store.space(self._namespace).live_claim((queue, job_id), store.now())
        await anyio.lowlevel.checkpoint()
        return running is not None

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            key = (queue, job_id)
            if space.live(space.finished, key, now) or space.result(key, now) is not None:
                state = CancelState.FINISHED
            else:
                space.cancels[key] = max(now + max(ttl, 0.0), space.cancels.get(key, 0.0))
                state = CancelState.REQUESTED
        await anyio.lowlevel.checkpoint()
        return state

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            found = {j for j in job_ids if space.live(space.cancels, (queue, j), now)}
        await anyio.lowlevel.checkpoint()
        return found

    async def stats(self, queue: str) -> QueueStats:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            ready = delayed = running = 0
            for job in space.jobs.values():
                if job.queue != queue:
                    continue
                if job.not_before <= now:
                    ready += 1
                elif job.owner is None:
                    delayed += 1
                else:
                    running += 1
            letters = space.dead.get(queue, {})
            space.trim_dead(letters, now, self._caps)
            dead = len(letters)
        await anyio.lowlevel.checkpoint()
        return QueueStats(queue=queue, ready=ready, delayed=delayed, running=running, dead=dead)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            letters = space.dead.get(queue, {})
            space.trim_dead(letters, store.now(), self._caps)
            newest = [d.letter for d in reversed(letters.values())][: max(limit, 0)]
        await anyio.lowlevel.checkpoint()
        return newest

    async def purge_dead(self, queue: str) -> int:
        store = self._store
        with store.lock:
            letters = store.space(self._namespace).dead.pop(queue, {})
        await anyio.lowlevel.checkpoint()
        return len(letters)

    async def counters(self, queue: str) -> dict[str, int]:
        store = self._store
        with store.lock:
            found = dict(store.space(self._namespace).counters.get(queue, Counter()))
        await anyio.lowlevel.checkpoint()
        return found

    # -- operator tools ---------------------------------------------------------------

    async def job_info(self, queue: str, job_id: str) -> JobInfo:
        store = self._store
        with store.lock:
            info = store.space(self._namespace).job_info(queue, job_id, store.now())
        await anyio.lowlevel.checkpoint()
        return info

    async def cancel_queued(
        self,
        info: JobInfo,
        *,
        result: bytes | None,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        if info.state not in ("queued", "delayed") or not info.tag.isdigit():
            return False
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            job = space.waiting(info, now)
            if job is not None:
                space.remove(job)
                self._bury(
                    space, job, "cancelled", "cancelled before it started", now, job.envelope
                )
                key = (info.queue, info.job_id)
                if result is not None and space.result(key, now) is None:
                    space.results[key] = (result, now + result_ttl)
                space.finished[key] = max(remember_until, space.finished.get(key, 0.0))
                store.changed()
        await anyio.lowlevel.checkpoint()
        return job is not None

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        if not tag.isdigit():
            return None
        store = self._store
        moved: DeadLetter | None = None
        with store.lock:
            space = store.space(self._namespace)
            letters = space.dead.get(queue, {})
            found = letters.get(int(tag))
            if (
                found is not None
                and found.letter.reason in RETRYABLE_REASONS
                and found.envelope
                and found.letter.job_id
            ):
                moved = found.letter
                del letters[int(tag)]
                key = (queue, moved.job_id)
                # Forgotten: its replay memory, old outcome and cancel marker.
                space.finished.pop(key, None)
                space.results.pop(key, None)
                space.cancels.pop(key, None)
                now = store.now()
                item = EnqueueItem(queue, moved.job_id, found.envelope, priority=found.priority)
                self._insert(space, item, now)
                store.changed()
        await anyio.lowlevel.checkpoint()
        return moved

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        store = self._store
        with store.lock:
            entries = [
                QueuedEntry(job.queue, job.job_id, job.envelope)
                for job in store.space(self._namespace).jobs.values()
                if job.queue == queue
            ][: max(limit, 0)]
        await anyio.lowlevel.checkpoint()
        return entries
