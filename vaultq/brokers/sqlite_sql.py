"""The SQL of the embedded broker: schema migrations and statements, in one place.

``vaultq/brokers/sqlite.py`` runs them; ``docs/sqlite.md`` explains the schema.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "CLEANUP",
    "CLEANUP_DEAD",
    "COUNT",
    "DEAD_INSERT",
    "DEAD_TRIM",
    "DELETE_JOB",
    "EXTEND_CLAIM",
    "GET_RESULT",
    "HAS_RESULT",
    "HOLDS_LEASE",
    "INSERT_JOB",
    "IS_CANCELLED",
    "IS_FINISHED",
    "JOB_EXISTS",
    "JOB_LEVEL",
    "LIVE_CLAIM",
    "MARK_CANCEL",
    "MIGRATIONS",
    "NEXT_DUE",
    "POISON_ROWS",
    "PUT_RESULT",
    "REMEMBER",
    "REQUEUE_JOB",
    "SCHEMA_VERSION",
    "SELECT_READY",
    "SELECT_READY_ALL",
    "UNCLAIM",
]

SCHEMA_VERSION = 7

# Migrations: MIGRATIONS[v] takes a database from schema version v to v + 1.
SCHEMA_V1 = (
    """CREATE TABLE vaultq_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        envelope BLOB NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        not_before REAL NOT NULL,
        enqueued_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        deliveries INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX vaultq_jobs_fetch ON vaultq_jobs (namespace, queue, not_before, id)",
    """CREATE TABLE vaultq_claims (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        row_id INTEGER NOT NULL,
        tag TEXT NOT NULL,
        consumer TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, job_id)
    )""",
    "CREATE INDEX vaultq_claims_until ON vaultq_claims (until)",
    """CREATE TABLE vaultq_results (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        data BLOB NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (namespace, queue, job_id)
    )""",
    "CREATE INDEX vaultq_results_expires ON vaultq_results (expires_at)",
    """CREATE TABLE vaultq_finished (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, job_id)
    )""",
    "CREATE INDEX vaultq_finished_until ON vaultq_finished (until)",
    """CREATE TABLE vaultq_cancels (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, job_id)
    )""",
    "CREATE INDEX vaultq_cancels_until ON vaultq_cancels (until)",
    """CREATE TABLE vaultq_dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at REAL NOT NULL,
        envelope BLOB
    )""",
    "CREATE INDEX vaultq_dead_queue ON vaultq_dead (namespace, queue, id)",
)
# v2: write-once outcomes and bounded garbage. An index to find a job id among queued
# rows (enqueue unless it exists), counters for entries removed without a dead letter,
# and the envelope size of a dead letter (a stub keeps the size, not the envelope).
SCHEMA_V2 = (
    "CREATE INDEX vaultq_jobs_job_id ON vaultq_jobs (namespace, queue, job_id)",
    """CREATE TABLE vaultq_counters (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        name TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (namespace, queue, name)
    )""",
    "ALTER TABLE vaultq_dead ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX vaultq_dead_at ON vaultq_dead (at)",
)
# v3: periodic jobs. A schedule's mark (newest tick claimed or passed over) and its
# newest fired tick, per queue (vaultq/brokers/sqlite_ticks.py).
SCHEMA_V3 = (
    """CREATE TABLE vaultq_schedules (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        name TEXT NOT NULL,
        mark REAL NOT NULL,
        fired REAL,
        PRIMARY KEY (namespace, queue, name)
    )""",
)
# v4: unique jobs. The lock of each unique key (a digest): the job id holding it, until.
SCHEMA_V4 = (
    """CREATE TABLE vaultq_unique (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, key)
    )""",
    "CREATE INDEX vaultq_unique_until ON vaultq_unique (until)",
)
# v5: concurrency and rate limits (vaultq/brokers/sqlite_limits.py).
SCHEMA_V5 = (
    """CREATE TABLE vaultq_limit_slots (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (namespace, queue, key, job_id)
    )""",
    """CREATE TABLE vaultq_limit_rates (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        tat REAL NOT NULL,
        last REAL,
        PRIMARY KEY (namespace, queue, key)
    )""",
    """CREATE TABLE vaultq_limit_turns (
        namespace TEXT NOT NULL,
        queue TEXT NOT NULL,
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (namespace, queue, job_id)
    )""",
    "CREATE INDEX vaultq_limit_turns_until ON vaultq_limit_turns (until)",
)
# Priorities within a queue (vaultq/priority.py): -1 low, 0 normal, 1 high. The CHECK
# keeps a hand-written row from holding a level no fetch reads (it would wait forever);
# the fetch reads one level at a time through vaultq_jobs_level.
SCHEMA_V6 = (
    "ALTER TABLE vaultq_jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0 "
    "CHECK (priority IN (-1, 0, 1))",
    "CREATE INDEX vaultq_jobs_level ON vaultq_jobs (namespace, queue, priority, not_before, id)",
    "ALTER TABLE vaultq_dead ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
)
# vaultq_jobs_level serves everything vaultq_jobs_fetch did (fetch, NEXT_DUE and
# POISON_ROWS seek it once per level): one index per job row again, so a job without a
# priority writes no more than before priorities.
SCHEMA_V7 = ("DROP INDEX IF EXISTS vaultq_jobs_fetch",)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
)

