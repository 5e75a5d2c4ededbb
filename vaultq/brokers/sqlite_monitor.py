"""Heartbeats and the job event stream in the embedded broker (:mod:`vaultq.brokers.monitor`).

Two tables beside the jobs, created on first use (``CREATE TABLE IF NOT EXISTS``: they
need no schema migration and an older vaultq ignores them):

* ``vaultq_workers`` -- one row per worker process: its beat (JSON) and the time of its
  last beat on this host's clock (the embedded broker's clock);
* ``vaultq_events`` -- one row per event, ``seq`` increasing. After each append the rows
  of the namespace with ``seq`` at or below ``newest - maxlen`` are deleted (one index
  range), so a namespace keeps at most ``maxlen`` events -- fewer when several apps share
  one database file, since they share the sequence.

SQLite has no blocking read: a follower polls (every 50 ms to 250 ms while it waits).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import anyio

from vaultq.brokers.monitor import (
    EVENTS_MAXLEN,
    WORKER_FORGET,
    JobEvent,
    WorkerBeat,
    decode_beat,
    decode_event,
    encode,
)
from vaultq.brokers.sqlite_file import immediate, schema_once

__all__ = ["SCHEMA", "SqliteMonitoring"]

T = TypeVar("T")

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS vaultq_workers (
        namespace TEXT NOT NULL,
        worker TEXT NOT NULL,
        beat BLOB NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (namespace, worker)
    )""",
    """CREATE TABLE IF NOT EXISTS vaultq_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        event BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS vaultq_events_ns ON vaultq_events (namespace, seq)",
)

_POLL_MIN: Final = 0.05
_POLL_MAX: Final = 0.25


class SqliteMonitoring:
    """The :class:`~vaultq.brokers.monitor.Monitoring` operations, mixed into SqliteBroker.

    It relies on the broker's ``_run`` (one connection, one thread at a time, sqlite3
    errors mapped) and namespace.
    """

    if TYPE_CHECKING:
        _namespace: str

        async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    _monitor_schema_on: int | None = None

    def _monitor_schema(self, conn: sqlite3.Connection) -> None:
        self._monitor_schema_on = schema_once(conn, SCHEMA, self._monitor_schema_on)

    async def beat(self, beat: WorkerBeat, *, forget: float = WORKER_FORGET) -> float:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> float:
            self._monitor_schema(conn)
            now = time.time()
            with immediate(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO vaultq_workers (namespace, worker, beat, at) "
                    "VALUES (?, ?, ?, ?)",
                    (ns, beat.worker, encode(beat), now),
                )
                conn.execute(
                    "DELETE FROM vaultq_workers WHERE namespace = ? AND at < ?",
                    (ns, now - forget),
                )
            return now

        return await self._run("beat", work)

    async def forget_worker(self, worker: str) -> None:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> None:
            self._monitor_schema(conn)
            with immediate(conn):
                conn.execute(
                    "DELETE FROM vaultq_workers WHERE namespace = ? AND worker = ?", (ns, worker)
                )

        await self._run("forget_worker", work)

    async def workers(self, *, forget: float = WORKER_FORGET) -> tuple[float, list[WorkerBeat]]:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> tuple[float, list[WorkerBeat]]:
            self._monitor_schema(conn)
            now = time.time()
            rows = conn.execute(
                "SELECT beat, at FROM vaultq_workers WHERE namespace = ? AND at >= ? ORDER BY at",
                (ns, now - forget),
            ).fetchall()
            beats = [decode_beat(bytes(beat), float(at)) for beat, at in rows]
            return now, [b for b in beats if b is not None]

        return await self._run("workers", work)

    async def add_events(self, events: Sequence[JobEvent], *, maxlen: int = EVENTS_MAXLEN) -> None:
        if not events:
            return
        ns = self._namespace
        rows = [(ns, encode(event)) for event in events]

        def work(conn: sqlite3.Connection) -> None:
            self._monitor_schema(conn)
            with immediate(conn):
                conn.executemany("INSERT INTO vaultq_events (namespace, event) VALUES (?, ?)", rows)
                newest = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                conn.execute(
                    "DELETE FROM vaultq_events WHERE namespace = ? AND seq <= ?",
                    (ns, int(newest) - max(1, maxlen)),
                )

        await self._run("add_events", work)

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, block: float = 0.0
    ) -> list[JobEvent]:
        ns = self._namespace
        limit = max(1, limit)
        start = _seq(after)

        def work(conn: sqlite3.Connection) -> list[JobEvent]:
            self._monitor_schema(conn)
            if start is None:
                rows = conn.execute(
                    "SELECT seq, event FROM vaultq_events WHERE namespace = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (ns, limit),
                ).fetchall()
                rows.reverse()
            else:
                rows = conn.execute(
                    "SELECT seq, event FROM vaultq_events WHERE namespace = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (ns, start, limit),
                ).fetchall()
            events = [decode_event(bytes(data), str(seq)) for seq, data in rows]
            return [e for e in events if e is not None]

        deadline = time.monotonic() + max(0.0, block)
        pause = _POLL_MIN
        while True:
            events = await self._run("read_events", work)
            if events or start is None or time.monotonic() >= deadline:
                return events
            await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(_POLL_MAX, pause * 1.5)

    async def last_event_id(self) -> str:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> str:
            self._monitor_schema(conn)
            row = conn.execute(
                "SELECT MAX(seq) FROM vaultq_events WHERE namespace = ?", (ns,)
            ).fetchone()
            return "" if row is None or row[0] is None else str(row[0])

        return await self._run("last_event_id", work)


def _seq(after: str | None) -> int | None:
    """A position from :meth:`SqliteMonitoring.read_events` (``""``: from the start)."""
    if after is None:
        return None
    try:
        return int(after) if after else 0
    except ValueError:
        return 0
