"""The broker operation behind chords (``vaultq.workflow_groups``): record one group
member's sealed result and learn, in the same atomic step, whether every member has one.

Offered by the built-in brokers (Redis: one Lua script on the callback queue's hash
slot; SQLite: one ``BEGIN IMMEDIATE`` transaction; memory: under the store's lock). A
broker without it cannot run chords: :func:`chord_store` says so with a clear error
when a chord is enqueued or a member finishes.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio.lowlevel

from vaultq.errors import ConfigurationError

if TYPE_CHECKING:
    from vaultq.brokers.base import Broker
    from vaultq.brokers.memory_store import MemoryStore

__all__ = ["MAX_MEMBERS", "ChordStore", "MemoryChords", "check_member", "chord_store"]

MAX_MEMBERS = 1024
"""Members of one chord at most (a member index is below this)."""


@runtime_checkable
class ChordStore(Protocol):
    """Chord state: which members of chord ``chord`` have finished, and their sealed
    results, kept beside ``queue``'s keys (the callback's queue: one Redis Cluster slot)."""

    async def chord_arrive(
        self, queue: str, chord: str, member: int, result: bytes, *, total: int, until: float
    ) -> bool:
        """Atomically: record ``result`` for ``member`` (``0 <= member < total``) unless
        that member has one already (the first one recorded stays: a member that runs
        again after a crash changes nothing), then return whether all ``total`` members
        have one. Every call after the last arrival returns True, so the caller that
        completes the chord, and any re-run of it, enqueues the callback (with
        ``enqueue_unique`` under a fixed id: once). ``until``: Unix time at which the
        chord's state expires (the workflow's end); later calls do not extend it."""
        ...

    async def chord_results(self, queue: str, chord: str) -> dict[int, bytes]:
        """The recorded results by member index (empty once expired or never started)."""
        ...


def chord_store(broker: Broker) -> ChordStore:
    """``broker`` as a :class:`ChordStore`, or ``ConfigurationError`` saying what to do."""
    if isinstance(broker, ChordStore):
        return broker
    raise ConfigurationError(
        f"the broker {broker.url} cannot run chords (it has no chord_arrive/chord_results "
        "operation, vaultq.brokers.chords.ChordStore); use a built-in broker (redis, "
        "sqlite, memory) or add the operation to this broker"
    )


def check_member(member: int, total: int) -> None:
    if not 0 < total <= MAX_MEMBERS or not 0 <= member < total:
        raise ValueError(f"chord member {member} of {total}: out of range")


_STATE: weakref.WeakKeyDictionary[MemoryStore, dict[tuple[str, str, str], _Chord]] = (
    weakref.WeakKeyDictionary()
)


class _Chord:
    __slots__ = ("results", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.results: dict[int, bytes] = {}


class MemoryChords:
    """:class:`ChordStore` for the in-memory broker, under its store's lock."""

    if TYPE_CHECKING:
        _store: MemoryStore
        _namespace: str

    async def chord_arrive(
        self, queue: str, chord: str, member: int, result: bytes, *, total: int, until: float
    ) -> bool:
        check_member(member, total)
        store = self._store
        with store.lock:
            chords = _STATE.setdefault(store, {})
            now = store.now()
            for key in [k for k, c in chords.items() if c.until <= now]:
                del chords[key]
            found = chords.get((self._namespace, queue, chord))
            if found is None:
                found = chords[(self._namespace, queue, chord)] = _Chord(until)
            found.results.setdefault(member, bytes(result))
            done = len(found.results) >= total
        await anyio.lowlevel.checkpoint()
        return done

    async def chord_results(self, queue: str, chord: str) -> dict[int, bytes]:
        store = self._store
        with store.lock:
            found = _STATE.get(store, {}).get((self._namespace, queue, chord))
            results = {} if found is None or found.until <= store.now() else dict(found.results)
        await anyio.lowlevel.checkpoint()
        return results