CLEANUP = (
    "DELETE FROM vaultq_results WHERE rowid IN "
    "(SELECT rowid FROM vaultq_results WHERE expires_at <= ? LIMIT ?)",
    "DELETE FROM vaultq_finished WHERE rowid IN "
    "(SELECT rowid FROM vaultq_finished WHERE until <= ? LIMIT ?)",
    "DELETE FROM vaultq_cancels WHERE rowid IN "
    "(SELECT rowid FROM vaultq_cancels WHERE until <= ? LIMIT ?)",
    "DELETE FROM vaultq_claims WHERE rowid IN "
    "(SELECT rowid FROM vaultq_claims WHERE until <= ? LIMIT ?)",
    "DELETE FROM vaultq_unique WHERE rowid IN "
    "(SELECT rowid FROM vaultq_unique WHERE until <= ? LIMIT ?)",
    "DELETE FROM vaultq_limit_turns WHERE rowid IN "
    "(SELECT rowid FROM vaultq_limit_turns WHERE until <= ? LIMIT ?)",
)
# Dead letters older than the age limit (the parameter is now - age).
CLEANUP_DEAD = (
    "DELETE FROM vaultq_dead WHERE rowid IN (SELECT rowid FROM vaultq_dead WHERE at <= ? LIMIT ?)"
)

