"""The worker's side of ``depends_on=`` (see ``vaultq.depends``): before a dependent job
runs, read the sealed outcome of each job its producer-signed envelope names.

Every outcome is opened under the app's keyring bound to the dependency's job id, task
and queue as sealed by the producer, so an outcome of another job (or a forged one that
does not open) never releases the dependent. The check happens at each delivery: a
dependent handed back because a dependency had not finished is looked at again later,
and a crash at any point only leads to another delivery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultq.brokers.base import Delivery, Release, Settlement
from vaultq.envelope import OpenedJob
from vaultq.errors import EnvelopeError
from vaultq.jobs import JobStatus
from vaultq.runtime.continuations import open_input

if TYPE_CHECKING:
    from vaultq.runtime.execute import Executor
    from vaultq.runtime.outcomes import Outcomes
    from vaultq.tasks import Task

__all__ = ["DEPENDENCY_FAILED", "MAX_WAIT", "MIN_WAIT", "gate"]

DEPENDENCY_FAILED = "vaultq.DependencyFailed"
"""``error_type`` of a dependent that ended ``cancelled`` because a dependency did not
succeed (its dead-letter reason is ``dependency_failed``; ``handle.result()`` raises
``vaultq.DependencyFailed``)."""
MIN_WAIT = 1.0
MAX_WAIT = 30.0
"""Seconds before a waiting dependent is looked at again: a tenth of how long it has
waited so far, within these bounds (a long wait costs one fetch every 30 s)."""


async def gate(
    executor: Executor, delivery: Delivery, opened: OpenedJob, task: Task[Any, Any]
) -> Settlement | None:
    """None when every dependency succeeded (the job may run); otherwise its settlement:
    ``cancelled`` when one ended without succeeding, else a ``Release`` to look again."""
    app, outcomes = executor.app, executor.outcomes
    depends = opened.body.meta.depends or ()
    broker = await app.broker()
    waiting = False
    for dep in depends:
        data = await broker.get_result(dep.queue, dep.job_id)
        if data is None:
            waiting = True  # not finished (or its outcome expired: see docs/workflows.md)
            continue
        try:
            body = open_input(app, opened, data, dep.job_id, dep.task, dep.queue)
        except EnvelopeError as exc:
            why = f"the outcome of dependency {dep.job_id} does not open ({type(exc).__name__})"
            return _failed(outcomes, delivery, opened, task, why)
        if body.status != JobStatus.SUCCEEDED:
            why = f"dependency {dep.job_id} ({dep.task}) ended {body.status}"
            return _failed(outcomes, delivery, opened, task, why)
    if not waiting:
        return None
    now = app.clock.now()
    waited = now - opened.header.issued_at / 1000
    return Release(delivery=delivery, not_before=now + min(MAX_WAIT, max(MIN_WAIT, waited / 10)))


def _failed(
    outcomes: Outcomes, delivery: Delivery, opened: OpenedJob, task: Task[Any, Any], why: str
) -> Settlement:
    return outcomes.finish(
        delivery,
        opened,
        JobStatus.CANCELLED,
        task=task,
        started=None,
        error_type=DEPENDENCY_FAILED,
        error=why,
        reason="dependency_failed",
    )
