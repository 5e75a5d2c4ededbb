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
connection committed anything.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from vaultq import config
from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers import sqlite_ticks, sqlite_unique
from vaultq.brokers.base import (
    JOB_INFO_DEAD_SCAN,
    RETRYABLE_REASONS,
    Ack,
    BrokerCapabilities,
    Bury,
    CancelState,
    DeadLetter,
    Delivery,
    Drop,
    EnqueueItem,
    JobInfo,
    QueuedEntry,
    QueueStats,
    Release,
    Retry,
    ScheduleMark,
    Settlement,
)
from vaultq.brokers.sqlite_monitor import SqliteMonitoring
from vaultq.brokers.sqlite_sql import SCHEMA_VERSION
from vaultq.errors import BrokerError, BrokerUnavailable, ConfigurationError
from vaultq.files import private_dir

__all__ = ["SCHEMA_VERSION", "SqliteBroker"]

logger = logging.getLogger("vaultq.brokers.sqlite")

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 10.0
"""Seconds a transaction waits for another process's write lock before giving up."""
CLEANUP_INTERVAL = 30.0
"""Seconds between opportunistic deletes of expired results, ids, claims and markers."""
CLEANUP_BATCH = 500
POLL_MIN = 0.002
POLL_MAX = 0.1
POLL_GROWTH = 1.25
"""Slow growth: a job that finishes a few ms after the wait began is seen within ~1 ms."""
MIN_LEASE = 0.001
MEMORY = ":memory:"
SYNCHRONOUS = ("full", "normal")


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


