"""The storage behind ``memory://`` brokers: plain Python objects behind one lock.

``vaultq/brokers/memory.py`` implements the broker protocol on it; this module holds the
:class:`MemoryStore` (one :class:`~vaultq.brokers.memory_space.Space` per namespace, the
clock, the waiters of blocking reads) with its test hooks, and the process's registry of
named stores. The records and the per-namespace state are in ``memory_space.py``.
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
import weakref
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import msgspec

from vaultq.brokers.memory_space import Job, Space
from vaultq.errors import ConfigurationError

__all__ = [
    "NAME_RE",
    "MemoryStore",
    "RecordedEnqueue",
    "parse_url",
    "store_for",
    "store_of",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RecordedEnqueue(msgspec.Struct, frozen=True):
    """One job as it was written by a producer (sealed, unauthenticated until opened)."""

    namespace: str
    queue: str
    job_id: str
    envelope: bytes
    not_before: float | None
    """The broker-clock time it was deferred to (None: deliverable at once)."""
    enqueued_at: float
    unique: bool
    """Written with ``enqueue_unique`` (a custom job id)."""


class MemoryStore:
    """The jobs, results and dead letters of one ``memory://`` name, for every namespace.

    Shared by a broker and its clones (and, for a named store, by every broker built for
    that name in this process). Thread-safe: every method takes the store's lock.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self._spaces: dict[str, Space] = {}
        self._seq = itertools.count(1)
        self._offset = 0.0
        self._recording: list[RecordedEnqueue] | None = None
        self._version = 0
        """Bumped on every change a blocked reader may wait for."""
        self._waiters: list[tuple[object, anyio.Event]] = []

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    # -- test hooks -------------------------------------------------------------------

    def now(self) -> float:
        """The store's clock: this host's, plus what :meth:`advance` added."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Run the store's clock ``seconds`` ahead (never back): delayed jobs, retries
        and leases become due as if that time had passed. Producers and workers read the
        broker's clock (``App.clock.measure``) and follow it."""
        if not seconds >= 0:
            raise ConfigurationError("advance() takes a number of seconds >= 0")
        with self.lock:
            self._offset += seconds
            self._changed()

    def start_recording(self) -> None:
        """Keep a copy of every job enqueued from now on (see :meth:`recorded`)."""
        with self.lock:
            if self._recording is None:
                self._recording = []

    def recorded(self, namespace: str | None = None) -> list[RecordedEnqueue]:
        """The jobs enqueued since recording started (or the last :meth:`clear`),
        oldest first; of one namespace when given."""
        with self.lock:
            records = list(self._recording or ())
        return [r for r in records if namespace is None or r.namespace == namespace]

    def clear(self) -> None:
        """Forget everything: jobs, results, dead letters, markers, recorded enqueues and
        the clock's advance. For a clean slate between tests."""
        with self.lock:
            self._spaces.clear()
            self._offset = 0.0
            if self._recording is not None:
                self._recording = []
            self._changed()

    # -- internals (callers hold the lock) --------------------------------------------

    def space(self, namespace: str) -> Space:
        found = self._spaces.get(namespace)
        if found is None:
            found = self._spaces[namespace] = Space()
        return found

    def next_seq(self) -> int:
        return next(self._seq)

    def record(self, namespace: str, job: Job, *, deferred: bool, unique: bool) -> None:
        if self._recording is not None:
            self._recording.append(
                RecordedEnqueue(
                    namespace=namespace,
                    queue=job.queue,
                    job_id=job.job_id,
                    envelope=job.envelope,
                    not_before=job.not_before if deferred else None,
                    enqueued_at=job.enqueued_at,
                    unique=unique,
                )
            )

    def _changed(self) -> None:
        self._version += 1
        try:
            token = anyio.lowlevel.current_token()
        except RuntimeError:
            token = None
        keep = []
        for owner, event in self._waiters:
            if owner == token:
                event.set()  # same event loop: wake it now
            else:
                keep.append((owner, event))  # another loop polls (POLL_MAX)
        self._waiters = keep

    def changed(self) -> None:
        self._changed()

    def version(self) -> int:
        return self._version

    def waiter(self) -> anyio.Event:
        event = anyio.Event()
        self._waiters.append((anyio.lowlevel.current_token(), event))
        return event

    def drop_waiter(self, event: anyio.Event) -> None:
        self._waiters = [(o, e) for o, e in self._waiters if e is not event]


# One store per name in this process: the only way two App objects reach the same
# in-memory jobs. Named stores live as long as the process (like a server the user
# named); generated names go away with the last broker that uses them.
_NAMED: dict[str, MemoryStore] = {}
_GENERATED: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def store_for(name: str | None) -> MemoryStore:
    """The store named ``name`` in this process (made on first use); None: a fresh
    store under a generated name."""
    with _REGISTRY_LOCK:
        if name is None:
            fresh = MemoryStore("anon-" + secrets.token_hex(6))
            _GENERATED[fresh.name] = fresh
            return fresh
        found = _NAMED.get(name) or _GENERATED.get(name)
        if found is None:
            found = _NAMED[name] = MemoryStore(name)
        return found


def store_of(url: str) -> MemoryStore | None:
    """The store a ``memory://name`` URL names in this process, if it exists."""
    name = parse_url(url)
    if name is None:
        return None
    with _REGISTRY_LOCK:
        return _NAMED.get(name) or _GENERATED.get(name)


def parse_url(url: str) -> str | None:
    """``memory://`` -> None (a fresh store); ``memory://name`` -> ``name``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "memory" or parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(
            "memory broker URL must look like memory:// (a fresh store) or memory://name "
            "(one store per name in this process)"
        )
    name = parts.netloc
    if not name:
        return None
    if not NAME_RE.match(name):
        raise ConfigurationError(
            f"memory broker store name {name!r} is not valid: write memory://name with 1-64 "
            "letters, digits, '.', '-' or '_'"
        )
    return name
