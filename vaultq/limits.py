"""Concurrency and rate limits of tasks, enforced across every worker through the broker.

``@app.task(max_concurrency=2)``: at most two attempts of the task run at once anywhere;
``@app.task(rate_limit="100/m")``: starts are spaced evenly at that rate (GCRA, no burst);
``limit_key=lambda payload: ...``: a limit per key (one export per customer at a time).

Checked by the worker after a job is authorized and before it runs, with one broker round
trip (:meth:`vaultq.brokers.base.Limits.check_limits`). A job that may not start yet is
handed back (``Release``: not a failure, not a retry, its attempt unchanged) to be delivered
again when its turn comes (rate) or shortly (concurrency), so it never holds a worker slot
nor blocks other tasks' jobs while it waits. A running attempt holds its concurrency slot
through its job-id claim: the slot comes back when the job settles, or with the lease when
its worker dies.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from typing import TYPE_CHECKING, Any

import anyio

from vaultq.brokers.base import Broker, Limits
from vaultq.errors import BrokerError, ConfigurationError

if TYPE_CHECKING:
    from vaultq.tasks import Task

__all__ = ["BUSY_RETRY", "HOLD_MAX", "Limiter", "parse_rate"]

log = logging.getLogger("vaultq.worker")

BUSY_RETRY = (0.2, 0.6)
"""Seconds (uniform range) before a job that found every concurrency slot held is
delivered again: short enough to follow the slots, jittered so waiters spread out."""
HOLD_MAX = 0.25
"""A job whose turn is at most this many seconds away waits for it in the worker instead of
being handed back: a job handed back is delivered again up to a fetch block (1 s) late, and
for a busy rate the gaps would add up. Longer waits are handed back (no slot held)."""
_KEEP = 3600.0
"""Seconds limit state outlives its last use in the broker."""
_HOLDS = 4
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smhd])\s*$")


def parse_rate(text: str) -> float:
    """Seconds between two starts for ``"100/m"``, ``"20/s"``, ``"5/10s"``, ``"1/h"``."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"rate_limit {text!r} is not a rate: write N/s, N/m, N/h or N/d (N > 0), "
            "or N/<k><unit> such as '5/10s'"
        )
    per = float(match.group(2) or 1) * _UNITS[match.group(3)]
    return per / float(match.group(1))


def _digest(task: str, kind: str, key: str | None) -> str:
    # Limit keys often name a customer: the broker holds a digest, never the key.
    return hashlib.sha256(f"{task}\0{kind}\0{key or ''}".encode()).hexdigest()[:40]


class Limiter:
    """Asks the broker whether one job of a limited task may start."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def wait(self, task: Task[Any, Any], payload: Any, job_id: str, queue: str) -> float:
        """0 when the job may start now; otherwise the seconds to hand it back for."""
        if task.max_concurrency is None and task.rate_interval is None:
            return 0.0
        if not isinstance(self.broker, Limits):
            log.warning(
                "task %s has limits but the broker %s cannot enforce them; running it",
                task.name,
                self.broker.url,
            )
            return 0.0
        key = None
        if task.limit_key is not None:
            try:
                key = task.limit_key(payload)
            except Exception as exc:  # a broken key function must not crash the worker
                log.error("task %s: limit_key raised %s; retrying soon", task.name, type(exc))
                return 5.0
        concurrency = (
            None
            if task.max_concurrency is None
            else (_digest(task.name, "c", key), task.max_concurrency)
        )
        rate = (
            None
            if task.rate_interval is None
            else (_digest(task.name, "r", key), task.rate_interval)
        )
        for _ in range(_HOLDS):
            try:
                wait = await self.broker.check_limits(
                    queue, job_id, concurrency=concurrency, rate=rate, keep=_KEEP
                )
            except BrokerError as exc:
                log.warning("limits of job %s not checked (%s); trying again soon", job_id, exc)
                return 1.0
            if wait < 0:
                return random.uniform(*BUSY_RETRY)  # nosec B311 - jitter, protects nothing
            if wait == 0 or wait > HOLD_MAX:
                return wait
            await anyio.sleep(wait)
        return HOLD_MAX