# An envelope over the size limit (?1, 0 = none) is never handed to Python: NULL
# instead, plus its length, so the row becomes a dead-letter stub.
SELECT_READY = (
    "SELECT id, job_id, "
    "CASE WHEN ?1 > 0 AND length(envelope) > ?1 THEN NULL ELSE envelope END, "
    "attempt, enqueued_at, lease_owner, deliveries, length(envelope) FROM vaultq_jobs "
    "WHERE namespace = ?2 AND queue = ?3 AND priority = ?6 AND not_before <= ?4 "
    "ORDER BY not_before, id LIMIT ?5"
)
# Every level at once, highest first, FIFO within each (the usual fetch order): one
# statement of three index seeks, so a fetch costs one round trip into SQLite whatever
# the number of levels; the columns are SELECT_READY's.
SELECT_READY_ALL = (
    "SELECT id, job_id, env, attempt, enqueued_at, lease_owner, deliveries, size FROM ("
    "SELECT * FROM (SELECT id, job_id, "
    "CASE WHEN ?1 > 0 AND length(envelope) > ?1 THEN NULL ELSE envelope END AS env, "
    "attempt, enqueued_at, lease_owner, deliveries, length(envelope) AS size, priority, "
    "not_before FROM vaultq_jobs WHERE namespace = ?2 AND queue = ?3 AND priority = 1 "
    "AND not_before <= ?4 ORDER BY not_before, id LIMIT ?5) UNION ALL "
    "SELECT * FROM (SELECT id, job_id, "
    "CASE WHEN ?1 > 0 AND length(envelope) > ?1 THEN NULL ELSE envelope END AS env, "
    "attempt, enqueued_at, lease_owner, deliveries, length(envelope) AS size, priority, "
    "not_before FROM vaultq_jobs WHERE namespace = ?2 AND queue = ?3 AND priority = 0 "
    "AND not_before <= ?4 ORDER BY not_before, id LIMIT ?5) UNION ALL "
    "SELECT * FROM (SELECT id, job_id, "
    "CASE WHEN ?1 > 0 AND length(envelope) > ?1 THEN NULL ELSE envelope END AS env, "
    "attempt, enqueued_at, lease_owner, deliveries, length(envelope) AS size, priority, "
    "not_before FROM vaultq_jobs WHERE namespace = ?2 AND queue = ?3 AND priority = -1 "
    "AND not_before <= ?4 ORDER BY not_before, id LIMIT ?5)"
    ") ORDER BY priority DESC, not_before, id LIMIT ?5"
)
JOB_LEVEL = "SELECT priority FROM vaultq_jobs WHERE id = ?"
INSERT_JOB = (
    "INSERT INTO vaultq_jobs (namespace, queue, job_id, envelope, not_before, enqueued_at, "
    "priority) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Numbers sort before text and blobs in SQLite, and REAL affinity turns numeric text into
# numbers on insert: a not_before of text or blob (a row written by hand) is never ready.
# It is found with one index seek and quarantined.
# One index seek per priority level (the CHECK allows no other), the least of them.
NEXT_DUE = (
    "SELECT MIN(due) FROM ("
    "SELECT MIN(not_before) AS due FROM vaultq_jobs WHERE namespace = ?1 AND queue = ?2 "
    "AND priority = 1 AND typeof(not_before) IN ('integer', 'real') UNION ALL "
    "SELECT MIN(not_before) FROM vaultq_jobs WHERE namespace = ?1 AND queue = ?2 "
    "AND priority = 0 AND typeof(not_before) IN ('integer', 'real') UNION ALL "
    "SELECT MIN(not_before) FROM vaultq_jobs WHERE namespace = ?1 AND queue = ?2 "
    "AND priority = -1 AND typeof(not_before) IN ('integer', 'real'))"
)
POISON_ROWS = (
    "SELECT id, job_id, attempt, length(envelope) FROM vaultq_jobs "
    "WHERE namespace = ? AND queue = ? AND priority IN (1, 0, -1) AND not_before >= '' LIMIT 100"
)
JOB_EXISTS = (
    "SELECT envelope FROM vaultq_jobs WHERE namespace = ? AND queue = ? AND job_id = ? LIMIT 1"
)
COUNT = (
    "INSERT INTO vaultq_counters (namespace, queue, name, value) VALUES (?, ?, ?, 1) "
    "ON CONFLICT (namespace, queue, name) DO UPDATE SET value = value + 1"
)
DEAD_INSERT = (
    "INSERT INTO vaultq_dead "
    "(namespace, queue, job_id, reason, detail, attempt, at, envelope, size, priority) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keep the newest N dead letters of a queue (parameters: ns, queue, ns, queue, N).
DEAD_TRIM = (
    "DELETE FROM vaultq_dead WHERE namespace = ? AND queue = ? AND id <= "
    "(SELECT id FROM vaultq_dead WHERE namespace = ? AND queue = ? "
    "ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
# Take the claim unless another delivery holds it with a live lease (the upsert's WHERE).
CLAIM = (
    "INSERT INTO vaultq_claims (namespace, queue, job_id, row_id, tag, consumer, until) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, queue, job_id) DO UPDATE SET "
    "row_id = excluded.row_id, tag = excluded.tag, consumer = excluded.consumer, "
    "until = excluded.until WHERE vaultq_claims.tag = excluded.tag OR vaultq_claims.until <= ?"
)
LIVE_CLAIM = (
    "SELECT row_id, until FROM vaultq_claims "
    "WHERE namespace = ? AND queue = ? AND job_id = ? AND until > ?"
)
# The fencing check: this delivery's tag holds the claim and its lease is still live.
HOLDS_LEASE = (
    "SELECT 1 FROM vaultq_claims "
    "WHERE namespace = ? AND queue = ? AND job_id = ? AND tag = ? AND until > ?"
)
EXTEND_CLAIM = (
    "UPDATE vaultq_claims SET until = ? "
    "WHERE namespace = ? AND queue = ? AND job_id = ? AND tag = ?"
)
UNCLAIM = "DELETE FROM vaultq_claims WHERE namespace = ? AND queue = ? AND job_id = ? AND tag = ?"
IS_FINISHED = (
    "SELECT 1 FROM vaultq_finished WHERE namespace = ? AND queue = ? AND job_id = ? AND until > ?"
)
IS_CANCELLED = (
    "SELECT 1 FROM vaultq_cancels WHERE namespace = ? AND queue = ? AND job_id = ? AND until > ?"
)
HAS_RESULT = (
    "SELECT 1 FROM vaultq_results "
    "WHERE namespace = ? AND queue = ? AND job_id = ? AND expires_at > ?"
)
GET_RESULT = (
    "SELECT data FROM vaultq_results "
    "WHERE namespace = ? AND queue = ? AND job_id = ? AND expires_at > ?"
)
# Write-once: a live result is never replaced (only an expired row not yet cleaned up).
PUT_RESULT = (
    "INSERT INTO vaultq_results (namespace, queue, job_id, data, expires_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, queue, job_id) DO UPDATE SET "
    "data = excluded.data, expires_at = excluded.expires_at "
    "WHERE vaultq_results.expires_at <= ?"
)
# Never shorten a memory or a marker that is already there.
REMEMBER = (
    "INSERT INTO vaultq_finished (namespace, queue, job_id, until) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, queue, job_id) DO UPDATE SET until = MAX(until, excluded.until)"
)
MARK_CANCEL = (
    "INSERT INTO vaultq_cancels (namespace, queue, job_id, until) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, queue, job_id) DO UPDATE SET until = MAX(until, excluded.until)"
)
DELETE_JOB = "DELETE FROM vaultq_jobs WHERE id = ? AND namespace = ? AND job_id = ?"
# Only while this delivery still holds the lease: a stale retry/release changes nothing.
REQUEUE_JOB = (
    "UPDATE vaultq_jobs SET attempt = ?, not_before = ?, lease_owner = NULL, lease_until = NULL "
    "WHERE id = ? AND deliveries = ? AND namespace = ? AND job_id = ?"
)
