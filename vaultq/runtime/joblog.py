"""The one INFO line per finished job, on the ``vaultq.jobs`` logger.

Written when the worker has decided a delivery's outcome (the settlement it hands to the
settler). It carries ids, names, the attempt, the duration and the outcome -- never the
payload or the result. ``logging.getLogger("vaultq.jobs").setLevel(logging.WARNING)``
turns it off.
"""

from __future__ import annotations

import logging
import time

from vaultq.brokers.base import Ack, Bury, Drop, Release, Retry, Settlement
from vaultq.logs import JOBS_LOGGER
from vaultq.policy import safe_id
from vaultq.runtime.execute import JobSlot

__all__ = ["log_outcome", "outcome_of"]

log = logging.getLogger(JOBS_LOGGER)


def outcome_of(settlement: Settlement) -> str:
    """A short outcome code: ``succeeded``, ``retrying``, ``handed_back``, or the dead
    letter's reason (``failed``, ``timed_out``, ``denied``, ``rejected:<why>`` ...)."""
    if isinstance(settlement, Ack):
        # A quiet ack of a redelivered job that had already finished (nothing ran).
        if settlement.result is None and settlement.remember_until == 0:
            return "already_finished"
        return "succeeded"
    if isinstance(settlement, Retry):
        return "retrying"
    if isinstance(settlement, Release):
        return "handed_back"
    if isinstance(settlement, Drop):
        # A copy of a finished job (replayed, or redelivered after it settled): counted.
        return f"dropped:{settlement.reason}"
    bury: Bury = settlement
    return bury.reason


def log_outcome(slot: JobSlot, settlement: Settlement) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    d = settlement.delivery
    # The broker-given id and (for rejected entries) the task name are unauthenticated:
    # escape them so a crafted entry cannot forge log lines.
    job_id = safe_id(d.job_id)
    task = safe_id(slot.task) if slot.task else "-"
    outcome = safe_id(outcome_of(settlement))
    duration = max(0.0, time.time() - slot.started)
    log.info(
        "job %s task=%s queue=%s attempt=%d duration=%.3fs outcome=%s",
        job_id,
        task,
        d.queue,
        d.attempt,
        duration,
        outcome,
        extra={
            "vaultq": {
                "job_id": job_id,
                "task": task,
                "queue": d.queue,
                "attempt": d.attempt,
                "outcome": outcome,
                "duration": round(duration, 6),
            }
        },
    )
