"""A fetch's transaction on the embedded broker commits at ``synchronous=NORMAL`` (no
fsync of its own: a lost lease only means the job is delivered again) and leaves the
connection at ``FULL`` for the enqueues and settlements that follow, even when the
transaction fails; at ``?synchronous=normal`` nothing changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vaultq.brokers.sqlite_file import immediate, lease_commit

FULL, NORMAL = 2, 1


def _synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def test_a_lease_commit_runs_at_normal_and_restores_full(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (n INTEGER)")
        with lease_commit(conn, "full"), immediate(conn):
            assert _synchronous(conn) == NORMAL
            conn.execute("INSERT INTO t VALUES (1)")
        assert _synchronous(conn) == FULL
        with pytest.raises(RuntimeError), lease_commit(conn, "full"), immediate(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("the fetch failed midway")
        assert _synchronous(conn) == FULL
        assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]  # rolled back
        conn.execute("PRAGMA synchronous=NORMAL")
        with lease_commit(conn, "normal"), immediate(conn):
            assert _synchronous(conn) == NORMAL
        assert _synchronous(conn) == NORMAL
    finally:
        conn.close()
