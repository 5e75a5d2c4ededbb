"""The SQLite broker's enqueue writes, shared by the async broker and the sync writer.

:func:`insert_jobs` and :func:`insert_unique` are the transactions behind ``enqueue``
and ``enqueue_unique`` (``sqlite_unique.enqueue_keyed`` is ``enqueue_keyed``'s): the
asyncio broker (``vaultq/brokers/sqlite.py``) runs them in a worker thread on its own
connection, :class:`SqliteSyncWriter` in the calling thread on a pooled one
(``task.enqueue_sync``). Either way a committed enqueue then wakes idle workers of other
processes (``sqlite_wake.py``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, TypeVar

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers import sqlite_unique
from vaultq.brokers.base import EnqueueItem
from vaultq.brokers.sqlite_file import immediate, map_error
from vaultq.brokers.sqlite_wake import WakeSender
from vaultq.brokers.writer import fork_generation
from vaultq.priority import level_of

__all__ = ["INSERT_JOB", "SqliteSyncWriter", "insert_jobs", "insert_unique"]

T = TypeVar("T")

INSERT_JOB: Final = sql.INSERT_JOB
"""Parameters: namespace, queue, job id, envelope, not_before, enqueued_at, priority."""
_POOL_IDLE: Final = 8
"""Idle connections a sync writer keeps for the next calls (more are closed)."""


def insert_jobs(conn: sqlite3.Connection, ns: str, items: Sequence[EnqueueItem]) -> None:
    """Write ``items`` in one transaction (one fsync)."""
    now = time.time()
    rows = [
        (
            ns,
            item.queue,
            item.job_id,
            item.envelope,
            now if item.not_before is None else item.not_before,
            now,
            level_of(item.priority),
        )
        for item in items
    ]
    with immediate(conn):
        conn.executemany(INSERT_JOB, rows)


def insert_unique(conn: sqlite3.Connection, ns: str, item: EnqueueItem) -> bool:
    """Write ``item`` unless its id is queued, delayed, running or finished; True when
    written (or when this very envelope was written before: a retry after a lost reply)."""
    # The rows are the reservation: a queued, delayed or running job has its row
    # until it is settled, and then the finished-id memory (and result) take over.
    with immediate(conn):
        now = time.time()
        key = (ns, item.queue, item.job_id)
        queued = conn.execute(sql.JOB_EXISTS, key).fetchone()
        if queued is not None:
            return bool(queued[0] == item.envelope)
        if (
            conn.execute(sql.IS_FINISHED, (*key, now)).fetchone() is not None
            or conn.execute(sql.HAS_RESULT, (*key, now)).fetchone() is not None
        ):
            return False
        not_before = now if item.not_before is None else item.not_before
        conn.execute(INSERT_JOB, (*key, item.envelope, not_before, now, level_of(item.priority)))
        return True


class SqliteSyncWriter:
    """The enqueue writes of a SQLite broker for synchronous callers
    (:class:`vaultq.brokers.writer.SyncWriter`).

    A small pool of connections: a call takes an idle one (or opens one), writes in the
    calling thread and puts it back, so any number of threads write at once (SQLite
    serializes the transactions) and short-lived threads do not open a connection each.
    After a fork the child never touches the parent's connections (they are kept
    referenced, never closed, so the parent's locks and WAL index stay untouched)."""

    def __init__(
        self, namespace: str, connect: Callable[[], sqlite3.Connection], wake: WakeSender
    ) -> None:
        self._ns = namespace
        self._connect = connect
        self._wake = wake
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._inherited: list[sqlite3.Connection] = []
        self._generation = fork_generation()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._generation != fork_generation():
                self._inherited.extend(self._idle)
                self._idle = []
                self._generation = fork_generation()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        generation = fork_generation()
        try:
            yield conn
        finally:
            with self._lock:
                keep = generation == self._generation and not conn.in_transaction
                if keep and len(self._idle) < _POOL_IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None and generation == fork_generation():
                conn.close()

    def _write(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._connection() as conn:
                return fn(conn)
        except sqlite3.Error as exc:
            raise map_error(op, exc) from exc

    def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        if not items:
            return
        self._write("enqueue", lambda conn: insert_jobs(conn, self._ns, items))
        self._wake.wake()

    def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        written = self._write("enqueue", lambda conn: insert_unique(conn, self._ns, item))
        if written:
            self._wake.wake()
        return written

    def enqueue_keyed(self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float) -> str:
        # ttl is not needed here: the job row reserves the id until it is settled.
        holder = self._write(
            "enqueue",
            lambda conn: sqlite_unique.enqueue_keyed(conn, immediate, self._ns, item, key, key_ttl),
        )
        if holder == item.job_id:
            self._wake.wake()
        return holder

    def time(self) -> float:
        """This host's clock: every process of an embedded broker shares it."""
        return time.time()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            mine = self._generation == fork_generation()
        if mine:
            for conn in idle:
                conn.close()
