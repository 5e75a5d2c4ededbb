"""Synchronous enqueue writes: the broker side of ``task.enqueue_sync``.

A sync caller (a Django view, a script, a thread) writes its sealed jobs straight from
its own thread through a :class:`SyncWriter`, instead of hopping onto the app's
background event loop. A writer does exactly what the async broker's ``enqueue``,
``enqueue_unique`` and ``enqueue_keyed`` do, built from the same command/SQL builders,
so the two paths cannot drift apart. Brokers that offer one implement
:class:`SyncWrites`; for the others ``enqueue_sync`` keeps using the loop thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from vaultq.brokers.base import EnqueueItem

__all__ = ["SyncWriter", "SyncWrites", "fork_generation"]

_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """How many forks stand between this process and the first one: a writer made in
    another generation belongs to an ancestor (whose sockets and database connections a
    child must not use). Cheaper than ``os.getpid()``, a system call, on every write."""
    return _generation


@runtime_checkable
class SyncWriter(Protocol):
    """Thread-safe and fork-safe: any thread may call it at once (each write takes its
    own pooled connection), and a forked child opens its own connections instead of
    sharing the parent's. Errors are mapped like the async broker's."""

    def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        """:meth:`Broker.enqueue <vaultq.brokers.base.Broker.enqueue>`, synchronously."""
        ...

    def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        """:meth:`Broker.enqueue_unique`, synchronously."""
        ...

    def enqueue_keyed(self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float) -> str:
        """:meth:`UniqueKeys.enqueue_keyed`, synchronously."""
        ...

    def time(self) -> float:
        """:meth:`Broker.time`, synchronously."""
        ...

    def close(self) -> None:
        """Close the idle pooled connections (those in use close when returned)."""
        ...


@runtime_checkable
class SyncWrites(Protocol):
    """A broker that can write enqueues synchronously."""

    def sync_writer(self) -> SyncWriter | None:
        """A new writer with this broker's settings (None: not for this configuration,
        e.g. a client handed in by the application, or a ``:memory:`` database)."""
        ...
