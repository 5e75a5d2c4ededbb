"""The broker protocol: the few async operations producers and workers need.

A broker stores opaque, already sealed envelope bytes and sealed result bytes; it
never sees plaintext and never decides whether a job may run. Its job is delivery:
at-least-once with leases, delayed delivery, retries, dead letters, results with a
TTL, a memory of finished job ids (for replay rejection), cancellation markers, and
statistics.

Semantics every implementation keeps (the conformance suite in
``tests/test_broker_contract.py`` checks each one against every broker):

* **Queues and namespaces.** A broker is created for one namespace (the app name);
  all its keys/rows are scoped by namespace and queue.
* **Enqueue.** ``enqueue`` makes a job deliverable at once, or at ``not_before`` (a
  Unix time in seconds) when given. Enqueue never drops or trims existing jobs. It
  may skip an item whose job id *and* envelope bytes it wrote moments before: that is a
  producer retrying a write whose reply it lost, not a new job (Redis: a 15 s window).
* **Fetch and leases.** ``fetch`` returns at most ``count`` deliveries, leased to
  ``consumer`` for ``lease`` seconds. A delivery whose lease runs out without being
  settled or extended (its worker died) is delivered again to any consumer, with
  ``redelivered=True``. Fetch also promotes due delayed jobs before reading, and
  blocks up to ``block`` seconds when nothing is ready (not a busy poll).
* **One run per job id at a time.** Fetch claims the *job id* together with the lease.
  An entry whose job id is already claimed by a live lease (a duplicate written
  into the queue while the original runs) is not returned; it stays pending and is
  looked at again after the lease.
* **Flags.** Each delivery says whether its job id is remembered as finished
  (``completed``) and whether a cancel was requested (``cancel_requested``); the
  worker decides what to do with them.
* **Fencing.** A delivery's ``tag`` is its fencing token: ``extend`` renews only
  deliveries whose tag still holds a live job-id claim and reports the others as lost
  (a lapsed lease is never taken back, even when nobody took the job over), and a
  settlement whose tag no longer holds the claim changes nothing. Lease time is measured
  on the broker's clock (Redis key expiry and PEL idle time; SQLite: the host's clock).
* **Enqueue unless it exists.** ``enqueue_unique`` writes one job only when its id is
  not pending, delayed (including a retry in backoff), running or remembered as finished
  (a result or a dead letter with memory): one atomic check-and-write; it returns False
  and writes nothing otherwise. Of any number of producers racing with one id, exactly
  one wins. It is the operation for custom job ids, periodic jobs (the job id derived
  from the schedule and the tick, so replicas elect one enqueue per tick) and unique
  jobs (the job id derived from the unique key). "Pending" means written by
  ``enqueue_unique``: an id written by plain ``enqueue`` is seen once it runs or
  finishes, but Redis does not look for it among waiting entries (that would be a scan).
* **Ticks of schedules** (:class:`TickStore`, optional). A schedule's *mark* is the newest
  tick claimed or passed over; it only moves forward. ``claim_tick`` is one atomic step:
  when the mark is below the tick it moves the mark to the tick and enqueues the item
  unless its job id exists (as ``enqueue_unique``); otherwise it changes nothing. So any
  number of schedulers enqueue each tick at most once, and a crash can never separate the
  mark from the job.
* **Duplicates.** An entry whose job id is claimed by a live lease of *another* entry
  (a duplicate written into the queue while the original runs) is not returned: it is
  removed and counted under ``duplicate`` in :meth:`Broker.counters`, in the same pass,
  so any number of them cannot slow down recovery.
* **Priorities** (brokers declaring ``capabilities.priorities``). ``EnqueueItem.priority``
  is -1, 0 or 1; a fetch takes the ready entries of each queue in the order
  :func:`vaultq.priority.fetch_plan` gives (highest level first, oldest first within a
  level, every tenth delivering fetch one entry of a lower level first), counting its
  fetches per broker object (:class:`vaultq.priority.FetchRotation`). An entry keeps its
  level through retries, releases, lease reclaims and ``retry_dead``.
* **Oversized entries.** When ``fetch`` is given ``max_size``, an entry whose envelope
  is larger is never returned (nor read into the worker): the broker dead-letters it
  as a stub (reason ``rejected:unauthenticated``, its size, no envelope).
* **Settle.** Each :data:`Settlement` is applied atomically (one Lua script, or one
  SQLite transaction): the result write, the finished-id memory and the ack/retry/
  dead-letter happen together or not at all, so a crash never leaves a finished
  job deliverable. ``settle`` accepts a batch so the worker can pipeline.
  Settling releases the job-id claim.
* **Outcomes are write-once.** A result is stored only when none is stored for that
  job id and the id is not remembered as finished: a later settlement (a copy
  re-inserted after the job's expiry, a stale settle) never replaces it. The finished-id
  memory lasts at least as long as the result it guards.
* **Dead letters are bounded**: at most ``dead_letter_max`` per queue (oldest dropped
  first) and none older than ``dead_letter_age`` seconds. ``Bury(keep_envelope=False)``
  (and every envelope larger than the fetch size limit) stores a stub without the
  envelope. :class:`Drop` removes an entry with only a counter.
* **Results** are sealed bytes stored under the job id with a TTL. ``wait_result``
  blocks (a blocking read, not a poll) until the result exists or the timeout passes.
* **Finished-id memory.** ``remember_until`` (Unix seconds) says how long a finished id
  must be remembered; a broker may keep it longer (rounding up to the hour) but
  never shorter.
* **Tombstones** (:class:`Tombstones`, optional). ``tombstone`` finishes a job id that
  was never written: one atomic step that, when the id does not exist (as
  ``enqueue_unique`` sees it), stores a sealed outcome under it and remembers it as
  finished, so every later ``enqueue_unique`` of the id is refused. Of a tombstone and an
  ``enqueue_unique`` racing for one id, exactly one wins (workflow cancellation).
* **Cancellation.** ``cancel`` leaves a marker (kept at least ``ttl`` seconds) that
  fetch reports as ``cancel_requested`` and ``cancelled`` reports for running jobs.

Times are Unix seconds as ``float`` throughout. Broker exceptions are mapped to
:class:`vaultq.errors.BrokerError` / :class:`~vaultq.errors.BrokerUnavailable` at
this boundary.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

__all__ = [
    "JOB_INFO_DEAD_SCAN",
    "RETRYABLE_REASONS",
    "Ack",
    "Broker",
    "BrokerCapabilities",
    "Bury",
    "CancelState",
    "DeadLetter",
    "Delivery",
    "Drop",
    "EnqueueItem",
    "JobInfo",
    "Limits",
    "QueueStats",
    "QueuedEntry",
    "Release",
    "Retry",
    "ScheduleMark",
    "Settlement",
    "TickStore",
    "Tombstones",
    "UniqueKeys",
    "entry_state",
]


class BrokerCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a broker is, declared instead of guessed from its type or attributes: the
    app and ``vaultq check`` ask these questions, whatever the broker."""

    shared: bool
    """Other hosts can reach the store (Redis): producers and workers must then share
    explicit keys (the app refuses to generate a key file), and ``vaultq check
    --deploy`` does not warn that the broker serves one host. False for an embedded
    store (SQLite) only this host's processes can open."""
    local_path: str | None = None
    """Absolute path of the file holding the store on this host, when there is one (the
    SQLite database; None for ``:memory:`` and for network brokers). An app without
    keys on a broker that is not shared generates its key file beside it (``x.db`` ->
    ``x.keys``), else in the working directory."""
    durable: bool = True
    """Jobs and results outlive the process that wrote them. False for the memory
    broker: nothing on it outlives the process, so an app without keys generates a
    keyring in memory instead of writing a key file."""
    priorities: bool = False
    """The broker honours :attr:`EnqueueItem.priority` (``vaultq/priority.py``): it fetches
    ready jobs of a queue highest level first, FIFO within a level, with the
    anti-starvation rule of :func:`vaultq.priority.fetch_plan`. False (the default for a
    broker that does not say): the app refuses ``priority=`` other than normal with an
    error instead of letting the broker ignore it."""


