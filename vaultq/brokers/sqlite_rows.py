"""The SQLite broker's row logic: leasing, settling, dead letters and cleanup, run in a
worker thread inside the caller's transaction (the connection lock held).

Internal to :mod:`vaultq.brokers.sqlite`; the names here are not public API.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.base import Bury, DeadLetter, Delivery, Drop, Release, Retry, Settlement
from vaultq.brokers.sqlite_file import immediate
from vaultq.errors import BrokerError
from vaultq.priority import level_of

__all__ = [
    "CLEANUP_BATCH",
    "FORGET_ID",
    "DeadLetters",
    "as_int",
    "as_level",
    "as_text",
    "cleanup",
    "dead_row",
    "holds_lease",
    "lease_row",
    "next_due_at",
    "parse_tag",
    "quarantine",
    "settle_one",
    "valid_attempt",
    "valid_seconds",
]

logger = logging.getLogger("vaultq.brokers.sqlite")

CLEANUP_BATCH = 500
"""Rows deleted per table and cleanup pass at most (bounds one transaction)."""


def holds_lease(conn: sqlite3.Connection, ns: str, d: Delivery, now: float) -> bool:
    """The fencing check: ``d``'s tag holds the job-id claim and its lease has not run
    out on this host's clock."""
    return conn.execute(sql.HOLDS_LEASE, (ns, d.queue, d.job_id, d.tag, now)).fetchone() is not None


def next_due_at(conn: sqlite3.Connection, ns: str, queues: Sequence[str]) -> float | None:
    times = [conn.execute(sql.NEXT_DUE, (ns, queue)).fetchone()[0] for queue in queues]
    known = [float(t) for t in times if isinstance(t, int | float)]
    return min(known) if known else None


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def as_int(value: object, *, least: int) -> int:
    return max(least, value) if type(value) is int else least


def as_level(value: object) -> int:
    """A stored priority level (-1, 0, 1); a crafted value of another type is normal."""
    return int(level_of(value)) if type(value) is int else 0


MAX_ID = 256
MAX_ATTEMPT = 999_999_999
"""The largest attempt number a row (or a Redis stream entry) may carry."""


def valid_attempt(value: object) -> bool:
    """An INTEGER 1..MAX_ATTEMPT: SQLite stores any type in any column, and a text,
    real, zero or negative attempt is not one vaultq or a conforming producer wrote."""
    return type(value) is int and 1 <= value <= MAX_ATTEMPT


def valid_seconds(value: object) -> bool:
    """Unix seconds as a finite INTEGER or REAL >= 0 (not text, not +-inf)."""
    return type(value) in (int, float) and 0 <= value < 1e12  # type: ignore[operator]


"""Longer (unauthenticated) job ids are never used: the row is dead-lettered as a stub."""
UNAUTHENTICATED = "rejected:unauthenticated"


class DeadLetters:
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
        priority: int = 0,
    ) -> None:
        row = (
            self.ns,
            queue,
            job_id[:MAX_ID],
            reason,
            detail,
            attempt,
            now,
            envelope,
            size,
            priority,
        )
        self.conn.execute(sql.DEAD_INSERT, row)
        self.conn.execute(sql.DEAD_TRIM, (self.ns, queue, self.ns, queue, self.limit))
        self.conn.execute(sql.CLEANUP_DEAD, (now - self.age, CLEANUP_BATCH))

    def count(self, queue: str, reason: str) -> None:
        self.conn.execute(sql.COUNT, (self.ns, queue, reason))


def quarantine(conn: sqlite3.Connection, dead: DeadLetters, queue: str, now: float) -> None:
    """Move rows whose ``not_before`` is not a number (written by hand: they can never be
    ready and used to crash the next-due computation) to the dead letters, as stubs."""
    for row_id, job_id, attempt, size in conn.execute(sql.POISON_ROWS, (dead.ns, queue)).fetchall():
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.add(
            queue,
            as_text(job_id),
            UNAUTHENTICATED,
            "malformed row quarantined",
            as_int(attempt, least=1),
            now,
            None,
            as_int(size, least=0),
        )
        logger.warning("SQLite broker: quarantined a malformed row of queue %s", queue)


