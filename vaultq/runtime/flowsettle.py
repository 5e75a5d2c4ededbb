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

from vaultq.brokers.base import Ack, Release, Settlement
from vaultq.envelope import FlowStep, OpenedJob
from vaultq.errors import WorkflowRefused
from vaultq.runtime import chords, continuations

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["before_settle"]

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
    return settlement