class Delivery(msgspec.Struct, frozen=True):
    """One leased delivery of a job to a worker."""

    queue: str
    job_id: str
    """The id the broker stored beside the envelope. Unauthenticated: the worker checks it
    against the sealed header."""
    envelope: bytes
    attempt: int
    """1 on the first delivery; ``Retry`` increments it. Redelivery after a crash does not."""
    tag: str
    """The broker's handle for this delivery (stream entry id, row id)."""
    redelivered: bool = False
    completed: bool = False
    cancel_requested: bool = False
    enqueued_at: float = 0.0
    leased_at: float = 0.0
    """``time.monotonic()`` in the fetching process when the request that took the lease
    was sent (0: unknown). The broker started the lease no earlier, so the lease is
    proven until ``leased_at + lease``: the worker's fence counts from here."""


class EnqueueItem(msgspec.Struct, frozen=True):
    queue: str
    job_id: str
    envelope: bytes
    not_before: float | None = None
    priority: int = 0
    """The job's level within its queue: -1 low, 0 normal, 1 high (``vaultq.Priority``).
    Routing data beside the sealed envelope, kept across retries, releases and lease
    reclaims. Only a broker whose capabilities say ``priorities`` is given another level
    than 0."""


class Ack(msgspec.Struct, frozen=True, tag="ack"):
    """The attempt finished (succeeded, or ended for good without a dead letter)."""

    delivery: Delivery
    result: bytes | None
    result_ttl: float
    remember_until: float


