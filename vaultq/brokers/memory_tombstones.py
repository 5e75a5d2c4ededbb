"""The in-memory broker's tombstones (:class:`vaultq.brokers.base.Tombstones`), as a base
class of :class:`~vaultq.brokers.memory.MemoryBroker`: one critical section under the
store's lock, so a tombstone and an ``enqueue_unique`` of the same id never both win.

Internal to :mod:`vaultq.brokers.memory`; the names here are not public API.
"""

from __future__ import annotations

import anyio.lowlevel

from vaultq.brokers.memory_store import MemoryStore

__all__ = ["MemoryTombstones"]


class MemoryTombstones:
    """``tombstone`` on the broker's own store (declared here for the type checker)."""

    _store: MemoryStore
    _namespace: str

    async def tombstone(
        self,
        queue: str,
        job_id: str,
        *,
        result: bytes,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            key = (queue, job_id)
            # The same checks as enqueue_unique: an entry (queued, delayed, running), a
            # finished-id memory or a stored result means the id exists.
            exists = (
                space.find(queue, job_id) is not None
                or space.live(space.finished, key, now)
                or space.result(key, now) is not None
            )
            if not exists:
                space.results[key] = (result, now + result_ttl)
                space.finished[key] = max(remember_until, space.finished.get(key, 0.0))
                store.changed()
        await anyio.lowlevel.checkpoint()
        return not exists
