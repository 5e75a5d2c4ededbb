"""The embedded broker's unique-key enqueue (:class:`vaultq.brokers.base.UniqueKeys`).

One ``BEGIN IMMEDIATE`` transaction: the lock row, the check and the job row together, so
SQLite's single write lock serializes every producer process on the host. A lock counts only
while the job it names still has its row (queued, delayed or running: settling deletes it).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.base import EnqueueItem
from vaultq.priority import level_of

__all__ = ["enqueue_keyed"]

Transaction = Callable[[sqlite3.Connection], AbstractContextManager[None]]

_LOCK = (
    "SELECT job_id FROM vaultq_unique WHERE namespace = ? AND queue = ? AND key = ? AND until > ?"
)
_SET_LOCK = (
    "INSERT INTO vaultq_unique (namespace, queue, key, job_id, until) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (namespace, queue, key) DO UPDATE SET job_id = excluded.job_id, "
    "until = excluded.until"
)


def enqueue_keyed(
    conn: sqlite3.Connection,
    immediate: Transaction,
    ns: str,
    item: EnqueueItem,
    key: str,
    key_ttl: float,
) -> str:
    """The job id holding ``key`` after the call (``item.job_id`` when written); '' when
    ``item.job_id`` itself exists already."""
    with immediate(conn):
        now = time.time()
        row = conn.execute(_LOCK, (ns, item.queue, key, now)).fetchone()
        if (
            row is not None
            and row[0] != item.job_id
            and conn.execute(sql.JOB_EXISTS, (ns, item.queue, row[0])).fetchone() is not None
        ):
            return str(row[0])
        ids = (ns, item.queue, item.job_id)
        mine = conn.execute(sql.JOB_EXISTS, ids).fetchone()
        if mine is not None:
            # This very envelope written before (a retry after a lost reply): success.
            return item.job_id if mine[0] == item.envelope else ""
        if (
            conn.execute(sql.IS_FINISHED, (*ids, now)).fetchone() is not None
            or conn.execute(sql.HAS_RESULT, (*ids, now)).fetchone() is not None
        ):
            return ""
        not_before = now if item.not_before is None else item.not_before
        row = (*ids, item.envelope, not_before, now, level_of(item.priority))
        conn.execute(sql.INSERT_JOB, row)
        conn.execute(_SET_LOCK, (ns, item.queue, key, item.job_id, now + key_ttl))
        return item.job_id
