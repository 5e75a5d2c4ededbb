"""The job event stream as middleware: what ``vaultq events --follow`` prints.

``app.add_middleware(EventStream(app))`` (or ``vaultq worker --events``) appends one
:class:`~vaultq.brokers.monitor.JobEvent` per step of each job's life to the broker's
bounded stream (:mod:`vaultq.brokers.monitor`):

=============  ==========================================================================
kind           when (``reason``)
=============  ==========================================================================
enqueued       the broker took the job (producer side)
started        the task is about to be called (the envelope opened, the policy allowed it)
succeeded      the result is stored
retried        the attempt failed and the job will run again (``failed``, ``timed_out``)
dead           the job ended for good without a result (``failed``, ``timed_out``,
               ``denied``, ``expired``, ``internal_error``, ``rejected:<why>``)
cancelled      cancelled by id (queued or running)
handed_back    released unrun or interrupted (shutdown); it will be delivered again
=============  ==========================================================================

Events carry ids, the task, queue, attempt, reason, duration and worker name -- the
fields the middleware protocol gives, which never include a payload, a result, a
principal or key material. A rejected delivery's job id is the broker's unauthenticated
claim (its task is left empty).

Off by default: each event costs a share of one batched broker write (Redis ``XADD``,
SQLite ``INSERT``) and storage for the newest ``maxlen`` events (docs/observability.md
has the measured cost). Events are written from a background task: a slow broker never
delays a job; past :data:`~vaultq.runtime.presence.EVENT_BUFFER` pending events, new
ones are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from vaultq.brokers.monitor import EVENTS_MAXLEN, JobEvent, monitoring
from vaultq.errors import BrokerError
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome, WorkerInfo
from vaultq.runtime.presence import EventLog

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["EventStream"]

log = logging.getLogger("vaultq.events")

_MAX_OPEN = 100_000
_SETTLED_KIND = {
    Outcome.SUCCEEDED: "succeeded",
    Outcome.RETRYING: "retried",
    Outcome.CANCELLED: "cancelled",
    Outcome.RELEASED: "handed_back",
}
"""Every other settled outcome (failed, timed_out, expired, denied, internal_error) is
``dead`` with the outcome as its reason; ``dropped`` (a copy of a finished job) is not an
event of the job's life and is left out."""


class EventStream(Middleware):
    """Append job events to ``app``'s broker (see the module docstring)."""

    def __init__(self, app: App, *, maxlen: int = EVENTS_MAXLEN) -> None:
        self.app = app
        self.log = EventLog(maxlen=maxlen)
        self._worker = ""
        self._attempts: dict[tuple[str, int], tuple[float, str]] = {}
        self._producer_flush: asyncio.Task[None] | None = None

    # -- producer -------------------------------------------------------------------------

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        if error is not None:
            return
        self.log.emit(JobEvent("enqueued", job.job_id, job.queue, task=job.task, at=time.time()))
        if not self._worker:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """A producer has no background task of ours: flush from a task of its loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (another backend): the events wait for the next enqueue
        task = self._producer_flush
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._producer_flush = loop.create_task(self._flush_once())

    async def _flush_once(self) -> None:
        try:
            found = monitoring(await self.app.broker())
            if found is not None:
                await self.log.flush(found)
        except BrokerError as exc:
            log.warning("could not write job events (%s)", type(exc).__name__)

    # -- worker ---------------------------------------------------------------------------

    async def worker_started(self, worker: WorkerInfo) -> None:
        self._worker = worker.id
        found = monitoring(await self.app.broker())
        if found is None:
            log.warning("the broker %s does not record job events", self.app.broker_url)
            return
        worker.start_soon(self.log.run, found, name="job events")

    def attempt_started(self, job: JobInfo) -> None:
        if len(self._attempts) > _MAX_OPEN:
            # Attempts whose settlement was never written (lost lease) are not settled
            # here either: forget them rather than grow.
            self._attempts.clear()
        self._attempts[job.job_id, job.attempt] = (time.time(), "")
        self._emit("started", job)

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        self._attempts[job.job_id, job.attempt] = (duration, outcome.value)

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        duration, attempt_outcome = self._attempts.pop((job.job_id, job.attempt), (None, ""))
        if outcome is Outcome.DROPPED:
            return
        kind = _SETTLED_KIND.get(outcome, "dead")
        if kind == "retried":
            why = attempt_outcome or "failed"
        elif kind == "dead":
            why = reason or outcome.value
        else:
            why = ""
        ran = duration if attempt_outcome else None
        self._emit(kind, job, reason=why, duration=ran)

    def rejected(self, job: JobInfo, reason: str) -> None:
        self._attempts.pop((job.job_id, job.attempt), None)
        self.log.emit(
            JobEvent(
                "dead",
                job.job_id,
                job.queue,
                attempt=job.attempt,
                at=time.time(),
                worker=self._worker,
                reason=f"rejected:{reason}",
            )
        )

    def _emit(
        self, kind: str, job: JobInfo, *, reason: str = "", duration: float | None = None
    ) -> None:
        self.log.emit(
            JobEvent(
                kind,
                job.job_id,
                job.queue,
                task=job.task if job.authenticated else "",
                attempt=job.attempt,
                at=time.time(),
                worker=self._worker,
                reason=reason,
                duration=None if duration is None else round(duration, 6),
            )
        )
