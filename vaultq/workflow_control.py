"""Cancelling a workflow (``WorkflowHandle.cancel``): stop what has not run, cancel the
step that runs, and make sure no step is enqueued afterwards.

A chain moves forward by the worker of step ``k`` writing step ``k + 1`` with "enqueue
unless it exists" under its fixed job id (``vaultq.runtime.continuations``). Cancelling
walks the steps in order and, for each, does one of two atomic broker steps:

* the step was never written: a **tombstone** (``Broker.tombstone``) stores a sealed
  CANCELLED outcome under its job id and remembers the id as finished. The forwarding
  write of that id is then refused by the broker, whatever the worker of step ``k``
  does. A tombstone and a forwarding write racing for one id have exactly one winner;
  so a step finishing at the very moment ``cancel()`` runs either wrote the next step
  before the tombstone (then the walk finds it, below) or never writes it;
* the step exists: job cancellation (``vaultq.operations.cancel_job``): a cancel marker,
  then a waiting entry is dead-lettered at once with a sealed CANCELLED outcome (it never
  runs, so it never forwards); a running one is cancelled at its next await. A running
  step may still finish successfully before it notices, and write the next step: the
  walk goes on to that one.

The walk stops at the first step that will never run (tombstoned or dropped while
waiting), or that ended without succeeding (the chain stopped there already).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vaultq.brokers.base import CancelState, Tombstones
from vaultq.envelope import Header, ResultBody, seal_result
from vaultq.errors import ConfigurationError
from vaultq.jobs import JobStatus
from vaultq.operations import CancelOutcome, cancel_job
from vaultq.policy import AUDIT_LOGGER

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.tasks import Task

__all__ = ["CANCELLED_ERROR", "cancel_workflow", "cancelled_result", "workflow_horizon"]

audit = logging.getLogger(AUDIT_LOGGER)

CANCELLED_ERROR = "vaultq.WorkflowCancelled"
"""``error_type`` of the outcome a tombstone stores for a step cancelled before it was
enqueued."""


def workflow_horizon(tasks: Sequence[Task[Any, Any]]) -> float:
    """Seconds a workflow of ``tasks`` may take at most: each step's queue wait
    (``expires``), deadline times attempts and backoff, added up. Every step's envelope
    expires within this long after the workflow starts."""
    total = 0.0
    for task in tasks:
        options = task.options
        total += options.expires + options.timeout_ceiling * task.max_attempts
        total += options.max_backoff * options.retries
    return total


async def cancel_workflow(
    app: App, workflow_id: str, tasks: Sequence[Task[Any, Any]]
) -> CancelState:
    """Cancel workflow ``workflow_id`` (steps ``tasks``); see the module docstring.
    FINISHED when it had already ended (nothing changed), else REQUESTED."""
    broker = await app.broker()
    if not isinstance(broker, Tombstones):
        raise ConfigurationError(
            f"the broker {broker.url} cannot cancel workflows: it has no tombstone "
            "operation (vaultq.brokers.base.Tombstones); use a built-in broker, or add "
            "the operation to this one"
        )
    now = app.clock.now()
    # A tombstone must outlive every write that could still target its id: the step
    # before it can run (and forward) until its own envelope expires at the latest.
    remember_until = now + workflow_horizon(tasks) + app.clock_skew
    requested = False
    for i, task in enumerate(tasks):
        job_id = f"{workflow_id}.{i}"
        tomb = _cancelled_result(app, task, job_id, now, remember_until)
        if await broker.tombstone(
            task.queue,
            job_id,
            result=tomb,
            result_ttl=task.options.result_ttl,
            remember_until=remember_until,
        ):
            audit.info(
                "workflow %s cancelled: step %d (%s) will never be enqueued",
                workflow_id,
                i,
                task.name,
                extra={
                    "vaultq": {"job_id": job_id, "decision": "cancelled", "workflow": workflow_id}
                },
            )
            return CancelState.REQUESTED
        found = await cancel_job(app, job_id, [task.queue])
        if found is CancelOutcome.PENDING:
            return CancelState.REQUESTED  # it never runs, so it never writes the next step
        if found is CancelOutcome.FINISHED:
            status = await app.results.status(task.queue, job_id, task.name)
            if status is not JobStatus.SUCCEEDED:
                return CancelState.FINISHED  # the chain stopped at this step by itself
            requested = False
            continue
        # Running (or finishing right now): it may still succeed and write the next step
        # before it sees the cancel, so that one is stopped too.
        requested = True
    # Past the last step: the workflow ended before the cancel (FINISHED), or its last
    # step was running and is being cancelled (REQUESTED; it may still finish first).
    return CancelState.REQUESTED if requested else CancelState.FINISHED


def _cancelled_result(
    app: App, task: Task[Any, Any], job_id: str, now: float, expires: float
) -> bytes:
    """The sealed CANCELLED outcome of a step that was never enqueued, bound to its job
    id, task and queue like the outcome a worker would have written."""
    now_ms = round(now * 1000)
    header = Header(
        app.envelope_version,
        job_id,
        app.name,
        task.name,
        task.queue,
        now_ms,
        now_ms,
        round(expires * 1000),
        "",
        "",
    )
    body = ResultBody(
        status=JobStatus.CANCELLED.value,
        error_type=CANCELLED_ERROR,
        error="the workflow was cancelled before this step was enqueued",
        finished_at=now,
    )
    return seal_result(app.keyring, header, body, now=now)


cancelled_result = _cancelled_result
"""The tombstone outcome, for ``vaultq.workflow_groups`` (a chord's unwritten callback)."""
