"""What a workflow job does between its outcome and its settlement (called by the
executor for every job whose body has ``meta.flow``).

A chain step that succeeded writes the next step the plan names
(``vaultq.runtime.continuations.forward``); a chord member that finished records its
sealed result and, when it completes the chord, writes the callback
(``vaultq.runtime.chords.arrive``). Both happen *before* the settlement is applied: a
crash in between re-runs the job, and the broker writes are idempotent (the same job id,
the same member), so nothing is lost or written twice. A broker error hands the job
back (it runs again) instead of settling it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from vaultq.brokers.base import Ack, Release, Settlement
from vaultq.envelope import FlowStep, OpenedJob, peek_header
from vaultq.errors import WorkflowRefused
from vaultq.runtime import chords, continuations

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["before_settle", "keep_for_next"]

log = logging.getLogger("vaultq.worker")


async def before_settle(
    app: App, opened: OpenedJob, flow: FlowStep | None, settlement: Settlement
) -> Settlement:
    """``settlement``, after moving the workflow forward; a ``Release`` when the broker
    write failed (the job runs again)."""
    if flow is None:
        return settlement
    if flow.chord is not None:
        return await chords.arrive(app, opened, flow, settlement)
    if flow.next is None or not isinstance(settlement, Ack):
        return settlement
    try:
        await continuations.forward(app, opened, flow)
    except WorkflowRefused:
        return settlement  # audited; the step itself did succeed
    except Exception:
        log.exception(
            "workflow %s: could not enqueue step %d; step %d runs again",
            flow.workflow,
            flow.step + 1,
            flow.step,
        )
        return Release(delivery=settlement.delivery, not_before=app.clock.now() + 5.0)
    return keep_for_next(app, settlement, flow.next)


def keep_for_next(app: App, settlement: Ack, next_step: bytes) -> Ack:
    """A result that feeds the next step expires with the workflow: it is kept until that
    step can no longer start (its producer-signed expiry, which already counts the
    earlier steps' windows), or its own ``result_ttl`` when longer; so a step that waited
    long in its queue still finds its input, and the input does not outlive the
    workflow. The finished-id memory is stretched to match (it outlives the result)."""
    now = app.clock.now()
    until = peek_header(next_step, max_size=app.max_envelope_size).expires_at / 1000
    ttl = max(settlement.result_ttl, until - now + app.clock_skew)
    remember = max(settlement.remember_until, now + ttl)
    return msgspec.structs.replace(settlement, result_ttl=ttl, remember_until=remember)