class SqliteBroker(SqliteMonitoring):
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
        self._path, self._synchronous, self._busy_timeout = _parse_url(url)
        self._memory = _MemoryHolder() if self._path is None else None
        self._db: _Database | None = None
        self._state_lock = threading.Lock()
        self._last_cleanup = 0.0
        # Loop-bound helpers, rebuilt when the broker is first used in another event loop.
        self._loop_token: object | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._work_event: anyio.Event | None = None
        self._result_waiters: dict[tuple[str, str], list[anyio.Event]] = {}

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
        return BrokerCapabilities(shared=False, local_path=path)

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
                    raise _map_error(op, exc) from exc

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
            _prepare_file(Path(target))
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # guarded by _Database.lock instead
            )
        except sqlite3.Error as exc:
            raise _map_error("connect", exc) from exc
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
            _migrate(conn)
            _cleanup(conn, time.time(), self._dead_age)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _map_error("connect", exc) from exc
            raise
        self._last_cleanup = time.time()
        return conn

    def _maybe_cleanup(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_cleanup < CLEANUP_INTERVAL:
            return
        self._last_cleanup = now
        if _cleanup(conn, now, self._dead_age):
            # A backlog remains: come back on the next fetch rather than in 30 s.
            self._last_cleanup = 0.0

    def _notify_work(self) -> None:
        if self._work_event is not None:
            self._work_event.set()
            self._work_event = None

    def _notify_results(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            for event in self._result_waiters.pop(key, ()):
                event.set()

    # -- lifecycle --------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the file (mode 0600), open it, migrate the schema. Idempotent."""
        await self._run("connect", lambda conn: None)

    async def close(self) -> None:
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

        def work(conn: sqlite3.Connection) -> None:
            now = time.time()
            rows = [
                (
                    ns,
                    item.queue,
                    item.job_id,
                    item.envelope,
                    now if item.not_before is None else item.not_before,
                    now,
                )
                for item in items
            ]
            with _immediate(conn):
                conn.executemany(
                    "INSERT INTO vaultq_jobs "
                    "(namespace, queue, job_id, envelope, not_before, enqueued_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )

        await self._run("enqueue", work)
        self._notify_work()

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        # The rows are the reservation: a queued, delayed or running job has its row
        # until it is settled, and then the finished-id memory (and result) take over.
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                now = time.time()
                key = (ns, item.queue, item.job_id)
                queued = conn.execute(sql.JOB_EXISTS, key).fetchone()
                if queued is not None:
                    # This very envelope written before (a retry after a lost reply): no-op.
                    return bool(queued[0] == item.envelope)
                if (
                    conn.execute(sql.IS_FINISHED, (*key, now)).fetchone() is not None
                    or conn.execute(sql.HAS_RESULT, (*key, now)).fetchone() is not None
                ):
                    return False
                conn.execute(
                    "INSERT INTO vaultq_jobs "
                    "(namespace, queue, job_id, envelope, not_before, enqueued_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, item.envelope, now if item.not_before is None else item.not_before, now),
                )
                return True

        written = await self._run("enqueue", work)
        if written:
            self._notify_work()
        return written

    # -- schedules (TickStore) -------------------------------------------------------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        # ttl is not needed here: the job row reserves the id until it is settled, and
        # the finished-id memory takes over from then.
        ns = self._namespace
        written = await self._run(
            "claim_tick",
            partial(
                sqlite_ticks.claim_tick,
                immediate=_immediate,
                ns=ns,
                item=item,
                schedule=schedule,
                tick=tick,
            ),
        )
        if written:
            self._notify_work()
        return written

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        return await self._run(
            "mark_schedule",
            partial(
                sqlite_ticks.mark_schedule,
                immediate=_immediate,
                ns=self._namespace,
                queue=queue,
                schedule=schedule,
                tick=tick,
                only_if_absent=only_if_absent,
            ),
        )

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        # ttl is not needed here: the job row reserves the id until it is settled.
        holder = await self._run(
            "enqueue",
            partial(
                sqlite_unique.enqueue_keyed,
                immediate=_immediate,
                ns=self._namespace,
                item=item,
                key=key,
                key_ttl=key_ttl,
            ),
        )
        if holder == item.job_id:
            self._notify_work()
        return holder

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        return await self._run(
            "schedule_marks", partial(sqlite_ticks.schedule_marks, ns=self._namespace, queue=queue)
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
        next_due = _next_due(conn, ns, queues)
        if not poison and (next_due is None or next_due > now):
            return [], next_due
        out: list[Delivery] = []
        dead = _DeadLetters(conn, ns, self._dead_max, self._dead_age)
        sent = time.monotonic()  # the leases below start later: a safe proof (leased_at)
        with _immediate(conn):
            now = time.time()
            lease_until = now + max(lease, MIN_LEASE)
            for queue in queues:
                _quarantine(conn, dead, queue, now)
                while len(out) < count:
                    params = (max_size, ns, queue, now, count - len(out))
                    batch = conn.execute(sql.SELECT_READY, params).fetchall()
                    if not batch:
                        break
                    # Every row below leaves the ready range (leased, removed as a
                    # duplicate or dead-lettered as oversized), so this loop ends.
                    for row in batch:
                        delivery = _lease_row(conn, dead, queue, row, consumer, now, lease_until)
                        if delivery is not None:
                            out.append(msgspec.structs.replace(delivery, leased_at=sent))
            due_after = None if out else _next_due(conn, ns, queues)
        return out, due_after

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        if not deliveries:
            return set()
        ns = self._namespace
        rows = [(_parse_tag(d), d) for d in deliveries]

        def work(conn: sqlite3.Connection) -> set[str]:
            lost: set[str] = set()
            with _immediate(conn):
                now = time.time()
                until = now + max(lease, MIN_LEASE)
                for (row_id, seq), d in rows:
                    # Only the delivery that still holds a live lease may push it out (the
                    # fencing token is the tag); a lease that ran out is never taken back,
                    # even when nobody fetched the row since.
                    if not _holds_lease(conn, ns, d, now):
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
        ops = [(_parse_tag(s.delivery), s) for s in settlements]

        def work(conn: sqlite3.Connection) -> list[str]:
            # One transaction for the batch: one fsync, and each settlement is atomic.
            refused: list[str] = []
            with _immediate(conn):
                now = time.time()
                dead = _DeadLetters(conn, ns, self._dead_max, self._dead_age)
                for (row_id, seq), s in ops:
                    if not _holds_lease(conn, ns, s.delivery, now):
                        refused.append(s.delivery.job_id)  # fenced: the lease is lost
                        continue
                    _settle_one(conn, dead, row_id, seq, s, now)
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

    # -- job state --------------------------------------------------------------------

    async def is_running(self, queue: str, job_id: str) -> bool:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(sql.LIVE_CLAIM, (ns, queue, job_id, time.time())).fetchone()
            return row is not None

        return await self._run("is_running", work)

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> CancelState:
            with _immediate(conn):
                now = time.time()
                key = (ns, queue, job_id, now)
                if (
                    conn.execute(sql.IS_FINISHED, key).fetchone() is not None
                    or conn.execute(sql.HAS_RESULT, key).fetchone() is not None
                ):
                    return CancelState.FINISHED
                conn.execute(sql.MARK_CANCEL, (ns, queue, job_id, now + max(ttl, 0.0)))
                return CancelState.REQUESTED

        return await self._run("cancel", work)

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        ns = self._namespace
        ids = list(job_ids)

        def work(conn: sqlite3.Connection) -> set[str]:
            now = time.time()
            return {
                job_id
                for job_id in ids
                if conn.execute(sql.IS_CANCELLED, (ns, queue, job_id, now)).fetchone() is not None
            }

        return await self._run("cancelled", work)

    async def stats(self, queue: str) -> QueueStats:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> QueueStats:
            conn.execute("BEGIN")  # one snapshot for the four counts
            try:
                now = time.time()
                ready, delayed, running = conn.execute(
                    "SELECT "
                    "COALESCE(SUM(not_before <= ?1), 0), "
                    "COALESCE(SUM(not_before > ?1 AND lease_owner IS NULL), 0), "
                    "COALESCE(SUM(not_before > ?1 AND lease_owner IS NOT NULL), 0) "
                    "FROM vaultq_jobs WHERE namespace = ?2 AND queue = ?3",
                    (now, ns, queue),
                ).fetchone()
                (dead,) = conn.execute(
                    "SELECT COUNT(*) FROM vaultq_dead WHERE namespace = ? AND queue = ?",
                    (ns, queue),
                ).fetchone()
            finally:
                conn.execute("COMMIT")
            return QueueStats(queue=queue, ready=ready, delayed=delayed, running=running, dead=dead)

        return await self._run("stats", work)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, job_id, reason, detail, attempt, at, size, envelope IS NULL "
                "FROM vaultq_dead WHERE namespace = ? AND queue = ? ORDER BY id DESC LIMIT ?",
                (ns, queue, max(limit, 0)),
            ).fetchall()
            return [
                DeadLetter(
                    queue=queue,
                    job_id=_as_text(job_id),
                    reason=_as_text(reason),
                    detail=_as_text(detail),
                    attempt=_as_int(attempt, least=0),
                    at=at if isinstance(at, int | float) else 0.0,
                    tag=str(row_id),
                    size=_as_int(size, least=0),
                    stub=bool(stub),
                )
                for row_id, job_id, reason, detail, attempt, at, size, stub in rows
            ]

        return await self._run("dead_letters", work)

    async def counters(self, queue: str) -> dict[str, int]:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT name, value FROM vaultq_counters WHERE namespace = ? AND queue = ?",
                (ns, queue),
            ).fetchall()
            return {str(name): int(value) for name, value in rows}

        return await self._run("counters", work)

    async def purge_dead(self, queue: str) -> int:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> int:
            with _immediate(conn):
                cur = conn.execute(
                    "DELETE FROM vaultq_dead WHERE namespace = ? AND queue = ?", (ns, queue)
                )
                return int(cur.rowcount)

        return await self._run("purge_dead", work)

    # -- operator tools ---------------------------------------------------------------

    async def job_info(self, queue: str, job_id: str) -> JobInfo:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> JobInfo:
            conn.execute("BEGIN")  # one snapshot for the reads below
            try:
                now = time.time()
                key = (ns, queue, job_id, now)
                claimed = conn.execute(sql.LIVE_CLAIM, (ns, queue, job_id, now)).fetchone()
                dead = conn.execute(
                    "SELECT id, job_id, reason, detail, attempt, at FROM vaultq_dead "
                    "WHERE id IN (SELECT id FROM vaultq_dead WHERE namespace = ? AND queue = ? "
                    "ORDER BY id DESC LIMIT ?) AND job_id = ? ORDER BY id DESC LIMIT 1",
                    (ns, queue, JOB_INFO_DEAD_SCAN, job_id),
                ).fetchone()
                row = conn.execute(
                    "SELECT id, envelope, attempt, not_before, enqueued_at, lease_owner, "
                    "lease_until FROM vaultq_jobs WHERE namespace = ? AND queue = ? "
                    "AND job_id = ? ORDER BY id LIMIT 1",
                    (ns, queue, job_id),
                ).fetchone()
                info = JobInfo(
                    queue=queue,
                    job_id=job_id,
                    state="running" if claimed is not None else "absent",
                    cancel_requested=conn.execute(sql.IS_CANCELLED, key).fetchone() is not None,
                    finished=conn.execute(sql.IS_FINISHED, key).fetchone() is not None,
                    dead=None if dead is None else _dead_row(queue, dead),
                )
            finally:
                conn.execute("COMMIT")
            if row is None:
                return info
            row_id, envelope, attempt, not_before, enqueued_at, owner, lease_until = row
            leased = (
                owner is not None and isinstance(lease_until, int | float) and (lease_until > now)
            )
            if claimed is not None or leased:
                state = "running"
            elif isinstance(not_before, int | float) and not_before > now:
                state = "delayed"
            else:
                state = "queued"
            return msgspec.structs.replace(
                info,
                state=state,
                attempt=_as_int(attempt, least=1),
                enqueued_at=enqueued_at if isinstance(enqueued_at, int | float) else 0.0,
                not_before=not_before if isinstance(not_before, int | float) else 0.0,
                tag=str(row_id),
                envelope=envelope if isinstance(envelope, bytes) else b"",
            )

        return await self._run("job_info", work)

    async def cancel_queued(
        self,
        info: JobInfo,
        *,
        result: bytes | None,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        if info.state not in ("queued", "delayed") or not info.tag.isdigit():
            return False
        ns = self._namespace
        row_id = int(info.tag)

        def work(conn: sqlite3.Connection) -> bool:
            with _immediate(conn):
                now = time.time()
                if conn.execute(sql.LIVE_CLAIM, (ns, info.queue, info.job_id, now)).fetchone():
                    return False
                row = conn.execute(
                    "SELECT envelope, attempt FROM vaultq_jobs WHERE id = ? AND namespace = ? "
                    "AND queue = ? AND job_id = ? AND (lease_owner IS NULL OR lease_until <= ?)",
                    (row_id, ns, info.queue, info.job_id, now),
                ).fetchone()
                if row is None:
                    return False
                envelope, attempt = row
                conn.execute(sql.DELETE_JOB, (row_id, ns, info.job_id))
                dead = _DeadLetters(conn, ns, self._dead_max, self._dead_age)
                size = len(envelope) if isinstance(envelope, bytes | str) else 0
                dead.add(
                    info.queue,
                    info.job_id,
                    "cancelled",
                    "cancelled before it started",
                    _as_int(attempt, least=1),
                    now,
                    envelope,
                    size,
                )
                if result is not None:
                    conn.execute(
                        sql.PUT_RESULT,
                        (ns, info.queue, info.job_id, result, now + result_ttl, now),
                    )
                conn.execute(sql.REMEMBER, (ns, info.queue, info.job_id, remember_until))
                return True

        done = await self._run("cancel_queued", work)
        if done:
            self._notify_results([(info.queue, info.job_id)])
        return done

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        if not tag.isdigit():
            return None
        ns = self._namespace
        dead_id = int(tag)

        def work(conn: sqlite3.Connection) -> DeadLetter | None:
            with _immediate(conn):
                row = conn.execute(
                    "SELECT id, job_id, reason, detail, attempt, at, envelope FROM vaultq_dead "
                    "WHERE id = ? AND namespace = ? AND queue = ?",
                    (dead_id, ns, queue),
                ).fetchone()
                if row is None:
                    return None
                letter = _dead_row(queue, row[:6])
                envelope = row[6]
                if (
                    letter.reason not in RETRYABLE_REASONS
                    or not isinstance(envelope, bytes)
                    or not envelope
                    or not letter.job_id
                ):
                    return None
                now = time.time()
                conn.execute("DELETE FROM vaultq_dead WHERE id = ?", (dead_id,))
                for statement in _FORGET_ID:
                    conn.execute(statement, (ns, queue, letter.job_id))
                conn.execute(
                    "INSERT INTO vaultq_jobs "
                    "(namespace, queue, job_id, envelope, not_before, enqueued_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (ns, queue, letter.job_id, envelope, now, now),
                )
                return letter

        letter = await self._run("retry_dead", work)
        if letter is not None:
            self._notify_work()
        return letter

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> list[QueuedEntry]:
            rows = conn.execute(
                "SELECT job_id, envelope FROM vaultq_jobs WHERE namespace = ? AND queue = ? "
                "ORDER BY id LIMIT ?",
                (ns, queue, max(limit, 0)),
            ).fetchall()
            return [QueuedEntry(queue, str(job_id), bytes(env)) for job_id, env in rows]

        return await self._run("queued", work)


# -- helpers (run in worker threads, inside the connection lock) ------------------------


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: takes SQLite's single write lock up front (no upgrade races)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT (I/O error), which can leave the transaction open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _holds_lease(conn: sqlite3.Connection, ns: str, d: Delivery, now: float) -> bool:
    """The fencing check: ``d``'s tag holds the job-id claim and its lease has not run
    out on this host's clock."""
    return conn.execute(sql.HOLDS_LEASE, (ns, d.queue, d.job_id, d.tag, now)).fetchone() is not None


def _next_due(conn: sqlite3.Connection, ns: str, queues: Sequence[str]) -> float | None:
    times = [conn.execute(sql.NEXT_DUE, (ns, queue)).fetchone()[0] for queue in queues]
    known = [float(t) for t in times if isinstance(t, int | float)]
    return min(known) if known else None


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_int(value: object, *, least: int) -> int:
    return max(least, value) if type(value) is int else least


_MAX_ID = 256
"""Longer (unauthenticated) job ids are never used: the row is dead-lettered as a stub."""
_UNAUTHENTICATED = "rejected:unauthenticated"


class _DeadLetters:
    """Writes dead letters of one namespace inside the caller's transaction, keeping at
    most ``limit`` per queue (the oldest go first) and none older than ``age`` seconds."""

    def __init__(self, conn: sqlite3.Connection, ns: str, limit: int, age: float) -> None:
        self.conn = conn
        self.ns = ns
        self.limit = limit
        self.age = age

    def add(
        self,
        queue: str,
        job_id: str,
        reason: str,
        detail: str,
        attempt: int,
        now: float,
        envelope: bytes | None,
        size: int,
    ) -> None:
        row = (self.ns, queue, job_id[:_MAX_ID], reason, detail, attempt, now, envelope, size)
        self.conn.execute(sql.DEAD_INSERT, row)
        self.conn.execute(sql.DEAD_TRIM, (self.ns, queue, self.ns, queue, self.limit))
        self.conn.execute(sql.CLEANUP_DEAD, (now - self.age, CLEANUP_BATCH))

    def count(self, queue: str, reason: str) -> None:
        self.conn.execute(sql.COUNT, (self.ns, queue, reason))


def _quarantine(conn: sqlite3.Connection, dead: _DeadLetters, queue: str, now: float) -> None:
    """Move rows whose ``not_before`` is not a number (written by hand: they can never be
    ready and used to crash the next-due computation) to the dead letters, as stubs."""
    for row_id, job_id, attempt, size in conn.execute(sql.POISON_ROWS, (dead.ns, queue)).fetchall():
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.add(
            queue,
            _as_text(job_id),
            _UNAUTHENTICATED,
            "malformed row quarantined",
            _as_int(attempt, least=1),
            now,
            None,
            _as_int(size, least=0),
        )
        logger.warning("SQLite broker: quarantined a malformed row of queue %s", queue)


def _lease_row(
    conn: sqlite3.Connection,
    dead: _DeadLetters,
    queue: str,
    row: tuple[int, object, object, object, object, str | None, object, object],
    consumer: str,
    now: float,
    lease_until: float,
) -> Delivery | None:
    ns = dead.ns
    row_id, raw_id, raw_envelope, raw_attempt, raw_at, lease_owner, raw_seq, raw_size = row
    # Whoever can write the database file can store any type in any column (SQLite is
    # dynamically typed): coerce, so a crafted row is rejected as a job instead of
    # crashing the worker with a TypeError.
    job_id = _as_text(raw_id)
    if not isinstance(raw_id, str):
        # Settling matches the row by job id too: store the text the delivery carries.
        conn.execute("UPDATE vaultq_jobs SET job_id = ? WHERE id = ?", (job_id, row_id))
    attempt = _as_int(raw_attempt, least=1)
    deliveries = _as_int(raw_seq, least=0)
    enqueued_at = float(raw_at) if isinstance(raw_at, int | float) else 0.0
    if raw_envelope is None or len(job_id) > _MAX_ID:
        # Oversized (SELECT_READY left it in the database): a stub, never a second copy.
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.add(
            queue,
            job_id,
            _UNAUTHENTICATED,
            "envelope rejected before authentication",
            attempt,
            now,
            None,
            _as_int(raw_size, least=0),
        )
        return None
    envelope = raw_envelope if isinstance(raw_envelope, bytes) else _as_text(raw_envelope).encode()
    claim = conn.execute(sql.LIVE_CLAIM, (ns, queue, job_id, now)).fetchone()
    if claim is not None and claim[0] != row_id:
        # Another row runs this job id: this one may never run beside it, and once that
        # one settled it would be a replay. Removed and counted, in this pass.
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.count(queue, "duplicate")
        return None
    # The tag names this lease (row id and delivery number), so a settle or extend from
    # an earlier delivery of the same row is recognised as stale.
    tag = f"{row_id}.{deliveries + 1}"
    conn.execute(
        "UPDATE vaultq_jobs SET lease_owner = ?, lease_until = ?, not_before = ?, "
        "deliveries = ? WHERE id = ?",
        (consumer, lease_until, lease_until, deliveries + 1, row_id),
    )
    # The upsert cannot be refused here: any live claim would have matched above.
    conn.execute(sql.CLAIM, (ns, queue, job_id, row_id, tag, consumer, lease_until, now))
    key = (ns, queue, job_id, now)
    return Delivery(
        queue=queue,
        job_id=job_id,
        envelope=bytes(envelope),
        attempt=attempt,
        tag=tag,
        # A lease owner on a ready row means the last lease ran out unsettled.
        redelivered=lease_owner is not None,
        completed=conn.execute(sql.IS_FINISHED, key).fetchone() is not None,
        cancel_requested=conn.execute(sql.IS_CANCELLED, key).fetchone() is not None,
        enqueued_at=enqueued_at,
    )


def _settle_one(
    conn: sqlite3.Connection, dead: _DeadLetters, row_id: int, seq: int, s: Settlement, now: float
) -> None:
    ns = dead.ns
    d = s.delivery
    if isinstance(s, Retry | Release):
        attempt = d.attempt + 1 if isinstance(s, Retry) else d.attempt
        conn.execute(sql.REQUEUE_JOB, (attempt, s.not_before, row_id, seq, ns, d.job_id))
        conn.execute(sql.UNCLAIM, (ns, d.queue, d.job_id, d.tag))
        return
    if isinstance(s, Drop):
        if conn.execute(sql.DELETE_JOB, (row_id, ns, d.job_id)).rowcount:
            dead.count(d.queue, s.reason)
        conn.execute(sql.UNCLAIM, (ns, d.queue, d.job_id, d.tag))
        return
    # Only called for a delivery that holds its lease (settle checks it first).
    key = (ns, d.queue, d.job_id)
    if s.result is not None and conn.execute(sql.IS_FINISHED, (*key, now)).fetchone() is None:
        # Write-once: an id remembered as finished gets no second outcome (its result
        # may have expired), and PUT_RESULT never replaces a live one.
        conn.execute(sql.PUT_RESULT, (*key, s.result, now + s.result_ttl, now))
    if s.remember_until is not None:
        # At least as long as the result lives, so the write-once check outlives it.
        until = max(s.remember_until, now + s.result_ttl)
        conn.execute(sql.REMEMBER, (*key, until))
    deleted = conn.execute(sql.DELETE_JOB, (row_id, ns, d.job_id)).rowcount
    conn.execute(sql.UNCLAIM, (ns, d.queue, d.job_id, d.tag))
    if isinstance(s, Bury) and deleted:
        # Only the settlement that removed the row writes the dead letter, so a repeated
        # Bury (a retried batch whose commit did land) does not bury twice.
        envelope = d.envelope if s.keep_envelope else None
        dead.add(d.queue, d.job_id, s.reason, s.detail, d.attempt, now, envelope, len(d.envelope))


def _cleanup(conn: sqlite3.Connection, now: float, dead_age: float) -> bool:
    """Delete a bounded batch of expired rows per table; True when a backlog remains."""
    backlog = False
    with _immediate(conn):
        for statement in sql.CLEANUP:
            if conn.execute(statement, (now, CLEANUP_BATCH)).rowcount >= CLEANUP_BATCH:
                backlog = True
        if conn.execute(sql.CLEANUP_DEAD, (now - dead_age, CLEANUP_BATCH)).rowcount >= (
            CLEANUP_BATCH
        ):
            backlog = True
    return backlog


def _migrate(conn: sqlite3.Connection) -> None:
    with _immediate(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vaultq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        row = conn.execute("SELECT value FROM vaultq_meta WHERE key = 'schema_version'").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise BrokerError(
                f"the SQLite database has vaultq schema version {version}, newer than this "
                f"vaultq understands ({SCHEMA_VERSION}); upgrade vaultq on this host or "
                "point it at another database file"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in sql.MIGRATIONS[step]:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(
                "INSERT OR REPLACE INTO vaultq_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            logger.info("SQLite broker: schema migrated from %s to %s", version, SCHEMA_VERSION)


def _prepare_file(path: Path) -> None:
    """Create the directory and the database file (0600: it holds sealed envelopes)."""
    try:
        private_dir(path.parent)  # 0700 whatever the umask, parents included
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot create or open the SQLite database {path}: {exc.strerror}; "
            "check that the directory is writable by this user"
        ) from exc
    if mode & 0o077:
        logger.warning(
            "SQLite broker: %s is readable by group or others (mode %o); run chmod 600 on it",
            path,
            mode,
        )


def _parse_tag(delivery: Delivery) -> tuple[int, int]:
    """``"<row id>.<delivery number>"`` -> both numbers."""
    row_id, _, seq = delivery.tag.partition(".")
    try:
        return int(row_id), int(seq)
    except ValueError:
        raise BrokerError(
            "delivery tag is not a SQLite row id; settle deliveries with the broker "
            "that fetched them"
        ) from None


_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    }
)


def _map_error(op: str, exc: sqlite3.Error) -> BrokerError:
    """One place to turn sqlite3 errors into the vaultq tree (messages carry no values)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return BrokerUnavailable(
            f"SQLite broker: {op} waited longer than busy_timeout for the database lock; "
            "another process holds a long write transaction: look for a stuck process or "
            "an open sqlite3 shell, keep the file off network filesystems, raise "
            "?busy_timeout=, or move to Redis for this load"
        )
    if primary in _UNAVAILABLE_CODES:
        return BrokerUnavailable(
            f"SQLite broker: {op} failed ({exc}); check that the database file and its "
            "directory exist, are writable by this user, and the disk is not full"
        )
    return BrokerError(
        f"SQLite broker: {op} failed ({type(exc).__name__}: {exc}); if the file is "
        "damaged, stop the workers and restore it or start with a new file"
    )


def _parse_url(url: str) -> tuple[Path | None, str, float]:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        raise ConfigurationError(
            "SQLite broker URL must look like sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    # urlsplit keeps the slash after the empty host: strip exactly that one.
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not raw:
        raise ConfigurationError(
            "SQLite broker URL names no file: use sqlite:///vaultq.db or sqlite:////abs/path.db"
        )
    synchronous = "full"
    busy_timeout = DEFAULT_BUSY_TIMEOUT
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "synchronous" and value.lower() in SYNCHRONOUS:
            synchronous = value.lower()
        elif name == "busy_timeout":
            try:
                busy_timeout = float(value)
            except ValueError:
                busy_timeout = -1.0
            if not busy_timeout > 0:
                raise ConfigurationError(
                    "SQLite broker URL: busy_timeout must be a positive number of seconds"
                )
        else:
            raise ConfigurationError(
                f"SQLite broker URL: unsupported option {name!r}; "
                "known options are synchronous=full|normal and busy_timeout=<seconds>"
            )
    path = None if raw == MEMORY else Path(os.path.abspath(raw))
    return path, synchronous, busy_timeout


# What ``retry_dead`` clears for the id: its replay memory, old outcome and cancel marker.
_FORGET_ID = (
    "DELETE FROM vaultq_finished WHERE namespace = ? AND queue = ? AND job_id = ?",
    "DELETE FROM vaultq_results WHERE namespace = ? AND queue = ? AND job_id = ?",
    "DELETE FROM vaultq_cancels WHERE namespace = ? AND queue = ? AND job_id = ?",
)


def _dead_row(queue: str, row: tuple[object, ...]) -> DeadLetter:
    row_id, job_id, reason, detail, attempt, at = row
    return DeadLetter(
        queue=queue,
        job_id=_as_text(job_id),
        reason=_as_text(reason),
        detail=_as_text(detail),
        attempt=_as_int(attempt, least=0),
        at=at if isinstance(at, int | float) else 0.0,
        tag=str(row_id),
    )