class Retry(msgspec.Struct, frozen=True, tag="retry"):
    """Deliver the job again at ``not_before`` with ``attempt + 1``."""

    delivery: Delivery
    not_before: float


class Release(msgspec.Struct, frozen=True, tag="release"):
    """Hand the job back unchanged (worker shutdown): same attempt, deliverable at
    ``not_before``. Not a retry and not a failure."""

    delivery: Delivery
    not_before: float


class Bury(msgspec.Struct, frozen=True, tag="bury"):
    """Dead-letter the job: never delivered again.

    ``reason`` is a short code (``failed``, ``denied``, ``rejected:bad_signature``,
    ``expired``, ``cancelled``, ``timed_out``, ``replayed``...), ``detail`` a safe
    one-line message (never payload values). ``result`` (sealed outcome) is written when
    given. ``remember_until`` of ``None`` skips the finished-id memory (used when the
    envelope could not be authenticated, so its id means nothing).
    """

    delivery: Delivery
    reason: str
    detail: str
    result: bytes | None
    result_ttl: float
    remember_until: float | None
    keep_envelope: bool = True
    """False: the dead letter is a stub (ids, reason, size) without the envelope; used
    for entries that did not authenticate, so junk is never stored twice."""


class Drop(msgspec.Struct, frozen=True, tag="drop"):
    """Remove the entry and count it under ``reason`` (``replayed``, ``finished``...):
    no dead letter, no result, no finished-id memory. For copies of jobs that already
    ran, which must neither run nor cost storage."""

    delivery: Delivery
    reason: str


Settlement = Ack | Retry | Release | Bury | Drop


class DeadLetter(msgspec.Struct, frozen=True):
    queue: str
    job_id: str
    reason: str
    detail: str
    attempt: int
    at: float
    tag: str
    size: int = 0
    """Size of the envelope in bytes (kept or not)."""
    stub: bool = False
    """True when the envelope was not kept (unauthenticated or oversized entries)."""


class QueuedEntry(msgspec.Struct, frozen=True):
    """A job still in a queue, as stored: its envelope is unauthenticated until opened."""

    queue: str
    job_id: str
    envelope: bytes


class QueueStats(msgspec.Struct, frozen=True):
    queue: str
    ready: int
    """Deliverable now and not leased."""
    delayed: int
    """Waiting for their not-before time (includes retries in backoff)."""
    running: int
    """Leased to a consumer and not settled."""
    dead: int


class JobInfo(msgspec.Struct, frozen=True):
    """Where one job id is in one queue, as read by :meth:`Broker.job_info` (operators'
    tools: ``vaultq job``, ``vaultq cancel``). Every field is unauthenticated broker
    data: the caller opens ``envelope`` before trusting what it says."""

    queue: str
    job_id: str
    state: str
    """``queued`` (deliverable now), ``delayed`` (waiting for ``not_before``: a delay or a
    retry's backoff), ``running`` (a live job-id claim) or ``absent`` (not in the queue)."""
    attempt: int = 0
    enqueued_at: float = 0.0
    not_before: float = 0.0
    tag: str = ""
    """The broker's handle of the waiting entry, for :meth:`Broker.cancel_queued`."""
    envelope: bytes = b""
    cancel_requested: bool = False
    finished: bool = False
    """The id is remembered as finished (replay memory)."""
    dead: DeadLetter | None = None
    """The newest dead letter of this id among the newest ``JOB_INFO_DEAD_SCAN`` ones."""


