"""The SQLite broker's database file: the URL, creating the file privately, the schema
migrations, write transactions and the mapping of sqlite3 errors into vaultq's tree.

Internal to :mod:`vaultq.brokers.sqlite`; the names here are not public API.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from vaultq.brokers import sqlite_sql as sql
from vaultq.brokers.sqlite_sql import SCHEMA_VERSION
from vaultq.errors import BrokerError, BrokerUnavailable, ConfigurationError
from vaultq.files import private_dir

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "MEMORY",
    "SYNCHRONOUS",
    "immediate",
    "lease_commit",
    "map_error",
    "migrate",
    "parse_url",
    "prepare_file",
    "schema_once",
]

logger = logging.getLogger("vaultq.brokers.sqlite")

DEFAULT_BUSY_TIMEOUT = 10.0
"""Seconds a transaction waits for another process's write lock before giving up."""
MEMORY = ":memory:"
SYNCHRONOUS = ("full", "normal")


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
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


def schema_once(conn: sqlite3.Connection, schema: Sequence[str], done_on: int | None) -> int:
    """Run ``schema`` (CREATE ... IF NOT EXISTS statements, so concurrent first uses are
    harmless) in one write transaction, unless ``done_on`` is already this connection's
    id; returns the id to remember (once per connection)."""
    if done_on != id(conn):
        with immediate(conn):
            for statement in schema:
                conn.execute(statement)
    return id(conn)


@contextmanager
def lease_commit(conn: sqlite3.Connection, synchronous: str) -> Iterator[None]:
    """A fetch's transaction commits without its own fsync (``synchronous=NORMAL`` for
    it alone, then back to ``synchronous``). What it writes is leases, job-id claims and
    the quarantine of entries no worker may take: a power cut that loses them kills
    every worker of this host with them, so the jobs are simply delivered again, as
    at-least-once allows. The next commit at FULL (an ack, an enqueue) syncs the WAL
    with these frames in it, in order. It keeps one fsync off the path from enqueue to
    start. Enqueues and settlements keep ``synchronous``."""
    if synchronous != "full":
        yield
        return
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=FULL")


def migrate(conn: sqlite3.Connection) -> None:
    with immediate(conn):
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


def prepare_file(path: Path) -> None:
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


UNAVAILABLE_CODES = frozenset(
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


def map_error(op: str, exc: sqlite3.Error) -> BrokerError:
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
    if primary in UNAVAILABLE_CODES:
        return BrokerUnavailable(
            f"SQLite broker: {op} failed ({exc}); check that the database file and its "
            "directory exist, are writable by this user, and the disk is not full"
        )
    return BrokerError(
        f"SQLite broker: {op} failed ({type(exc).__name__}: {exc}); if the file is "
        "damaged, stop the workers and restore it or start with a new file"
    )


def parse_url(url: str) -> tuple[Path | None, str, float]:
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
