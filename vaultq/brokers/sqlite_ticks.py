"""The embedded broker's schedule operations (:class:`vaultq.brokers.base.TickStore`).

Each function runs inside the broker's connection lock in a worker thread and is one
``BEGIN IMMEDIATE`` transaction, so the mark and the job row are written together or not
at all, and SQLite's single write lock serializes every scheduler process on the host.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.base import EnqueueItem, ScheduleMark
from vaultq.priority import level_of

__all__ = ["claim_tick", "mark_schedule", "schedule_marks"]

Transaction = Callable[[sqlite3.Connection], AbstractContextManager[None]]

_MARK = "SELECT mark FROM vaultq_schedules WHERE namespace = ? AND queue = ? AND name = ?"
_SET_MARK = (
    "INSERT INTO vaultq_schedules (namespace, queue, name, mark) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, queue, name) DO UPDATE SET mark = MAX(mark, excluded.mark)"
)
_SET_FIRED = "UPDATE vaultq_schedules SET fired = ? WHERE namespace = ? AND queue = ? AND name = ?"
_ALL = (
    "SELECT name, mark, fired FROM vaultq_schedules WHERE namespace = ? AND queue = ? ORDER BY name"
)


def claim_tick(
    conn: sqlite3.Connection,
    immediate: Transaction,
    ns: str,
    item: EnqueueItem,
    schedule: str,
    tick: float,
) -> bool:
    """Move the mark to ``tick`` and insert the job unless its id exists; nothing when
    the mark is already at or past ``tick``. True when the job row was written."""
    key = (ns, item.queue, item.job_id)
    with immediate(conn):
        row = conn.execute(_MARK, (ns, item.queue, schedule)).fetchone()
        if row is not None and row[0] >= tick:
            return False
        conn.execute(_SET_MARK, (ns, item.queue, schedule, tick))
        now = time.time()
        if (
            conn.execute(sql.JOB_EXISTS, key).fetchone() is not None
            or conn.execute(sql.IS_FINISHED, (*key, now)).fetchone() is not None
            or conn.execute(sql.HAS_RESULT, (*key, now)).fetchone() is not None
        ):
            return False
        conn.execute(sql.INSERT_JOB, (*key, item.envelope, now, now, level_of(item.priority)))
        conn.execute(_SET_FIRED, (tick, ns, item.queue, schedule))
        return True


def mark_schedule(
    conn: sqlite3.Connection,
    immediate: Transaction,
    ns: str,
    queue: str,
    schedule: str,
    tick: float,
    only_if_absent: bool,
) -> float:
    with immediate(conn):
        row = conn.execute(_MARK, (ns, queue, schedule)).fetchone()
        if row is not None and (only_if_absent or row[0] >= tick):
            return float(row[0])
        conn.execute(_SET_MARK, (ns, queue, schedule, tick))
        return float(tick)


def schedule_marks(conn: sqlite3.Connection, ns: str, queue: str) -> list[ScheduleMark]:
    rows: Iterator[tuple[str, float, float | None]] = conn.execute(_ALL, (ns, queue))
    return [
        ScheduleMark(name=name, mark=float(mark), fired=None if fired is None else float(fired))
        for name, mark, fired in rows
    ]
