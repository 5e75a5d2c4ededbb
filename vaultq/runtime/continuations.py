"""The worker's side of workflows: feed a step the previous step's result, and move the
workflow forward by enqueueing only the envelope the producer signed into the plan.

A worker never seals a workflow job (in split-trust deployments it cannot): the next
step's envelope was sealed and signed by the producer and travels inside the current
step's own producer-signed body (``meta.flow.next``). The worker that finishes step ``k``
checks that this envelope opens under the producer's signature and is step ``k + 1`` of
the same workflow, for the same principal, and writes it with "enqueue unless it
exists" under its fixed job id *before* step ``k`` settles: a crash between the two
re-runs step ``k`` and the second write is a no-op, so a continuation is neither lost
nor duplicated. See ``docs/workflows.md``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, NoReturn

import msgspec

from vaultq.brokers.base import EnqueueItem
from vaultq.envelope import (
    FlowStep,
    Header,
    OpenedJob,
    ResultBody,
    open_job,
    open_result,
    peek_header,
)
from vaultq.errors import EnvelopeError, WorkflowRefused
from vaultq.jobs import JobStatus
from vaultq.policy import AUDIT_LOGGER

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "Fed",
    "Upstream",
    "Waiting",
    "check_next",
    "feed",
    "forward",
    "open_input",
    "open_successor",
    "refuse",
]

log = logging.getLogger("vaultq.workflows")
audit = logging.getLogger(AUDIT_LOGGER)


class _AnyTask:
    def __contains__(self, name: object) -> bool:
        return True


_ANY_TASK = _AnyTask()


class Fed(msgspec.Struct, frozen=True):
    """The feeding step succeeded: ``payload`` is its result's JSON."""

    payload: bytes


class Waiting(msgspec.Struct, frozen=True):
    """The feeding step has no result yet (this copy was written before it settled)."""


class Upstream(msgspec.Struct, frozen=True):
    """The feeding step did not succeed, or its result cannot be this step's input."""

    reason: str


def open_input(
    app: App, opened: OpenedJob, data: bytes, job_id: str, task: str | None, queue: str | None
) -> ResultBody:
    """Open the result of ``job_id`` that ``opened`` consumes (a previous step's, a chord
    member's, a dependency's) under the app's keyring, bound to that job's task and queue
    and to this job's app. Raises ``EnvelopeError``."""
    return open_result(
        data,
        app.keyring,
        app=opened.header.app,
        job_id=job_id,
        task=task,
        queue=queue,
        max_size=app.max_envelope_size,
        accept_v1=app.accept_envelope_v1,
    )


async def feed(app: App, opened: OpenedJob, flow: FlowStep) -> Fed | Waiting | Upstream:
    """This step's payload: the SUCCEEDED result of the step the producer's plan names.

    The result is opened under the app's keyring bound to the feeding step's job id,
    task and queue (all from this producer-signed envelope), and must belong to the same
    principal: a result of another job, task or principal never feeds a step."""
    if flow.input_task is None or flow.input_queue is None or flow.step == 0:
        return Fed(bytes(opened.body.payload))
    source = f"{flow.workflow}.{flow.step - 1}"
    broker = await app.broker()
    data = await broker.get_result(flow.input_queue, source)
    if data is None:
        # The previous step writes this step before it settles (so a crash cannot lose
        # it): its result is usually a moment away.
        data = await broker.wait_result(flow.input_queue, source, 2.0)
    if data is None:
        return Waiting()
    try:
        body = open_input(app, opened, data, source, flow.input_task, flow.input_queue)
    except EnvelopeError as exc:
        return Upstream(f"the result of step {flow.step - 1} does not open: {type(exc).__name__}")
    principal = opened.body.principal
    if body.principal_id != (principal.id if principal is not None else None):
        return Upstream(f"the result of step {flow.step - 1} belongs to another principal")
    if body.status != JobStatus.SUCCEEDED or body.value is None:
        return Upstream(f"step {flow.step - 1} ended {body.status}")
    return Fed(bytes(body.value))


def open_successor(app: App, envelope: bytes, app_name: str) -> OpenedJob:
    """Open a job envelope sealed inside this one (a workflow's next step, a chord's
    callback) with every check ``open_job`` makes (producer's signature, key, size,
    form) but time and task registry: that job starts its own validity window and may
    run on workers with other tasks than this one. Raises ``EnvelopeError``."""
    peek = peek_header(envelope, max_size=app.max_envelope_size)
    return open_job(
        envelope,
        app.keyring,
        app=app_name,
        tasks=_ANY_TASK,
        now=app.clock.now(),
        queue=peek.queue,
        job_id=peek.job_id,
        skew=math.inf,
        max_size=app.max_envelope_size,
        accept_v1=app.accept_envelope_v1,
    )


def check_next(app: App, opened: OpenedJob, flow: FlowStep) -> tuple[Header, bytes] | None:
    """The next step's envelope and header when the plan names one; raises
    ``WorkflowRefused`` (audited) when it is not exactly the step the plan names."""
    envelope = flow.next
    if envelope is None:
        return None
    header = opened.header
    try:
        nxt = open_successor(app, envelope, header.app)
    except EnvelopeError as exc:
        _refuse(header, flow, f"the next step's envelope does not open ({type(exc).__name__})")
    nflow = nxt.body.meta.flow
    expected = f"{flow.workflow}.{flow.step + 1}"
    if (
        nflow is None
        or nxt.header.job_id != expected
        or nflow.workflow != flow.workflow
        or nflow.step != flow.step + 1
        or nflow.input_task != header.task
        or nflow.input_queue != header.queue
        or nxt.header.app != header.app
    ):
        _refuse(header, flow, f"the next envelope is not step {flow.step + 1} of this workflow")
    if nxt.body.principal != opened.body.principal:
        _refuse(header, flow, "the next step names another principal than this step")
    return nxt.header, envelope


def refuse(
    header: Header,
    flow: FlowStep,
    why: str,
    *,
    role: str = "step",
    refused: str = "continuation",
    undone: str = "nothing was enqueued",
) -> NoReturn:
    """Audit a workflow job's refused successor (``refused``: what was refused, a
    continuation or a chord callback) and raise ``WorkflowRefused``."""
    audit.warning(
        "workflow %s %s %d: %s refused: %s",
        flow.workflow,
        role,
        flow.step,
        refused,
        why,
        extra={
            "vaultq": {"job_id": header.job_id, "decision": "refused", "workflow": flow.workflow}
        },
    )
    raise WorkflowRefused(f"workflow {flow.workflow} {role} {flow.step}: {why}; {undone}")


def _refuse(header: Header, flow: FlowStep, why: str) -> NoReturn:
    refuse(header, flow, why)


async def forward(app: App, opened: OpenedJob, flow: FlowStep) -> bool:
    """Enqueue the next step the plan names (unless it exists); False when there is none
    or it was already written. Raises ``WorkflowRefused`` for anything the plan does
    not name and ``BrokerError`` when the write fails (the step is then not settled)."""
    checked = check_next(app, opened, flow)
    if checked is None:
        return False
    header, envelope = checked
    broker = await app.broker()
    ttl = max(1.0, header.expires_at / 1000 - app.clock.now()) + app.clock_skew
    written = await broker.enqueue_unique(
        EnqueueItem(queue=header.queue, job_id=header.job_id, envelope=envelope, not_before=None),
        ttl=ttl,
    )
    log.debug(
        "workflow %s: step %d %s",
        flow.workflow,
        flow.step + 1,
        "enqueued" if written else "already enqueued",
    )
    return written
