"""The worker's side of chords: a member records its sealed result in the broker and,
when it completes the chord, enqueues the callback the producer signed into the plan;
the callback's payload is gathered from those sealed results.

A member's body (producer-signed) carries ``meta.flow.chord.callback``: the callback's
complete envelope. The worker finishing a member (succeeded, or any final outcome when
the plan allows failures):

1. checks that the callback opens under the producer's signature and is exactly the
   callback of this workflow (job id ``<workflow>.<members>``, same app and principal,
   a gather over these members whose task and queue at this index are this job's);
   anything else is refused and audited, nothing is recorded or enqueued;
2. records its sealed result with ``chord_arrive`` (atomic, idempotent per member): the
   one arrival that completes the chord -- and any re-run of a member after that --
   learns it, so two members finishing at once cannot both miss the last arrival;
3. when complete, writes the callback with "enqueue unless it exists" under its fixed
   id: at most once, and a crash before the write re-runs the member, whose arrival is
   a no-op that still answers "complete";
4. only then settles. A broker error in 2 or 3 hands the member back (it runs again).

See ``docs/workflows.md`` ("Groups and chords").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NoReturn

import msgspec

from vaultq.brokers.base import Ack, Bury, EnqueueItem, Release, Settlement
from vaultq.brokers.chords import chord_store
from vaultq.envelope import Header, OpenedJob
from vaultq.envelope_types import FlowStep
from vaultq.errors import EnvelopeError, WorkflowRefused
from vaultq.jobs import JobStatus
from vaultq.policy import AUDIT_LOGGER
from vaultq.runtime.continuations import Fed, Upstream, Waiting, open_input, open_successor, refuse

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["arrive", "check_callback", "gather"]

log = logging.getLogger("vaultq.workflows")
audit = logging.getLogger(AUDIT_LOGGER)


def check_callback(app: App, opened: OpenedJob, flow: FlowStep) -> tuple[Header, FlowStep]:
    """The callback's header and plan when ``flow.chord.callback`` is exactly this
    workflow's callback; raises ``WorkflowRefused`` (audited) otherwise."""
    header = opened.header
    link = flow.chord
    if link is None:
        _refuse(header, flow, "this job is not a chord member")
    try:
        cb = open_successor(app, link.callback, header.app)
    except EnvelopeError as exc:
        _refuse(header, flow, f"the callback's envelope does not open ({type(exc).__name__})")
    cflow = cb.body.meta.flow
    plan = cflow.gather if cflow is not None else None
    if (
        cflow is None
        or plan is None
        or cb.header.job_id != f"{flow.workflow}.{flow.steps}"
        or cflow.workflow != flow.workflow
        or cflow.step != flow.steps
        or plan.members != flow.steps
        or plan.allow_failures != link.allow_failures
        or plan.task_of(flow.step) != header.task
        or plan.queue_of(flow.step) != header.queue
        or cb.header.app != header.app
    ):
        _refuse(header, flow, "the callback is not the one this workflow's plan names")
    if cb.body.principal != opened.body.principal:
        _refuse(header, flow, "the callback names another principal than this member")
    return cb.header, cflow


def _refuse(header: Header, flow: FlowStep, why: str) -> NoReturn:
    refuse(
        header,
        flow,
        why,
        role="member",
        refused="callback",
        undone="nothing was recorded or enqueued",
    )


async def arrive(app: App, opened: OpenedJob, flow: FlowStep, settlement: Settlement) -> Settlement:
    """Record a finished member and enqueue the callback when it completes the chord,
    before ``settlement`` is applied. Returns ``settlement``, or a ``Release`` (the
    member runs again) when the broker could not record or enqueue."""
    link = flow.chord
    if link is None or not isinstance(settlement, (Ack, Bury)) or settlement.result is None:
        return settlement  # not final (retry, release), or nothing to record
    if isinstance(settlement, Bury) and not link.allow_failures:
        # The callback can never run: the handle reports this member's outcome.
        return settlement
    try:
        cb_header, _ = check_callback(app, opened, flow)
    except WorkflowRefused:
        return settlement  # audited; the member itself did finish
    try:
        broker = await app.broker()
        until = cb_header.expires_at / 1000 + app.clock_skew
        complete = await chord_store(broker).chord_arrive(
            cb_header.queue,
            flow.workflow,
            flow.step,
            settlement.result,
            total=flow.steps,
            until=until,
        )
        if complete:
            written = await broker.enqueue_unique(
                EnqueueItem(
                    queue=cb_header.queue,
                    job_id=cb_header.job_id,
                    envelope=link.callback,
                    not_before=None,
                ),
                ttl=max(1.0, until - app.clock.now()),
            )
            log.debug(
                "workflow %s: member %d completed the chord; callback %s",
                flow.workflow,
                flow.step,
                "enqueued" if written else "already enqueued",
            )
    except Exception:
        log.exception(
            "workflow %s: could not record member %d; it runs again", flow.workflow, flow.step
        )
        return Release(delivery=settlement.delivery, not_before=app.clock.now() + 5.0)
    return settlement


async def gather(app: App, opened: OpenedJob, flow: FlowStep) -> Fed | Waiting | Upstream:
    """The callback's payload: ``{"results": [...]}`` (every member succeeded) or, when
    the plan allows failures, ``{"outcomes": [...]}`` -- built from the members' sealed
    results in the broker, each opened bound to its member's job id, task and queue
    (from this producer-signed envelope) and required to carry this job's principal."""
    plan = flow.gather
    if plan is None:
        return Fed(bytes(opened.body.payload))
    broker = await app.broker()
    recorded = await chord_store(broker).chord_results(opened.header.queue, flow.workflow)
    if len(recorded) < plan.members:
        # Only a callback written out of turn gets here (the completing member writes
        # it after the last arrival): it waits, and never runs on partial input.
        return Waiting()
    principal = opened.body.principal
    principal_id = principal.id if principal is not None else None
    parts: list[bytes] = []
    for i in range(plan.members):
        data = recorded.get(i)
        if data is None:
            return Waiting()
        try:
            member = f"{flow.workflow}.{i}"
            body = open_input(app, opened, data, member, plan.task_of(i), plan.queue_of(i))
        except EnvelopeError as exc:
            return Upstream(f"the result of member {i} does not open: {type(exc).__name__}")
        if body.principal_id != principal_id:
            return Upstream(f"the result of member {i} belongs to another principal")
        value = body.value if body.status == JobStatus.SUCCEEDED else None
        if not plan.allow_failures:
            if value is None:
                return Upstream(f"member {i} ended {body.status}")
            parts.append(bytes(value))
        elif value is not None:
            parts.append(b'{"type":"succeeded","index":%d,"value":%s}' % (i, bytes(value)))
        else:
            parts.append(_failed(i, body.status, body.error_type, body.error))
    key = b"outcomes" if plan.allow_failures else b"results"
    return Fed(b'{"%s":[%s]}' % (key, b",".join(parts)))


class _Failed(msgspec.Struct, tag="failed"):
    index: int
    status: str
    error_type: str | None
    error: str | None


def _failed(index: int, status: str, error_type: str | None, error: str | None) -> bytes:
    return msgspec.json.encode(_Failed(index, status, error_type, error))