def entry_state(running: bool, not_before: float, now: float) -> str:
    """:attr:`JobInfo.state` of a waiting entry: ``running`` (claimed or leased),
    ``delayed`` (its not-before time is ahead) or ``queued``."""
    if running:
        return "running"
    return "delayed" if not_before > now else "queued"


JOB_INFO_DEAD_SCAN = 10_000
"""How many of the newest dead letters ``job_info`` looks through for the job's id."""

RETRYABLE_REASONS = frozenset({"failed", "timed_out", "internal_error"})
"""Dead-letter reasons ``vaultq dead retry`` may re-enqueue: the job ran (or vaultq
failed) and ended for good. REJECTED, DENIED, EXPIRED, CANCELLED and replayed entries
are refused: re-running them would bypass the check that stopped them."""


class CancelState(enum.StrEnum):
    REQUESTED = "requested"
    """A marker is set: a queued job will not start, a running one is cancelled."""
    FINISHED = "finished"
    """The job already finished; nothing was changed."""


@runtime_checkable
class Broker(Protocol):
    """What vaultq needs from a broker. See the module docstring for the semantics."""

    @property
    def url(self) -> str:
        """The broker URL with any password masked; safe to log."""
        ...

    @property
    def namespace(self) -> str: ...

    @property
    def capabilities(self) -> BrokerCapabilities:
        """What this broker is (shared across hosts, its file on this host): the app and
        the checks read this, never the broker's type or private attributes."""
        ...

    def clone(self) -> Broker:
        """A new, unconnected broker with the same settings (one per event loop)."""
        ...

    async def connect(self) -> None:
        """Open connections/schema. Idempotent. Raises BrokerUnavailable."""
        ...

    async def close(self) -> None: ...

    async def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        """Enqueue a batch (pipelined); all of it or an exception."""
        ...

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        """Enqueue ``item`` unless its job id is pending, delayed, running or remembered
        as finished; atomic. True when written (also when this very envelope was written
        before: a retry after a lost reply), False when the id exists. ``ttl``: seconds
        the id stays reserved at least (the envelope's validity), so a copy cannot slip
        in meanwhile. Periodic and unique jobs call this with a derived job id; the name
        and semantics are stable."""
        ...

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
        """Up to ``count`` leased deliveries from ``queues`` (earlier queues first).
        Entries whose envelope exceeds ``max_size`` bytes are dead-lettered as stubs."""
        ...

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        """Push the lease (and the job-id claim) of running deliveries ``lease`` seconds out
        (on the broker's clock). Returns the tags of deliveries whose lease is lost: they
        must not run on, nor settle."""
        ...

    async def time(self) -> float:
        """The broker's clock (Unix seconds): Redis ``TIME``; SQLite: this host's clock.
        Lease expiry and delayed jobs are measured on it."""
        ...

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        """Apply each settlement atomically; the batch may be pipelined."""
        ...

    async def get_result(self, queue: str, job_id: str) -> bytes | None: ...

    async def wait_result(self, queue: str, job_id: str, timeout: float) -> bytes | None:
        """Block until the result exists (return it) or ``timeout`` passes (return None)."""
        ...

    async def is_running(self, queue: str, job_id: str) -> bool:
        """True while some consumer holds the job-id claim."""
        ...

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState: ...

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` have a cancel marker (polled by workers for running jobs)."""
        ...

    async def stats(self, queue: str) -> QueueStats: ...

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        ...

    async def purge_dead(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        ...

    # -- operator tools (read-mostly; O(queue length) on Redis, not for hot paths) --------

    async def job_info(self, queue: str, job_id: str) -> JobInfo:
        """Where ``job_id`` is in ``queue`` (state ``absent`` when it is not there)."""
        ...

    async def cancel_queued(
        self,
        info: JobInfo,
        *,
        result: bytes | None,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        """Atomically dead-letter the waiting entry ``info`` names (reason ``cancelled``),
        store ``result`` and remember the id as finished -- unless a worker holds the job
        id by now (then False, and the cancel marker stops it instead)."""
        ...

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        """Atomically move the dead letter ``tag`` back into ``queue`` as a fresh first
        attempt with its sealed envelope unchanged, forgetting the id's finished memory,
        stored result and cancel marker. Only reasons in ``RETRYABLE_REASONS`` move; the
        moved letter is returned, None when it is gone or its reason is not retryable."""
        ...

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        """Up to ``limit`` entries still in ``queue`` (ready, delayed or leased), oldest
        first, without leasing or changing them: for inspection (``vaultq check``)."""
        ...

    async def counters(self, queue: str) -> dict[str, int]:
        """Entries removed without a dead letter, by reason (``duplicate``, ``replayed``,
        ``finished``...): garbage is counted, not stored."""
        ...


class ScheduleMark(msgspec.Struct, frozen=True):
    """Where one schedule stands in one queue (``vaultq status``)."""

    name: str
    mark: float
    """The newest tick claimed or passed over (Unix seconds): ticks at or before it never fire."""
    fired: float | None = None
    """The newest tick that enqueued a job (None: none yet)."""


@runtime_checkable
class TickStore(Protocol):
    """The schedule operations a broker offers when it can run periodic jobs (both built-in
    brokers do). Marks live beside the queue's keys (one Redis Cluster slot)."""

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        """Atomically: when ``schedule``'s mark in ``item.queue`` is below ``tick``, move it
        to ``tick`` and enqueue ``item`` unless its job id exists (``ttl`` as in
        ``enqueue_unique``). True only when this call wrote the job."""
        ...

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        """Move ``schedule``'s mark forward to ``tick`` (never back) without enqueuing:
        missed ticks passed over. ``only_if_absent``: set it only when the schedule has no
        mark yet (its first start). Returns the mark now stored."""
        ...

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        """Every schedule's mark in ``queue``, by name."""
        ...


@runtime_checkable
class UniqueKeys(Protocol):
    """Unique jobs (``enqueue(unique_key=...)``): the broker operation behind them, offered
    by the built-in brokers. Locks live beside the queue's keys (one Redis Cluster slot)."""

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        """Atomically: when a live job holds ``key`` in ``item.queue`` (its id is queued,
        delayed or running, and the lock is younger than ``key_ttl`` seconds), write nothing
        and return that job's id; otherwise write ``item`` unless its own id exists (as
        ``enqueue_unique`` with ``ttl``), lock ``key`` to it for ``key_ttl`` seconds and
        return ``item.job_id``. Returns '' when ``item.job_id`` itself exists already.
        A lock counts only while its job is live: settling the job frees the key."""
        ...


@runtime_checkable
class Limits(Protocol):
    """Concurrency and rate limits of tasks across workers (``vaultq/runtime/limits.py``),
    offered by the built-in brokers. State lives beside the queue's keys."""

    async def check_limits(
        self,
        queue: str,
        job_id: str,
        *,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        keep: float,
    ) -> float:
        """One atomic check before ``job_id`` starts. ``concurrency=(key, n)``: take one of
        ``n`` slots of ``key`` (a slot counts while its job's claim lives; a job holding
        one keeps it). ``rate=(key, interval)``: GCRA, one start per ``interval`` seconds; a
        job that must wait reserves its turn and starts at once when it comes back then.
        Returns 0 (start), -1 (every slot held) or the seconds until its turn (the slot,
        if taken, is given back). ``keep``: seconds the state outlives its last use."""
        ...


@runtime_checkable
class Tombstones(Protocol):
    """Finishing a job id before it is written: what ``WorkflowHandle.cancel()`` needs so
    that a step finishing at the same moment cannot start the next one (offered by the
    built-in brokers). State lives beside the queue's keys (one Redis Cluster slot)."""

    async def tombstone(
        self,
        queue: str,
        job_id: str,
        *,
        result: bytes,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        """Atomically: when ``job_id`` is not pending, delayed, running, reserved by
        ``enqueue_unique``, stored as a result nor remembered as finished in ``queue``,
        store ``result`` (a sealed outcome) under it for ``result_ttl`` seconds, remember
        it as finished until ``remember_until`` (Unix seconds) and return True: from then
        on ``enqueue_unique`` of the id returns False. Otherwise change nothing and
        return False (the id exists: cancel it as a job instead)."""
        ...
