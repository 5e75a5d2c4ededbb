"""The embedded broker's concurrency and rate limits (:class:`vaultq.brokers.base.Limits`).

One ``BEGIN IMMEDIATE`` transaction per check, on this host's clock, with the same rules
as the Redis script (``vaultq/brokers/lua/limit.lua``): a slot counts while its job's
claim lives; the rate is a GCRA whose waiting jobs keep a reserved turn.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["check_limits"]

Transaction = Callable[[sqlite3.Connection], AbstractContextManager[None]]

_HOLDERS = (
    "SELECT s.job_id, EXISTS (SELECT 1 FROM vaultq_claims c WHERE c.namespace = s.namespace "
    "AND c.queue = s.queue AND c.job_id = s.job_id AND c.until > ?) "
    "FROM vaultq_limit_slots s WHERE s.namespace = ? AND s.queue = ? AND s.key = ?"
)
_DROP_SLOT = (
    "DELETE FROM vaultq_limit_slots WHERE namespace = ? AND queue = ? AND key = ? AND job_id = ?"
)
_ADD_SLOT = "INSERT INTO vaultq_limit_slots (namespace, queue, key, job_id) VALUES (?, ?, ?, ?)"
_TURN = "SELECT at FROM vaultq_limit_turns WHERE namespace = ? AND queue = ? AND job_id = ?"
_DROP_TURN = "DELETE FROM vaultq_limit_turns WHERE namespace = ? AND queue = ? AND job_id = ?"
_ADD_TURN = (
    "INSERT OR REPLACE INTO vaultq_limit_turns (namespace, queue, job_id, at, until) "
    "VALUES (?, ?, ?, ?, ?)"
)
_TAT = "SELECT tat FROM vaultq_limit_rates WHERE namespace = ? AND queue = ? AND key = ?"
_SET_TAT = (
    "INSERT INTO vaultq_limit_rates (namespace, queue, key, tat) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (namespace, queue, key) DO UPDATE SET tat = excluded.tat"
)
_LAST = "SELECT last FROM vaultq_limit_rates WHERE namespace = ? AND queue = ? AND key = ?"
_SET_LAST = "UPDATE vaultq_limit_rates SET last = ? WHERE namespace = ? AND queue = ? AND key = ?"


def check_limits(
    conn: sqlite3.Connection,
    immediate: Transaction,
    ns: str,
    queue: str,
    job_id: str,
    concurrency: tuple[str, int] | None,
    rate: tuple[str, float] | None,
    keep: float,
) -> float:
    """0: start now; -1: every slot is held; > 0: seconds until this job's turn."""
    with immediate(conn):
        now = time.time()
        took = False
        if concurrency is not None:
            key, limit = concurrency
            holders = conn.execute(_HOLDERS, (now, ns, queue, key)).fetchall()
            if job_id not in {h for h, _ in holders}:
                live = 0
                for holder, alive in holders:
                    if alive:
                        live += 1
                    else:
                        conn.execute(_DROP_SLOT, (ns, queue, key, holder))
                if live >= limit:
                    return -1.0
                conn.execute(_ADD_SLOT, (ns, queue, key, job_id))
                took = True
        if rate is None:
            return 0.0
        key, interval = rate
        row = conn.execute(_TURN, (ns, queue, job_id)).fetchone()
        if row is not None:
            wait = float(row[0]) - now
        else:
            found = conn.execute(_TAT, (ns, queue, key)).fetchone()
            tat = max(float(found[0]) if found else 0.0, now)
            conn.execute(_SET_TAT, (ns, queue, key, tat + interval))
            wait = tat - now
        if wait <= 0:
            # Its turn has come; starts are spaced too, so late deliveries cannot bunch.
            found = conn.execute(_LAST, (ns, queue, key)).fetchone()
            gap = (float(found[0]) if found and found[0] is not None else 0.0) + interval - now
            if gap <= 0:
                conn.execute(_SET_LAST, (now, ns, queue, key))
                conn.execute(_DROP_TURN, (ns, queue, job_id))
                return 0.0
            wait = gap
        conn.execute(_ADD_TURN, (ns, queue, job_id, now + wait, now + wait + keep))
        if took and concurrency is not None:
            conn.execute(_DROP_SLOT, (ns, queue, concurrency[0], job_id))
        return wait
