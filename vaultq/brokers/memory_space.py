"""The records of ``memory://`` brokers and one namespace's state (:class:`Space`).

``vaultq/brokers/memory_store.py`` holds a :class:`Space` per namespace behind the
store's lock; ``vaultq/brokers/memory.py`` implements the broker protocol on it. Every
method here is called with that lock held: each one is a step of one critical section.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

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
    entry_state,
)
from vaultq.errors import BrokerError

__all__ = [
    "MAX_ID",
    "UNAUTHENTICATED",
    "Claim",
    "DeadEntry",
    "Job",
    "Key",
    "Space",
]

UNAUTHENTICATED = "rejected:unauthenticated"
MAX_ID = 256
"""Longer (unauthenticated) job ids are never delivered: dead-lettered as a stub."""


@dataclass(slots=True)
class Job:
    seq: int
    queue: str
    job_id: str
    envelope: bytes
    not_before: float
    enqueued_at: float
    priority: int = 0
    """-1, 0 or 1 (``vaultq.Priority``): which of the queue's heaps the job waits in."""
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
    priority: int = 0
    """The level ``retry_dead`` puts the job back at."""


Key = tuple[str, str]
"""(queue, job id)."""


@dataclass(slots=True)
class Space:
    """Everything of one namespace."""

    jobs: dict[int, Job] = field(default_factory=dict)
    heaps: dict[tuple[str, int], list[tuple[float, int, int]]] = field(default_factory=dict)
    """Per (queue, priority level): (not_before, seq, version) of every job; stale entries
    are skipped."""
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
        heap = self.heaps.setdefault((job.queue, job.priority), [])
        heapq.heappush(heap, (job.not_before, job.seq, job.version))

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
        return msgspec.structs.replace(
            info,
            state=entry_state(claimed or leased, job.not_before, now),
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
            job.priority,
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
