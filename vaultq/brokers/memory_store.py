"""The storage behind ``memory://`` brokers: plain Python objects behind one lock.

``vaultq/brokers/memory.py`` implements the broker protocol on it; this module holds the
records (jobs, claims, dead letters), one :class:`Space` per namespace, the
:class:`MemoryStore` with its test hooks, and the process's registry of named stores.
Callers of the ``Space`` methods hold the store's lock.
"""

from __future__ import annotations

import heapq
import itertools
import re
import secrets
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import msgspec

from vaultq.brokers.base import (
    JOB_INFO_DEAD_SCAN,
    Bury,
    DeadLetter,
    Delivery,
    Drop,
    EnqueueItem,
    JobInfo,
    Release,
    Retry,
    Settlement,
)
from vaultq.errors import BrokerError, ConfigurationError

__all__ = [
    "MAX_ID",
    "NAME_RE",
    "UNAUTHENTICATED",
    "Claim",
    "DeadEntry",
    "Job",
    "Key",
    "MemoryStore",
    "RecordedEnqueue",
    "Space",
    "parse_url",
    "store_for",
    "store_of",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UNAUTHENTICATED = "rejected:unauthenticated"
MAX_ID = 256
"""Longer (unauthenticated) job ids are never delivered: dead-lettered as a stub."""


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


@dataclass(slots=True)
class Job:
    seq: int
    queue: str
    job_id: str
    envelope: bytes
    not_before: float
    enqueued_at: float
    attempt: int = 1
    owner: str | None = None
    lease_until: float | None = None
    deliveries: int = 0
    version: int = 0
    """Bumped whenever ``not_before`` changes: older heap entries are stale."""


@dataclass(slots=True)
class Claim:
    seq: int
    tag: str
    until: float


@dataclass(slots=True)
class DeadEntry:
    letter: DeadLetter
    envelope: bytes | None


Key = tuple[str, str]
"""(queue, job id)."""


@dataclass(slots=True)
class Space:
    """Everything of one namespace."""

    jobs: dict[int, Job] = field(default_factory=dict)
    heaps: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    """Per queue: (not_before, seq, version) of every job; stale entries are skipped."""
    claims: dict[Key, Claim] = field(default_factory=dict)
    results: dict[Key, tuple[bytes, float]] = field(default_factory=dict)
    finished: dict[Key, float] = field(default_factory=dict)
    cancels: dict[Key, float] = field(default_factory=dict)
    dead: dict[str, dict[int, DeadEntry]] = field(default_factory=dict)
    counters: dict[str, Counter[str]] = field(default_factory=dict)
    by_key: dict[Key, dict[int, None]] = field(default_factory=dict)
    """The entries of each (queue, job id), oldest first: ``find`` without a scan."""
    unique: dict[Key, tuple[str, float]] = field(default_factory=dict)
    """(queue, unique key) -> (job id holding it, until)."""
    slots: dict[Key, set[str]] = field(default_factory=dict)
    """(queue, concurrency key) -> job ids holding a slot (while their claim lives)."""
    rates: dict[Key, float] = field(default_factory=dict)
    """(queue, rate key) -> GCRA theoretical arrival time."""
    last_starts: dict[Key, float] = field(default_factory=dict)
    """(queue, rate key) -> the latest start (starts are one interval apart at least)."""
    turns: dict[Key, float] = field(default_factory=dict)
    """(queue, job id) -> the reserved start time of a job waiting for its turn."""
    schedules: dict[Key, list[float | None]] = field(default_factory=dict)
    """(queue, schedule name) -> [mark, newest fired tick] (periodic jobs)."""
    last_sweep: float = 0.0

    def add(self, job: Job) -> None:
        self.jobs[job.seq] = job
        self.by_key.setdefault((job.queue, job.job_id), {})[job.seq] = None
        self.push(job)

    def remove(self, job: Job) -> None:
        del self.jobs[job.seq]
        key = (job.queue, job.job_id)
        entries = self.by_key[key]
        del entries[job.seq]
        if not entries:
            del self.by_key[key]

    def sweep(self, now: float) -> None:
        """Delete what expired (results, finished ids, cancel markers, lapsed claims):
        lookups ignore it anyway, but a long-running process must not keep it."""
        for table in (self.finished, self.cancels):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        for key in [k for k, (_, until) in self.results.items() if until <= now]:
            del self.results[key]
        for key in [k for k, claim in self.claims.items() if claim.until <= now]:
            del self.claims[key]
        self.last_sweep = now

    def push(self, job: Job) -> None:
        job.version += 1
        heapq.heappush(self.heaps.setdefault(job.queue, []), (job.not_before, job.seq, job.version))

    def live(self, table: dict[Key, float], key: Key, now: float) -> bool:
        until = table.get(key)
        if until is None:
            return False
        if until <= now:
            del table[key]
            return False
        return True

    def result(self, key: Key, now: float) -> bytes | None:
        found = self.results.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self.results[key]
            return None
        return found[0]

    def live_claim(self, key: Key, now: float) -> Claim | None:
        claim = self.claims.get(key)
        if claim is not None and claim.until <= now:
            del self.claims[key]
            return None
        return claim

    def holds_lease(self, d: Delivery, now: float) -> bool:
        claim = self.live_claim((d.queue, d.job_id), now)
        return claim is not None and claim.tag == d.tag

    def move_mark(self, item: EnqueueItem, schedule: str, tick: float, now: float) -> bool:
        """``TickStore.claim_tick``'s verdict: move the schedule's mark to ``tick`` when it
        is below; True when, moreover, ``item``'s job id is free (write it)."""
        state = self.schedules.setdefault((item.queue, schedule), [None, None])
        if state[0] is not None and state[0] >= tick:
            return False
        state[0] = tick
        ids = (item.queue, item.job_id)
        return not (
            self.find(*ids) is not None
            or self.live(self.finished, ids, now)
            or self.result(ids, now) is not None
        )

    def key_holder(self, item: EnqueueItem, key: str, now: float) -> str | None:
        """``UniqueKeys.enqueue_keyed``'s verdict: the live job holding ``key``, '' when
        ``item``'s own id exists, None when ``item`` is to be written."""
        lock = self.unique.get((item.queue, key))
        live = lock is not None and lock[1] > now and lock[0] != item.job_id
        if live and lock is not None and self.find(item.queue, lock[0]) is not None:
            return lock[0]
        ids = (item.queue, item.job_id)
        existing = self.find(*ids)
        if existing is not None:
            return item.job_id if existing.envelope == item.envelope else ""
        if self.live(self.finished, ids, now) or self.result(ids, now) is not None:
            return ""
        return None

    def check_limits(
        self,
        queue: str,
        job_id: str,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        now: float,
    ) -> float:
        """``Limits.check_limits`` under the store's lock, by the rules of
        ``vaultq/brokers/lua/limit.lua``."""
        took = False
        held: set[str] = set()
        if concurrency is not None:
            held = self.slots.setdefault((queue, concurrency[0]), set())
            if job_id not in held:
                held -= {h for h in held if self.live_claim((queue, h), now) is None}
                if len(held) >= concurrency[1]:
                    return -1.0
                held.add(job_id)
                took = True
        if rate is None:
            return 0.0
        key, interval = (queue, rate[0]), rate[1]
        turn = self.turns.get((queue, job_id))
        if turn is not None:
            wait = turn - now
        else:
            tat = max(self.rates.get(key, 0.0), now)
            self.rates[key] = tat + interval
            wait = tat - now
        if wait <= 0:
            gap = self.last_starts.get(key, 0.0) + interval - now
            if gap <= 0:
                self.last_starts[key] = now
                self.turns.pop((queue, job_id), None)
                return 0.0
            wait = gap
        self.turns[(queue, job_id)] = now + wait
        if took:
            held.discard(job_id)
        return wait

    def find(self, queue: str, job_id: str) -> Job | None:
        """The oldest entry of ``job_id`` in ``queue``."""
        for seq in self.by_key.get((queue, job_id), ()):
            return self.jobs[seq]
        return None

    def job_info(self, queue: str, job_id: str, now: float) -> JobInfo:
        """Where ``job_id`` is in ``queue`` (``Broker.job_info``)."""
        key = (queue, job_id)
        claimed = self.live_claim(key, now) is not None
        newest = list(self.dead.get(queue, {}).values())[-JOB_INFO_DEAD_SCAN:]
        dead = next((d.letter for d in reversed(newest) if d.letter.job_id == job_id), None)
        info = JobInfo(
            queue=queue,
            job_id=job_id,
            state="running" if claimed else "absent",
            cancel_requested=self.live(self.cancels, key, now),
            finished=self.live(self.finished, key, now),
            dead=dead,
        )
        job = self.find(queue, job_id)
        if job is None:
            return info
        leased = job.owner is not None and (job.lease_until or 0.0) > now
        if claimed or leased:
            state = "running"
        elif job.not_before > now:
            state = "delayed"
        else:
            state = "queued"
        return msgspec.structs.replace(
            info,
            state=state,
            attempt=job.attempt,
            enqueued_at=job.enqueued_at,
            not_before=job.not_before,
            tag=str(job.seq),
            envelope=job.envelope,
        )

    def waiting(self, info: JobInfo, now: float) -> Job | None:
        """The entry ``info`` names, if it still waits (not leased, id not claimed)."""
        job = self.jobs.get(int(info.tag))
        if (
            job is None
            or job.queue != info.queue
            or job.job_id != info.job_id
            or self.live_claim((info.queue, info.job_id), now) is not None
            or (job.owner is not None and (job.lease_until or 0.0) > now)
        ):
            return None
        return job

    def lease(self, job: Job, consumer: str, now: float, until: float) -> Delivery | None:
        """Lease ``job`` to ``consumer`` until ``until`` with its job-id claim; None (the
        entry removed and counted) when another entry holds a live claim of the id."""
        key = (job.queue, job.job_id)
        claim = self.live_claim(key, now)
        if claim is not None and claim.seq != job.seq:
            # Another entry runs this job id: this one may never run beside it, and once
            # that one settled it would be a replay. Removed and counted, in this pass.
            self.remove(job)
            self.counters.setdefault(job.queue, Counter())["duplicate"] += 1
            return None
        redelivered = job.owner is not None  # the last lease ran out unsettled
        job.deliveries += 1
        job.owner = consumer
        job.lease_until = until
        job.not_before = until
        self.push(job)
        # The tag names this lease (entry and delivery number): a settle or extend from
        # an earlier delivery of the same entry is recognised as stale.
        tag = f"{job.seq}.{job.deliveries}"
        self.claims[key] = Claim(seq=job.seq, tag=tag, until=until)
        return Delivery(
            queue=job.queue,
            job_id=job.job_id,
            envelope=job.envelope,
            attempt=job.attempt,
            tag=tag,
            redelivered=redelivered,
            completed=self.live(self.finished, key, now),
            cancel_requested=self.live(self.cancels, key, now),
            enqueued_at=job.enqueued_at,
        )

    def bury(
        self,
        seq: int,
        job: Job,
        reason: str,
        detail: str,
        now: float,
        envelope: bytes | None,
        caps: tuple[int, float],
    ) -> None:
        """Dead-letter ``job`` under number ``seq`` (its tag), within the caps."""
        letters = self.dead.setdefault(job.queue, {})
        letters[seq] = DeadEntry(
            DeadLetter(
                queue=job.queue,
                job_id=job.job_id[:MAX_ID],
                reason=reason,
                detail=detail,
                attempt=job.attempt,
                at=now,
                tag=str(seq),
                size=len(job.envelope),
                stub=envelope is None,
            ),
            envelope,
        )
        self.trim_dead(letters, now, caps)

    def trim_dead(self, letters: dict[int, DeadEntry], now: float, caps: tuple[int, float]) -> None:
        # Oldest first (insertion order): the cap by count, then by age.
        most, age = caps
        while len(letters) > most:
            del letters[next(iter(letters))]
        for seq in [s for s, d in letters.items() if d.letter.at <= now - age]:
            del letters[seq]

    def job_of(self, d: Delivery) -> Job | None:
        """The entry ``d`` leased, if it is still on the delivery its tag names."""
        seq_text, _, number = d.tag.partition(".")
        try:
            seq, deliveries = int(seq_text), int(number)
        except ValueError:
            raise BrokerError(
                "delivery tag is not a memory broker tag; settle deliveries with the broker "
                "that fetched them"
            ) from None
        job = self.jobs.get(seq)
        if job is None or job.deliveries != deliveries or job.job_id != d.job_id:
            return None
        return job

    def settle(self, s: Settlement, now: float, seq: int, caps: tuple[int, float]) -> None:
        """Apply one settlement whose delivery holds its lease (checked by the caller);
        ``seq`` numbers the dead letter it may write."""
        d = s.delivery
        key = (d.queue, d.job_id)
        job = self.job_of(d)
        del self.claims[key]  # settle releases the job-id claim (held: checked above)
        if isinstance(s, Retry | Release):
            if job is not None:
                job.attempt = d.attempt + 1 if isinstance(s, Retry) else d.attempt
                job.not_before = s.not_before
                job.owner = job.lease_until = None
                self.push(job)
            return
        if job is not None:
            self.remove(job)
        if isinstance(s, Drop):
            if job is not None:
                self.counters.setdefault(d.queue, Counter())[s.reason] += 1
            return
        # Write-once: an id remembered as finished gets no second outcome (its result may
        # have expired), and a live result is never replaced.
        if (
            s.result is not None
            and not self.live(self.finished, key, now)
            and self.result(key, now) is None
        ):
            self.results[key] = (s.result, now + s.result_ttl)
        if s.remember_until is not None:
            # At least as long as the result lives, so the write-once check outlives it;
            # never shorter than a memory already there.
            until = max(s.remember_until, now + s.result_ttl, self.finished.get(key, 0.0))
            self.finished[key] = until
        if isinstance(s, Bury) and job is not None:
            # Only the settlement that removed the entry writes the dead letter.
            envelope = job.envelope if s.keep_envelope else None
            self.bury(seq, job, s.reason, s.detail, now, envelope, caps)


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
