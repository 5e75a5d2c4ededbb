"""The embedded broker's chord operation (:class:`vaultq.brokers.chords.ChordStore`):
one ``BEGIN IMMEDIATE`` transaction per arrival, so two members settling at once (two
worker processes on one database) are serialized by SQLite's write lock.

The table is created on first use (``CREATE TABLE IF NOT EXISTS``), like the
monitoring tables: a database that never ran a chord has none.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar

from vaultq.brokers.chords import check_member
from vaultq.brokers.sqlite_file import immediate, schema_once

__all__ = ["SqliteChords"]

T = TypeVar("T")

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS vaultq_chords (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        chord TEXT NOT NULL,
        member INTEGER NOT NULL,
        result BLOB NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, chord, member)
    )""",
    "CREATE INDEX IF NOT EXISTS vaultq_chords_until ON vaultq_chords (until)",
)
_ARRIVE: Final = (
    "INSERT OR IGNORE INTO vaultq_chords (namespace, queue, chord, member, result, until) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_COUNT: Final = (
    "SELECT COUNT(*) FROM vaultq_chords WHERE namespace = ? AND queue = ? AND chord = ? "
    "AND until > ?"
)
_RESULTS: Final = (
    "SELECT member, result FROM vaultq_chords WHERE namespace = ? AND queue = ? "
    "AND chord = ? AND until > ?"
)
_CLEANUP: Final = (
    "DELETE FROM vaultq_chords WHERE rowid IN "
    "(SELECT rowid FROM vaultq_chords WHERE until <= ? LIMIT 100)"
)


class SqliteChords:
    """``chord_arrive`` / ``chord_results``, mixed into SqliteBroker (its ``_run``: one
    connection, one thread at a time, sqlite3 errors mapped)."""

    if TYPE_CHECKING:
        _namespace: str

        async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    _chord_schema_on: int | None = None

    def _chord_schema(self, conn: sqlite3.Connection) -> None:
        self._chord_schema_on = schema_once(conn, SCHEMA, self._chord_schema_on)

    async def chord_arrive(
        self, queue: str, chord: str, member: int, result: bytes, *, total: int, until: float
    ) -> bool:
        check_member(member, total)
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> bool:
            self._chord_schema(conn)
            with immediate(conn):
                now = time.time()
                conn.execute(_CLEANUP, (now,))
                conn.execute(_ARRIVE, (ns, queue, chord, member, bytes(result), until))
                (count,) = conn.execute(_COUNT, (ns, queue, chord, now)).fetchone()
            return int(count) >= total

        return await self._run("chord_arrive", work)

    async def chord_results(self, queue: str, chord: str) -> dict[int, bytes]:
        ns = self._namespace

        def work(conn: sqlite3.Connection) -> dict[int, bytes]:
            self._chord_schema(conn)
            rows = conn.execute(_RESULTS, (ns, queue, chord, time.time())).fetchall()
            return {int(member): bytes(result) for member, result in rows}

        return await self._run("chord_results", work)