def lease_row(
    conn: sqlite3.Connection,
    dead: DeadLetters,
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
    job_id = as_text(raw_id)
    if not isinstance(raw_id, str):
        # Settling matches the row by job id too: store the text the delivery carries.
        conn.execute("UPDATE vaultq_jobs SET job_id = ? WHERE id = ?", (job_id, row_id))
    deliveries = as_int(raw_seq, least=0)
    if not (valid_attempt(raw_attempt) and valid_seconds(raw_at)):
        # docs/sqlite.md states both columns' forms; a guessed attempt could grant
        # retries or skip them, so the row is never delivered: a stub, this transaction.
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.add(
            queue,
            job_id,
            UNAUTHENTICATED,
            "column attempt or enqueued_at malformed (docs/sqlite.md)",
            0,
            now,
            None,
            as_int(raw_size, least=0),
        )
        return None
    attempt = as_int(raw_attempt, least=1)
    enqueued_at = float(raw_at)  # type: ignore[arg-type]  # valid_seconds checked it
    if raw_envelope is None or len(job_id) > MAX_ID:
        # Oversized (SELECT_READY left it in the database): a stub, never a second copy.
        conn.execute("DELETE FROM vaultq_jobs WHERE id = ?", (row_id,))
        dead.add(
            queue,
            job_id,
            UNAUTHENTICATED,
            "envelope rejected before authentication",
            attempt,
            now,
            None,
            as_int(raw_size, least=0),
        )
        return None
    envelope = raw_envelope if isinstance(raw_envelope, bytes) else as_text(raw_envelope).encode()
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


def settle_one(
    conn: sqlite3.Connection, dead: DeadLetters, row_id: int, seq: int, s: Settlement, now: float
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
    level = 0
    if isinstance(s, Bury):
        # The dead letter keeps the job's level, for ``retry_dead``.
        found = conn.execute(sql.JOB_LEVEL, (row_id,)).fetchone()
        level = as_level(found[0]) if found is not None else 0
    deleted = conn.execute(sql.DELETE_JOB, (row_id, ns, d.job_id)).rowcount
    conn.execute(sql.UNCLAIM, (ns, d.queue, d.job_id, d.tag))
    if isinstance(s, Bury) and deleted:
        # Only the settlement that removed the row writes the dead letter, so a repeated
        # Bury (a retried batch whose commit did land) does not bury twice.
        envelope = d.envelope if s.keep_envelope else None
        size = len(d.envelope)
        dead.add(d.queue, d.job_id, s.reason, s.detail, d.attempt, now, envelope, size, level)


def cleanup(conn: sqlite3.Connection, now: float, dead_age: float) -> bool:
    """Delete a bounded batch of expired rows per table; True when a backlog remains."""
    backlog = False
    with immediate(conn):
        for statement in sql.CLEANUP:
            if conn.execute(statement, (now, CLEANUP_BATCH)).rowcount >= CLEANUP_BATCH:
                backlog = True
        if conn.execute(sql.CLEANUP_DEAD, (now - dead_age, CLEANUP_BATCH)).rowcount >= (
            CLEANUP_BATCH
        ):
            backlog = True
    return backlog


def parse_tag(delivery: Delivery) -> tuple[int, int]:
    """``"<row id>.<delivery number>"`` -> both numbers."""
    row_id, _, seq = delivery.tag.partition(".")
    try:
        return int(row_id), int(seq)
    except ValueError:
        raise BrokerError(
            "delivery tag is not a SQLite row id; settle deliveries with the broker "
            "that fetched them"
        ) from None


# What ``retry_dead`` clears for the id: its replay memory, old outcome and cancel marker.
FORGET_ID = (
    "DELETE FROM vaultq_finished WHERE namespace = ? AND queue = ? AND job_id = ?",
    "DELETE FROM vaultq_results WHERE namespace = ? AND queue = ? AND job_id = ?",
    "DELETE FROM vaultq_cancels WHERE namespace = ? AND queue = ? AND job_id = ?",
)


def dead_row(queue: str, row: tuple[object, ...]) -> DeadLetter:
    row_id, job_id, reason, detail, attempt, at = row
    return DeadLetter(
        queue=queue,
        job_id=as_text(job_id),
        reason=as_text(reason),
        detail=as_text(detail),
        attempt=as_int(attempt, least=0),
        at=at if isinstance(at, int | float) else 0.0,
        tag=str(row_id),
    )
