"""How sealed jobs reach the broker: concurrent enqueues on one event loop share one
write (group commit), and a write rides out a brief broker outage with jittered retries.

The producer path (:mod:`vaultq.enqueue`) seals and checks; this module only writes. A
retried write can never make a second job: the job ids are fixed before the first try
and the broker skips an envelope it already holds.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from vaultq.brokers.base import Broker, EnqueueItem
from vaultq.errors import BrokerUnavailable

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "Backoff",
    "Batch",
    "Coalescer",
    "coalescer_for",
    "retrying",
    "retrying_sync",
    "write_with_retry",
]

log = logging.getLogger("vaultq")

T = TypeVar("T")

RETRY_FIRST_PAUSE = 0.05
RETRY_MAX_PAUSE = 0.5


async def write_with_retry(
    app: App, broker: Broker, items: list[EnqueueItem], *, unique_ttl: float | None = None
) -> bool:
    """``broker.enqueue`` that rides out a blip (see :func:`retrying`). With
    ``unique_ttl``, ``broker.enqueue_unique`` of the one item instead: False when its id
    exists."""
    if unique_ttl is None:
        # Safe to send again: the broker skips a job whose same sealed bytes it already
        # took (a write that landed although its reply was lost).
        coalescer = coalescer_for(broker)

        async def write() -> bool:
            await coalescer.enqueue(items)
            return True

        return await retrying(app, write)
    # Idempotent too: the same envelope written again reports success.
    return await retrying(app, lambda: broker.enqueue_unique(items[0], ttl=unique_ttl))


class Batch:
    __slots__ = ("done", "failed", "items")

    def __init__(self) -> None:
        self.items: list[EnqueueItem] = []
        self.done = anyio.Event()
        self.failed = False


class Coalescer:
    """Group commit for concurrent ``enqueue`` calls on one broker connection.

    A write starts at once when none is in flight (a lone caller waits for nothing);
    calls made while one is in flight join the next batch, which goes out as one
    ``broker.enqueue`` (one pipeline) as soon as the in-flight write returns. When a
    batch write fails, every caller in it writes its own jobs again alone, so each sees
    its own outcome and error (and ``retrying`` its own retries); writing the same
    sealed bytes twice is a no-op in every broker, so a batch that landed although its
    reply was lost creates no second job."""

    __slots__ = ("broker", "busy", "free", "next")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.busy = False
        self.next: Batch | None = None
        self.free = anyio.Event()

    async def enqueue(self, items: list[EnqueueItem]) -> None:
        if not self.busy:
            self.busy = True
            try:
                await self.broker.enqueue(items)
            finally:
                self._release()
            return
        batch = self.next
        if batch is not None:
            batch.items.extend(items)
            await batch.done.wait()
            if batch.failed:
                await self.broker.enqueue(items)
            return
        batch = self.next = Batch()
        batch.items.extend(items)
        try:
            await self.free.wait()  # _release hands the connection to this batch
        except BaseException:
            # Cancelled before its turn: the others write alone; a turn that was handed
            # over already is passed on.
            batch.failed = True
            batch.done.set()
            if self.next is batch:
                self.next = None
            else:
                self._release()
            raise
        try:
            await self.broker.enqueue(batch.items)
        except BaseException:
            batch.failed = True
            raise
        finally:
            batch.done.set()
            self._release()

    def _release(self) -> None:
        if self.next is not None:
            # Handed straight to the waiting batch (busy stays set), so a new lone call
            # cannot overtake jobs that were enqueued before it.
            self.next = None
            free, self.free = self.free, anyio.Event()
            free.set()
        else:
            self.busy = False


_COALESCERS: weakref.WeakKeyDictionary[Broker, Coalescer] = weakref.WeakKeyDictionary()


def coalescer_for(broker: Broker) -> Coalescer:
    # Per broker object: App.broker() gives each event loop its own, so a coalescer's
    # events never cross loops.
    found = _COALESCERS.get(broker)
    if found is None:
        found = _COALESCERS[broker] = Coalescer(broker)
    return found


class Backoff:
    """The retry schedule of one write: full-jitter backoff from ``RETRY_FIRST_PAUSE``
    up to ``RETRY_MAX_PAUSE`` until ``app.enqueue_retry`` seconds have passed. Shared by
    the async (:func:`retrying`) and the sync (:func:`retrying_sync`) writers."""

    __slots__ = ("deadline", "pause", "retry", "tries")

    def __init__(self, app: App, started: float) -> None:
        self.retry = app.enqueue_retry
        self.deadline = started + self.retry
        self.pause = RETRY_FIRST_PAUSE
        self.tries = 1

    def wait(self, exc: BrokerUnavailable) -> float:
        """Seconds to wait before the next try after ``exc``; raises when out of time."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            if self.tries > 1:
                raise BrokerUnavailable(
                    f"{exc} (gave up after {self.tries} tries in {self.retry:g} s; "
                    "raise App(enqueue_retry=...) to wait longer)"
                ) from exc
            raise exc
        # Jitter spreads producers that all lost the broker at once; it protects
        # nothing, so a plain PRNG is right here.
        wait = min(left, random.uniform(self.pause / 2, self.pause))  # nosec B311
        log.info("enqueue: broker unavailable (%s); retrying in %.2f s", exc, wait)
        self.pause = min(self.pause * 2, RETRY_MAX_PAUSE)
        self.tries += 1
        return wait

    def done(self) -> None:
        if self.tries > 1:
            log.info("enqueue succeeded after %d tries", self.tries)


async def retrying(app: App, write: Callable[[], Awaitable[T]]) -> T:
    """``write()``, retried on ``BrokerUnavailable`` with full-jitter backoff until
    ``app.enqueue_retry`` seconds have passed, then the error is raised."""
    started = time.monotonic()
    try:
        return await write()  # the common case: no Backoff made
    except BrokerUnavailable as exc:
        backoff = Backoff(app, started)
        await anyio.sleep(backoff.wait(exc))
    while True:
        try:
            written = await write()
        except BrokerUnavailable as exc:
            await anyio.sleep(backoff.wait(exc))
            continue
        backoff.done()
        return written


def retrying_sync(app: App, write: Callable[[], T]) -> T:
    """:func:`retrying` for the synchronous writers (the calling thread sleeps)."""
    started = time.monotonic()
    try:
        return write()  # the common case: no Backoff made
    except BrokerUnavailable as exc:
        backoff = Backoff(app, started)
        time.sleep(backoff.wait(exc))
    while True:
        try:
            written = write()
        except BrokerUnavailable as exc:
            time.sleep(backoff.wait(exc))
            continue
        backoff.done()
        return written
