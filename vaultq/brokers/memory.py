"""The in-memory broker (``memory://``): the whole broker contract in one process's memory.

For tests and single-process use. It is **not durable** (everything is gone when the
process exits) and **not shared across processes** (a worker started with
``vaultq worker`` in another process sees nothing): use ``sqlite:///`` for one host and
``redis://`` for several. It keeps every rule of ``vaultq/brokers/base.py`` -- leases,
fencing, reclaim after a lapsed lease, delays, retries, write-once outcomes, dead
letters, cancellation, ``enqueue_unique`` -- and passes the same conformance suite as
the Redis and SQLite brokers, so a test that passes on it exercises the real semantics.

``memory://`` gives a fresh store with a generated name (``broker.url`` shows it);
``memory://name`` names one store per process, so several ``App`` objects (a Django
settings app and a test's own) reach the same jobs. A store holds any number of
namespaces, like one Redis server.

The store is plain Python objects behind one ``threading.Lock``: clones of a broker (one
per event loop, e.g. ``App``'s sync facade thread) share it. Every operation is one
critical section, which is what makes each settlement atomic. Blocking reads
(``fetch(block=...)``, ``wait_result``) wake at once on a change made from the same
event loop and otherwise look again every few milliseconds.

For the test kit (:mod:`vaultq.testing`) the store can record every job enqueued
(:meth:`MemoryStore.start_recording`) and can run its clock ahead
(:meth:`MemoryStore.advance`), so delayed jobs and retries become due without sleeping.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import msgspec

from vaultq import config
from vaultq.brokers.base import (
    BrokerCapabilities,
    Delivery,
    EnqueueItem,
    ScheduleMark,
    Settlement,
)
from vaultq.brokers.chords import MemoryChords
from vaultq.brokers.memory_ops import POLL_MAX, POLL_MIN, MemoryOperatorTools
from vaultq.brokers.memory_space import MAX_ID, UNAUTHENTICATED, Job, Space
from vaultq.brokers.memory_store import (
    MemoryStore,
    RecordedEnqueue,
    parse_url,
    store_for,
    store_of,
)
from vaultq.brokers.memory_tombstones import MemoryTombstones
from vaultq.priority import FetchRotation, level_of

__all__ = ["MemoryBroker", "MemoryStore", "RecordedEnqueue", "store_of"]

logger = logging.getLogger("vaultq.brokers.memory")

MIN_LEASE = 0.001
SWEEP_INTERVAL = 30.0
"""Seconds between two deletes of expired results, ids, markers and claims (in fetch)."""


_CAPABILITIES = BrokerCapabilities(shared=False, durable=False, priorities=True)


class MemoryBroker(MemoryOperatorTools, MemoryChords, MemoryTombstones):
    """The in-memory broker: ``memory://`` (a fresh store) or ``memory://name`` (one
    store per name in this process). Not durable, not shared across processes: for
    tests and single-process use (see the module docstring).

    Raises ConfigurationError for a malformed URL.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        namespace: str,
        dead_letter_max: int = config.DEFAULT_DEAD_LETTER_MAX,
        dead_letter_age: float = config.DEFAULT_DEAD_LETTER_AGE,
        store: MemoryStore | None = None,
    ) -> None:
        self._store = store if store is not None else store_for(parse_url(url))
        self._namespace = namespace
        self._dead_max = max(1, int(dead_letter_max))
        self._dead_age = float(dead_letter_age)
        self._caps = (self._dead_max, self._dead_age)
        self._rotation = FetchRotation()

    def __repr__(self) -> str:
        return f"MemoryBroker(url={self.url!r}, namespace={self._namespace!r})"

    @property
    def url(self) -> str:
        """``memory://<store name>``: another App in this process reaches the same store
        with it."""
        return f"memory://{self._store.name}"

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def capabilities(self) -> BrokerCapabilities:
        return _CAPABILITIES

    @property
    def shared(self) -> bool:
        """``capabilities.shared`` (kept for callers of the old name)."""
        return False

    @property
    def store(self) -> MemoryStore:
        """The store behind this broker (test hooks: record, advance, clear)."""
        return self._store

    def clone(self) -> MemoryBroker:
        return MemoryBroker(
            namespace=self._namespace,
            dead_letter_max=self._dead_max,
            dead_letter_age=self._dead_age,
            store=self._store,
        )

    def next_due(self, queues: Sequence[str]) -> float | None:
        """When the earliest waiting (not leased) job of ``queues`` is due, on the store's
        clock; None when none waits. For the test kit's ``run_pending(delayed=True)``."""
        with self._store.lock:
            space = self._store.space(self._namespace)
            wanted = set(queues)
            times = [
                job.not_before
                for job in space.jobs.values()
                if job.queue in wanted and job.owner is None
            ]
        return min(times, default=None)

    async def connect(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close: the store lives on for the other brokers using it."""

    async def time(self) -> float:
        return self._store.now()

    # -- producer side ----------------------------------------------------------------

    async def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        if not items:
            return
        store = self._store
        with store.lock:
            now = store.now()
            space = store.space(self._namespace)
            for item in items:
                job = self._insert(space, item, now)
                store.record(
                    self._namespace, job, deferred=item.not_before is not None, unique=False
                )
            store.changed()
        await anyio.lowlevel.checkpoint()

    def _insert(self, space: Space, item: EnqueueItem, now: float) -> Job:
        job = Job(
            seq=self._store.next_seq(),
            queue=item.queue,
            job_id=item.job_id,
            envelope=bytes(item.envelope),
            not_before=now if item.not_before is None else item.not_before,
            enqueued_at=now,
            priority=level_of(item.priority),
        )
        space.add(job)
        return job

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        # The entries are the reservation, as in the SQLite broker: a queued, delayed or
        # running job keeps its entry until settled; then the finished-id memory (and the
        # result) take over.
        store = self._store
        with store.lock:
            now = store.now()
            space = store.space(self._namespace)
            key = (item.queue, item.job_id)
            existing = space.find(*key)
            if existing is not None:
                # This very envelope written before (a retry after a lost reply): no-op.
                written = existing.envelope == item.envelope
            elif space.live(space.finished, key, now) or space.result(key, now) is not None:
                written = False
            else:
                job = self._insert(space, item, now)
                store.record(
                    self._namespace, job, deferred=item.not_before is not None, unique=True
                )
                store.changed()
                written = True
        await anyio.lowlevel.checkpoint()
        return written

    # -- schedules (TickStore) ---------------------------------------------------------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        # One step under the store's lock: the mark moves with the job, as on the others.
        store = self._store
        with store.lock:
            now = store.now()
            space = store.space(self._namespace)
            written = space.move_mark(item, schedule, tick, now)
            if written:
                job = self._insert(space, item, now)
                store.record(self._namespace, job, deferred=False, unique=True)
                store.changed()
                space.schedules[(item.queue, schedule)][1] = tick
        await anyio.lowlevel.checkpoint()
        return written

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        store = self._store
        with store.lock:
            state = store.space(self._namespace).schedules.setdefault(
                (queue, schedule), [None, None]
            )
            mark = state[0]
            if mark is None or (not only_if_absent and mark < tick):
                state[0] = mark = tick
        await anyio.lowlevel.checkpoint()
        return mark

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        store = self._store
        with store.lock:
            now = store.now()
            space = store.space(self._namespace)
            holder = space.key_holder(item, key, now)
            if holder is None:
                job = self._insert(space, item, now)
                store.record(
                    self._namespace, job, deferred=item.not_before is not None, unique=True
                )
                store.changed()
                space.unique[(item.queue, key)] = (item.job_id, now + key_ttl)
                holder = item.job_id
        await anyio.lowlevel.checkpoint()
        return holder

    async def check_limits(
        self,
        queue: str,
        job_id: str,
        *,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        keep: float,
    ) -> float:
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            wait = space.check_limits(queue, job_id, concurrency, rate, store.now())
        await anyio.lowlevel.checkpoint()
        return wait

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        store = self._store
        with store.lock:
            found = [
                ScheduleMark(name=name, mark=state[0], fired=state[1])
                for (q, name), state in sorted(store.space(self._namespace).schedules.items())
                if q == queue and state[0] is not None
            ]
        await anyio.lowlevel.checkpoint()
        return found

    # -- worker side ------------------------------------------------------------------

    async def fetch(
        self,
        queues: Sequence[str],
        count: int,
        *,
        consumer: str,
        lease: float,
        block: float,
        max_size: int | None = None,
    ) -> list[Delivery]:
        if count <= 0 or not queues:
            await anyio.lowlevel.checkpoint()
            return []
        store = self._store
        deadline = anyio.current_time() + max(block, 0.0)
        pause = POLL_MIN
        while True:
            with store.lock:
                out, next_due = self._fetch_now(list(queues), count, consumer, lease, max_size or 0)
                event = None if out else store.waiter()
            if event is None:
                await anyio.lowlevel.checkpoint()
                return out
            try:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    await anyio.lowlevel.checkpoint()
                    return []
                wait = min(pause, remaining)
                if next_due is not None:
                    wait = min(wait, max(next_due - store.now(), POLL_MIN))
                with anyio.move_on_after(wait):
                    await event.wait()
            finally:
                with store.lock:
                    store.drop_waiter(event)
            pause = min(pause * 2, POLL_MAX)

    def _fetch_now(
        self, queues: list[str], count: int, consumer: str, lease: float, max_size: int
    ) -> tuple[list[Delivery], float | None]:
        store = self._store
        space = store.space(self._namespace)
        sent = time.monotonic()  # the leases below start later: a safe proof (leased_at)
        now = store.now()
        if now - space.last_sweep >= SWEEP_INTERVAL:
            space.sweep(now)
        lease_until = now + max(lease, MIN_LEASE)
        out: list[Delivery] = []
        next_due: float | None = None
        plan = self._rotation.plan(count)
        for queue in queues:
            for level, most in plan:
                heap = space.heaps.get((queue, level), [])
                took = 0
                while heap and len(out) < count and took < most:
                    at, seq, version = heap[0]
                    job = space.jobs.get(seq)
                    if job is None or job.version != version:
                        heapq.heappop(heap)  # settled or moved since: a stale entry
                        continue
                    if at > now:
                        break
                    heapq.heappop(heap)
                    delivery = self._lease(space, job, consumer, now, lease_until, max_size)
                    if delivery is not None:
                        out.append(msgspec.structs.replace(delivery, leased_at=sent))
                        took += 1
                if heap and (next_due is None or heap[0][0] < next_due):
                    next_due = heap[0][0]
        self._rotation.delivered(len(out))
        return out, next_due

    def _lease(
        self, space: Space, job: Job, consumer: str, now: float, until: float, max_size: int
    ) -> Delivery | None:
        if (max_size and len(job.envelope) > max_size) or len(job.job_id) > MAX_ID:
            # Never handed to the worker: a stub dead letter, never a second copy.
            space.remove(job)
            self._bury(
                space, job, UNAUTHENTICATED, "envelope rejected before authentication", now, None
            )
            return None
        return space.lease(job, consumer, now, until)

    def _bury(
        self, space: Space, job: Job, reason: str, detail: str, now: float, envelope: bytes | None
    ) -> None:
        space.bury(self._store.next_seq(), job, reason, detail, now, envelope, self._caps)

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        lost: set[str] = set()
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            until = now + max(lease, MIN_LEASE)
            for d in deliveries:
                # Only the delivery that still holds a live lease may push it out (the tag
                # is the fencing token); a lapsed lease is never taken back.
                job = space.job_of(d)
                if job is None or not space.holds_lease(d, now):
                    lost.add(d.tag)
                    continue
                job.owner, job.lease_until, job.not_before = consumer, until, until
                space.push(job)
                space.claims[(d.queue, d.job_id)].until = until
        await anyio.lowlevel.checkpoint()
        return lost

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        refused: list[str] = []
        store = self._store
        with store.lock:
            space = store.space(self._namespace)
            now = store.now()
            for s in settlements:
                if not space.holds_lease(s.delivery, now):
                    refused.append(s.delivery.job_id)  # fenced: the lease is lost
                    continue
                space.settle(s, now, self._store.next_seq(), self._caps)
            store.changed()
        if refused:
            logger.warning(
                "%d settlement(s) refused: the delivery no longer holds its lease (job %s%s); "
                "the job will run again on another delivery",
                len(refused),
                refused[0],
                " ..." if len(refused) > 1 else "",
            )
        await anyio.lowlevel.checkpoint()
