"""The SQLite broker's job-state queries, statistics, dead letters and operator tools
(``vaultq stats``, ``vaultq dead``, ``vaultq job``, ``vaultq cancel``), as a base class
of :class:`~vaultq.brokers.sqlite.SqliteBroker`: one-row reads and writes, off the fetch
and settle path.

Internal to :mod:`vaultq.brokers.sqlite`; the names here are not public API.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.base import (
    JOB_INFO_DEAD_SCAN,
    RETRYABLE_REASONS,
    CancelState,
    DeadLetter,
    JobInfo,
    QueuedEntry,
    QueueStats,
    entry_state,
)
from vaultq.brokers.sqlite_file import immediate
from vaultq.brokers.sqlite_rows import FORGET_ID, DeadLetters, as_int, as_level, as_text, dead_row

__all__ = ["SqliteOperatorTools"]

T = TypeVar("T")


class SqliteOperatorTools:
    """What :class:`SqliteBroker` offers operators; it runs through the broker's own
    connection plumbing (declared here for the type checker)."""

    _namespace: str
    _dead_max: int
    _dead_age: float

    if TYPE_CHECKING:

        async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _notify_work(self) -> None: ...

        def _notify_results(self, keys: Sequence[tuple[str, str]]) -> None: ...

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
            with immediate(conn):
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
                    job_id=as_text(job_id),
                    reason=as_text(reason),
                    detail=as_text(detail),
                    attempt=as_int(attempt, least=0),
                    at=at if isinstance(at, int | float) else 0.0,
                    tag=str(row_id),
                    size=as_int(size, least=0),
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
            with immediate(conn):
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
                    dead=None if dead is None else dead_row(queue, dead),
                )
            finally:
                conn.execute("COMMIT")
            if row is None:
                return info
            row_id, envelope, attempt, not_before, enqueued_at, owner, lease_until = row
            leased = (
                owner is not None and isinstance(lease_until, int | float) and (lease_until > now)
            )
            due = not_before if isinstance(not_before, int | float) else now
            return msgspec.structs.replace(
                info,
                state=entry_state(claimed is not None or leased, due, now),
                attempt=as_int(attempt, least=1),
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
            with immediate(conn):
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
                dead = DeadLetters(conn, ns, self._dead_max, self._dead_age)
                size = len(envelope) if isinstance(envelope, bytes | str) else 0
                dead.add(
                    info.queue,
                    info.job_id,
                    "cancelled",
                    "cancelled before it started",
                    as_int(attempt, least=1),
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

    async def tombstone(
        self,
        queue: str,
        job_id: str,
        *,
        result: bytes,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        # The same checks as enqueue_unique, in one write transaction: of the two, the
        # one that takes SQLite's write lock first wins.
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> bool:
            with immediate(conn):
                now = time.time()
                key = (ns, queue, job_id)
                if (
                    conn.execute(sql.JOB_EXISTS, key).fetchone() is not None
                    or conn.execute(sql.IS_FINISHED, (*key, now)).fetchone() is not None
                    or conn.execute(sql.HAS_RESULT, (*key, now)).fetchone() is not None
                ):
                    return False
                conn.execute(sql.PUT_RESULT, (*key, result, now + result_ttl, now))
                conn.execute(sql.REMEMBER, (*key, remember_until))
                return True

        done = await self._run("tombstone", work)
        if done:
            self._notify_results([(queue, job_id)])
        return done

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        if not tag.isdigit():
            return None
        ns = self._namespace
        dead_id = int(tag)

        def work(conn: sqlite3.Connection) -> DeadLetter | None:
            with immediate(conn):
                row = conn.execute(
                    "SELECT id, job_id, reason, detail, attempt, at, envelope, priority "
                    "FROM vaultq_dead "
                    "WHERE id = ? AND namespace = ? AND queue = ?",
                    (dead_id, ns, queue),
                ).fetchone()
                if row is None:
                    return None
                letter = dead_row(queue, row[:6])
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
                for statement in FORGET_ID:
                    conn.execute(statement, (ns, queue, letter.job_id))
                level = as_level(row[7])
                conn.execute(sql.INSERT_JOB, (ns, queue, letter.job_id, envelope, now, now, level))
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
