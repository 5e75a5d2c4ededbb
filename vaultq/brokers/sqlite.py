"""The embedded broker: one SQLite file in WAL mode for the worker processes of one host.

Every operation runs in an anyio worker thread (the event loop never blocks) on the
instance's own ``sqlite3`` connection, one thread at a time. Every read-modify-write is
one ``BEGIN IMMEDIATE`` transaction: SQLite lets one writer in at a time across all
processes, so two workers can never lease the same row, and a settlement (result,
finished-id memory, ack/retry/dead letter) commits whole or not at all.

How the protocol maps onto rows (see ``docs/sqlite.md`` for the full schema):

* a job is a row of ``vaultq_jobs``; ``not_before`` is the time it may next be fetched.
  Fetch leases a row by setting ``lease_owner``/``lease_until`` and moving
  ``not_before`` to ``lease_until``, so "ready" is always just ``not_before <= now``
  (one index range) and an expired lease makes the row ready again (redelivered);
* the job-id claim is a row of ``vaultq_claims`` owned by the leased job row; a
  duplicate whose id is claimed by another live row is not returned, its
  ``not_before`` moves to the end of that claim, and it is looked at again then;
* delayed jobs and retries are rows with a future ``not_before``.

SQLite has no blocking read across processes. ``fetch(block=...)`` and ``wait_result``
therefore wake at once on changes made through the same broker instance (anyio events)
and otherwise poll with a gentle backoff from 2 ms to 100 ms, never past the next due delayed
job; ``wait_result`` skips the query while ``PRAGMA data_version`` says no other
connection committed anything. A waiting fetch also wakes at once on an enqueue made by
another process, through a Unix datagram socket beside the database
(``sqlite_wake.py``); polling stays underneath in case a wake-up is lost.

The code: this module (connection plumbing, enqueue, fetch, extend, settle, results),
``sqlite_rows.py`` (leasing, settling, dead letters, cleanup inside a transaction),
``sqlite_ops.py`` (job state, statistics, dead letters, operator tools),
``sqlite_schedules.py`` (periodic ticks, unique keys),
``sqlite_file.py`` (URL, file, schema migrations, errors), ``sqlite_sql.py`` (SQL) and
``sqlite_monitor.py`` (worker heartbeats and job events).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from vaultq import config
from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.base import (
    Ack,
    BrokerCapabilities,
    Bury,
    Delivery,
    EnqueueItem,
    Release,
    Retry,
    Settlement,
)
from vaultq.brokers.sqlite_chords import SqliteChords
from vaultq.brokers.sqlite_file import (
    MEMORY,
    immediate,
    lease_commit,
    map_error,
    migrate,
    parse_url,
    prepare_file,
)
from vaultq.brokers.sqlite_monitor import SqliteMonitoring
from vaultq.brokers.sqlite_ops import SqliteOperatorTools
from vaultq.brokers.sqlite_rows import (
    DeadLetters,
    cleanup,
    holds_lease,
    lease_row,
    next_due_at,
    parse_tag,
    quarantine,
    settle_one,
)
from vaultq.brokers.sqlite_schedules import SqliteSchedules
from vaultq.brokers.sqlite_sql import SCHEMA_VERSION
from vaultq.brokers.sqlite_wake import WakeChannel, WakeSender
from vaultq.brokers.sqlite_writes import SqliteSyncWriter, insert_jobs, insert_unique
from vaultq.errors import BrokerError
from vaultq.priority import LEVELS, FetchRotation

__all__ = ["SCHEMA_VERSION", "SqliteBroker"]

logger = logging.getLogger("vaultq.brokers.sqlite")

T = TypeVar("T")

CLEANUP_INTERVAL = 30.0
"""Seconds between opportunistic deletes of expired results, ids, claims and markers."""
POLL_MIN = 0.002
POLL_MAX = 0.1
POLL_GROWTH = 1.25
"""Slow growth: a job that finishes a few ms after the wait began is seen within ~1 ms."""
MIN_LEASE = 0.001


class _Database:
    """One sqlite3 connection and the lock that keeps it to one thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()


class _MemoryHolder:
    """The single connection a ``:memory:`` broker and its clones share (tests only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.db: _Database | None = None
        self.users = 0


class SqliteBroker(SqliteOperatorTools, SqliteSchedules, SqliteMonitoring, SqliteChords):
    """The embedded broker: ``sqlite:///relative/path.db``, ``sqlite:////abs/path.db``.

    ``sqlite:///:memory:`` keeps everything in one in-memory connection shared by the
    broker and its clones (tests only). Query options: ``synchronous=full|normal``
    (default ``full``) and ``busy_timeout=<seconds>`` (default 10).

    Raises ConfigurationError for a malformed URL.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        dead_letter_max: int = config.DEFAULT_DEAD_LETTER_MAX,
        dead_letter_age: float = config.DEFAULT_DEAD_LETTER_AGE,
    ) -> None:
        self._url = url
        self._namespace = namespace
        self._dead_max = max(1, int(dead_letter_max))
        self._dead_age = float(dead_letter_age)
        self._rotation = FetchRotation()
        self._path, self._synchronous, self._busy_timeout = parse_url(url)
        self._memory = _MemoryHolder() if self._path is None else None
        self._db: _Database | None = None
        self._state_lock = threading.Lock()
        self._last_cleanup = 0.0
        # Loop-bound helpers, rebuilt when the broker is first used in another event loop.
        self._loop_token: object | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._work_event: anyio.Event | None = None
        self._result_waiters: dict[tuple[str, str], list[anyio.Event]] = {}
        self._wake = WakeChannel(self._path)

    def __repr__(self) -> str:
        return f"SqliteBroker(url={self._url!r}, namespace={self._namespace!r})"

    @property
    def url(self) -> str:
        """The URL as given; it holds no secret."""
        return self._url

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def capabilities(self) -> BrokerCapabilities:
        path = None if self._path is None else str(self._path)
        return BrokerCapabilities(shared=False, local_path=path, priorities=True)

    @property
    def shared(self) -> bool:
        """``capabilities.shared`` (kept for callers of the old name)."""
        return False

    @property
    def path(self) -> Path | None:
        """Absolute path of the database file, or None for ``:memory:``."""
        return self._path

    def clone(self) -> SqliteBroker:
        twin = SqliteBroker(
            self._url,
            namespace=self._namespace,
            dead_letter_max=self._dead_max,
            dead_letter_age=self._dead_age,
        )
        # A memory database exists only inside its one connection: clones must share it.
        twin._memory = self._memory
        return twin

    # -- plumbing ---------------------------------------------------------------------

    def _loop_state(self) -> anyio.CapacityLimiter:
        token = anyio.lowlevel.current_token()
        if self._limiter is None or token != self._loop_token:
            self._loop_token = token
            self._limiter = anyio.CapacityLimiter(1)
            self._work_event = None
            self._result_waiters = {}
        return self._limiter

    async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the connection in a worker thread; map sqlite3 errors."""
        limiter = self._loop_state()

        def call() -> T:
            db = self._open_sync()
            with db.lock:
                try:
                    return fn(db.conn)
                except sqlite3.Error as exc:
                    raise map_error(op, exc) from exc

        # Not abandoned on cancel: a transaction that started is finished first, so a
        # cancelled caller never leaves a half-applied settlement behind.
        return await anyio.to_thread.run_sync(call, limiter=limiter)

    def _open_sync(self) -> _Database:
        with self._state_lock:
            if self._db is not None:
                return self._db
            if self._path is not None:
                self._db = _Database(self._connect_sync(str(self._path)))
            elif self._memory is not None:
                with self._memory.lock:
                    if self._memory.db is None:
                        self._memory.db = _Database(self._connect_sync(MEMORY))
                    self._memory.users += 1
                    self._db = self._memory.db
            else:  # pragma: no cover - the constructor sets one of the two
                raise BrokerError("SQLite broker has neither a path nor a memory database")
            return self._db

    def _connect_sync(self, target: str) -> sqlite3.Connection:
        if target != MEMORY:
            prepare_file(Path(target))
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by _Database.lock instead
            )
        except sqlite3.Error as exc:
            raise map_error("connect", exc) from exc
        try:
            if target != MEMORY:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    logger.warning(
                        "SQLite broker: journal_mode is %s, not wal, for %s; "
                        "concurrent workers will block each other",
                        mode,
                        target,
                    )
            # FULL by default: a power cut cannot lose a committed enqueue or ack.
            conn.execute(
                "PRAGMA synchronous=FULL"
                if self._synchronous == "full"
                else "PRAGMA synchronous=NORMAL"
            )
            migrate(conn)
            cleanup(conn, time.time(), self._dead_age)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise map_error("connect", exc) from exc
            raise
        self._last_cleanup = time.time()
        return conn

    def _maybe_cleanup(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_cleanup < CLEANUP_INTERVAL:
            return
        self._last_cleanup = now
        if cleanup(conn, now, self._dead_age):
            # A backlog remains: come back on the next fetch rather than in 30 s.
            self._last_cleanup = 0.0

    def _notify_work(self) -> None:
        if self._work_event is not None:
            self._work_event.set()
            self._work_event = None

    def _notify_enqueued(self) -> None:
        """A job was written: wake this instance's fetches, and other processes' too."""
        self._notify_work()
        self._wake.wake()

    def _notify_results(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            for event in self._result_waiters.pop(key, ()):
                event.set()

    # -- lifecycle --------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the file (mode 0600), open it, migrate the schema. Idempotent."""
        await self._run("connect", lambda conn: None)

    async def close(self) -> None:
        self._wake.close()
        db = self._db
        if db is None:
            return
        await anyio.to_thread.run_sync(self._close_sync, limiter=self._loop_state())

    def _close_sync(self) -> None:
        with self._state_lock:
            db, self._db = self._db, None
            if db is None:
                return
            if self._memory is not None:
                with self._memory.lock:
                    self._memory.users -= 1
                    if self._memory.users > 0:
                        return
                    self._memory.db = None
            with db.lock:
                db.conn.close()

    # -- producer side ----------------------------------------------------------------

    async def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        if not items:
            return
        ns = self._namespace
        await self._run("enqueue", lambda conn: insert_jobs(conn, ns, items))
        self._notify_enqueued()

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        ns = self._namespace
        written = await self._run("enqueue", lambda conn: insert_unique(conn, ns, item))
        if written:
            self._notify_enqueued()
        return written

    def sync_writer(self) -> SqliteSyncWriter | None:
        """The synchronous enqueue writer for ``enqueue_sync`` (None for ``:memory:``,
        whose one connection belongs to the broker)."""
        if self._path is None:
            return None
        return SqliteSyncWriter(
            self._namespace, partial(self._connect_sync, str(self._path)), WakeSender(self._path)
        )

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
            return []
        queues = list(queues)
        limit = max(0, int(max_size or 0))
        self._loop_state()  # before taking the event: it must belong to this loop
        self._wake.listen(self._notify_work)  # other processes' enqueues wake this wait
        deadline = anyio.current_time() + max(block, 0.0)
        delay = POLL_MIN
        while True:
            # Take the event before looking, so an enqueue in between is not missed.
            if self._work_event is None:
                self._work_event = anyio.Event()
            event = self._work_event
            deliveries, next_due = await self._run(
                "fetch", partial(self._fetch_sync, queues, count, consumer, lease, limit)
            )
            if deliveries:
                return deliveries
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return []
            pause = min(delay, remaining)
            if next_due is not None:
                pause = min(pause, max(next_due - time.time(), POLL_MIN / 10))
            with anyio.move_on_after(pause):
                await event.wait()
            delay = min(delay * POLL_GROWTH, POLL_MAX)

    def _fetch_sync(
        self,
        queues: list[str],
        count: int,
        consumer: str,
        lease: float,
        max_size: int,
        conn: sqlite3.Connection,
    ) -> tuple[list[Delivery], float | None]:
        ns = self._namespace
        now = time.time()
        self._maybe_cleanup(conn, now)
        # A plain read first: idle workers poll without taking the write lock.
        poison = any(conn.execute(sql.POISON_ROWS, (ns, q)).fetchone() for q in queues)
        next_due = next_due_at(conn, ns, queues)
        if not poison and (next_due is None or next_due > now):
            return [], next_due
        out: list[Delivery] = []
        dead = DeadLetters(conn, ns, self._dead_max, self._dead_age)
        sent = time.monotonic()  # the leases below start later: a safe proof (leased_at)
        with lease_commit(conn, self._synchronous), immediate(conn):
            now = time.time()
            lease_until = now + max(lease, MIN_LEASE)
            # The anti-starvation step of the plan (one job of a lower level first) is a
            # query of its own; the rest of the plan is the usual order: one query.
            plan = self._rotation.plan(count)
            boost = list(plan[: len(plan) - len(LEVELS)])
            for queue in queues:
                quarantine(conn, dead, queue, now)
                for level, most in [*boost, (None, count)]:
                    took = 0
                    while len(out) < count and took < most:
                        want = min(count - len(out), most - took)
                        if level is None:
                            params: tuple[object, ...] = (max_size, ns, queue, now, want)
                            batch = conn.execute(sql.SELECT_READY_ALL, params).fetchall()
                        else:
                            params = (max_size, ns, queue, now, want, int(level))
                            batch = conn.execute(sql.SELECT_READY, params).fetchall()
                        if not batch:
                            break
                        # Every row below leaves the ready range (leased, removed as a
                        # duplicate or dead-lettered as oversized), so this loop ends.
                        for row in batch:
                            delivery = lease_row(conn, dead, queue, row, consumer, now, lease_until)
                            if delivery is not None:
                                out.append(msgspec.structs.replace(delivery, leased_at=sent))
                                took += 1
            self._rotation.delivered(len(out))
            due_after = None if out else next_due_at(conn, ns, queues)
        return out, due_after

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        if not deliveries:
            return set()
        ns = self._namespace
        rows = [(parse_tag(d), d) for d in deliveries]

        def work(conn: sqlite3.Connection) -> set[str]:
            lost: set[str] = set()
            with immediate(conn):
                now = time.time()
                until = now + max(lease, MIN_LEASE)
                for (row_id, seq), d in rows:
                    # Only the delivery that still holds a live lease may push it out (the
                    # fencing token is the tag); a lease that ran out is never taken back,
                    # even when nobody fetched the row since.
                    if not holds_lease(conn, ns, d, now):
                        lost.add(d.tag)
                        continue
                    conn.execute(
                        "UPDATE vaultq_jobs SET lease_owner = ?, lease_until = ?, not_before = ? "
                        "WHERE id = ? AND deliveries = ? AND namespace = ? AND job_id = ?",
                        (consumer, until, until, row_id, seq, ns, d.job_id),
                    )
                    conn.execute(sql.EXTEND_CLAIM, (until, ns, d.queue, d.job_id, d.tag))
            return lost

        return await self._run("extend", work)

    async def time(self) -> float:
        """This host's clock: every process of an embedded broker shares it."""
        return time.time()

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        if not settlements:
            return
        ns = self._namespace
        ops = [(parse_tag(s.delivery), s) for s in settlements]

        def work(conn: sqlite3.Connection) -> list[str]:
            # One transaction for the batch: one fsync, and each settlement is atomic.
            refused: list[str] = []
            with immediate(conn):
                now = time.time()
                dead = DeadLetters(conn, ns, self._dead_max, self._dead_age)
                for (row_id, seq), s in ops:
                    if not holds_lease(conn, ns, s.delivery, now):
                        refused.append(s.delivery.job_id)  # fenced: the lease is lost
                        continue
                    settle_one(conn, dead, row_id, seq, s, now)
            return refused

        stale = await self._run("settle", work)
        if stale:
            logger.warning(
                "%d settlement(s) refused: the delivery no longer holds its lease (job %s%s); "
                "the job will run again on another delivery",
                len(stale),
                stale[0],
                " ..." if len(stale) > 1 else "",
            )
        self._notify_results(
            [
                (s.delivery.queue, s.delivery.job_id)
                for s in settlements
                if isinstance(s, Ack | Bury)
            ]
        )
        if any(isinstance(s, Retry | Release) for s in settlements):
            self._notify_work()

    # -- results ----------------------------------------------------------------------

    async def get_result(self, queue: str, job_id: str) -> bytes | None:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql.GET_RESULT, (ns, queue, job_id, time.time())).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run("get_result", work)

    async def wait_result(self, queue: str, job_id: str, timeout: float) -> bytes | None:
        deadline = anyio.current_time() + max(timeout, 0.0)
        key = (queue, job_id)
        delay = POLL_MIN
        seen: int | None = None  # data_version at this waiter's last look; None: look now
        while True:
            self._loop_state()
            event = anyio.Event()
            self._result_waiters.setdefault(key, []).append(event)
            try:
                data, seen = await self._run(
                    "wait_result", partial(self._peek_result_sync, queue, job_id, seen)
                )
                if data is not None:
                    return data
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return None
                with anyio.move_on_after(min(delay, remaining)):
                    await event.wait()
            finally:
                waiters = self._result_waiters.get(key)
                if waiters is not None and event in waiters:
                    waiters.remove(event)
                    if not waiters:
                        del self._result_waiters[key]
            if event.is_set():
                # A settle through this instance: look even though data_version (which
                # counts other connections' commits only) may not have moved.
                seen = None
            delay = min(delay * POLL_GROWTH, POLL_MAX)

    def _peek_result_sync(
        self, queue: str, job_id: str, seen: int | None, conn: sqlite3.Connection
    ) -> tuple[bytes | None, int | None]:
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        # Clones of a memory broker share one connection, so data_version cannot see
        # their commits: always look there.
        if version == seen and self._memory is None:
            return None, version
        row = conn.execute(sql.GET_RESULT, (self._namespace, queue, job_id, time.time())).fetchone()
        return (None if row is None else bytes(row[0])), version
