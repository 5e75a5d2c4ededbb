"""Settlements from outcomes: the sealed result and broker instruction for how a job ended.

The executor decides *what* happened to a delivery; this module turns that into the
:data:`~vaultq.brokers.base.Settlement` the worker applies: a result sealed for the
producer (or none, for junk nobody vouched for), the dead-letter reason, how long the
result and the job id are remembered. Nothing here calls the broker or runs task code.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec

from vaultq.brokers.base import Ack, Bury, Delivery, Drop, Release, Retry, Settlement
from vaultq.envelope import Header, OpenedJob, ResultBody, seal_result, tag_version
from vaultq.errors import (
    DecryptionFailed,
    EnvelopeError,
    PayloadError,
    RevokedKey,
    UnknownKey,
    VaultqError,
)
from vaultq.jobs import JobStatus
from vaultq.logs import TRACEBACKS_LOGGER, render_traceback
from vaultq.middleware import Hooks, JobInfo, Outcome
from vaultq.policy import AUDIT_LOGGER, safe_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vaultq.app import App
    from vaultq.runtime.execute import JobSlot
    from vaultq.tasks import Task

__all__ = [
    "MAX_ERROR_TEXT",
    "UNAUTHENTICATED",
    "Outcomes",
    "log_traceback",
    "report_settlement",
    "report_settlements",
    "safe_text",
    "type_path",
]

log = logging.getLogger("vaultq.worker")
audit = logging.getLogger(AUDIT_LOGGER)
tracebacks = logging.getLogger(TRACEBACKS_LOGGER)

UNAUTHENTICATED = "rejected:unauthenticated"
"""The one dead-letter reason for every envelope refused before (or by) the signature
check: distinct reasons would let anyone who can write to the broker, without keys,
probe which task names, apps and queues exist. The audit log keeps the precise reason."""

MIN_DEFER_BACKOFF = 1.0
MAX_DEFER_BACKOFF = 60.0
"""Backoff added to the remaining time of a job that is not valid yet."""
MAX_ERROR_TEXT = 2000
"""The most of an error's text a result keeps (it is sealed, never logged)."""


class Outcomes:
    """Builds one worker's settlements (results are sealed with the app's keys and
    carry the worker's id)."""

    def __init__(self, app: App, worker_id: str) -> None:
        self.app = app
        self.worker_id = worker_id

    def seal(self, header: Header, body: ResultBody) -> bytes:
        """The result sealed for the producer, bound to the job's header."""
        return seal_result(self.app.keyring, header, body, now=time.time())

    def remember_until(self, header: Header) -> float:
        """Until when the job id stays known as finished: its validity plus the skew."""
        return header.expires_at / 1000 + self.app.clock_skew

    def finish(
        self,
        delivery: Delivery,
        opened: OpenedJob,
        status: JobStatus,
        *,
        task: Task[Any, Any] | None,
        started: float | None,
        value: bytes | None = None,
        error_type: str | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> Settlement:
        """An opened job ended with ``status``: Ack (succeeded) or Bury, with its result."""
        body = ResultBody(
            status=status.value,
            value=msgspec.Raw(value) if value is not None else None,
            error_type=error_type,
            error=error[:MAX_ERROR_TEXT] if error else None,
            attempts=delivery.attempt,
            started_at=started,
            finished_at=time.time(),
            worker_id=self.worker_id,
            # Sealed into the result so a reader can be checked against the job's principal.
            principal_id=opened.body.principal.id if opened.body.principal else None,
        )
        header = opened.header
        if task is not None and not task.options.store_result and status == JobStatus.SUCCEEDED:
            # store_result=False keeps the value out of the broker, not the outcome: without
            # a record, result() would wait until its timeout and status() stay PENDING.
            body = msgspec.structs.replace(body, value=None)
        result = self.seal(header, body)
        ttl = task.options.result_ttl if task else self.app.task_defaults.result_ttl
        remember = self.remember_until(header)
        if status == JobStatus.SUCCEEDED:
            return Ack(delivery=delivery, result=result, result_ttl=ttl, remember_until=remember)
        return Bury(
            delivery=delivery,
            reason=reason or status.value,
            detail=f"{status.value}: {error_type}" if error_type else status.value,
            result=result,
            result_ttl=ttl,
            remember_until=remember,
        )

    def reject(
        self,
        delivery: Delivery,
        exc: EnvelopeError | PayloadError,
        *,
        authenticated: bool = False,
    ) -> Settlement:
        reason = exc.reason if isinstance(exc, EnvelopeError) else "payload"
        # The broker-given id is unauthenticated: escape and cap it so a crafted id
        # cannot forge audit lines or flood the log.
        job_id = safe_id(delivery.job_id)
        audit.warning(
            "job %s rejected on queue %s: %s (attempt %d)",
            job_id,
            delivery.queue,
            reason,
            delivery.attempt,
            extra={
                "vaultq": {
                    "job_id": job_id,
                    "queue": delivery.queue,
                    "decision": "rejected",
                    "reason": reason,
                }
            },
        )
        if isinstance(exc, RevokedKey):
            # Refused for naming a revoked key (incident response, docs/keys.md): the
            # operator needs these listed under their own reason, envelope kept. Still
            # unauthenticated, so nothing is written under the id they name.
            return Bury(
                delivery=delivery,
                reason=f"rejected:{reason}",
                detail=f"envelope rejected: {reason}",
                result=None,
                result_ttl=self.app.task_defaults.result_ttl,
                remember_until=None,
            )
        if not authenticated and not isinstance(exc, PayloadError | UnknownKey | DecryptionFailed):
            # Not authenticated: the id it names means nothing. Nothing is written under
            # it (no result, no memory, no reservation), so junk cannot make an honest
            # producer waiting on that id give up; the dead letter is a stub.
            return Bury(
                delivery=delivery,
                reason=UNAUTHENTICATED,
                detail="envelope rejected before authentication",
                result=None,
                result_ttl=self.app.task_defaults.result_ttl,
                remember_until=None,
                keep_envelope=False,
            )
        # A trusted signer vouched for this header (the payload or the key is what is
        # wrong): the producer hears REJECTED, sealed under the signed job id, in the
        # job's own format version (its producer may read no other).
        header = Header(
            version=tag_version(delivery.envelope) or self.app.envelope_version,
            job_id=delivery.job_id,
            app=self.app.name,
            task="",
            queue=delivery.queue,
            issued_at=int(time.time() * 1000),
            not_before=0,
            expires_at=0,
            key_id="",
            signer_id="",
        )
        body = ResultBody(
            status=JobStatus.REJECTED.value,
            error_type=f"vaultq.{type(exc).__name__}",
            error=reason,
            attempts=delivery.attempt,
            finished_at=time.time(),
            worker_id=self.worker_id,
        )
        return Bury(
            delivery=delivery,
            reason=f"rejected:{reason}",
            detail=f"envelope rejected: {reason}",
            result=self.seal(header, body),
            result_ttl=self.app.task_defaults.result_ttl,
            remember_until=None,
        )

    def defer(self, delivery: Delivery, header: Header, now: float) -> Settlement:
        """A job not yet valid (its producer's clock runs ahead of the broker's by more
        than the skew, beyond its delay): hand it back until it is valid, plus a backoff,
        on the broker's clock, so it is never re-delivered in a hot loop."""
        valid_at = max(header.not_before, header.issued_at) / 1000 - self.app.clock_skew
        remaining = max(0.0, valid_at - now)
        backoff = min(MAX_DEFER_BACKOFF, max(MIN_DEFER_BACKOFF, remaining / 10))
        log.warning(
            "job %s is not valid for another %.1f s by the broker's clock (its producer's "
            "clock runs ahead by more than clock_skew=%g s); handing it back for %.1f s. "
            "Fix the producer host's clock (NTP)",
            delivery.job_id,
            remaining,
            self.app.clock_skew,
            remaining + backoff,
        )
        return Release(delivery=delivery, not_before=now + remaining + backoff)

    def finished(self, delivery: Delivery) -> Settlement:
        """An entry naming a job id that already has an outcome: dropped, counted."""
        if delivery.redelivered:
            # Settled before a crash and delivered again: not an attack.
            return Drop(delivery=delivery, reason="finished")
        job_id = safe_id(delivery.job_id)
        audit.warning(
            "entry for finished job %s on queue %s dropped (a copy of a job that already "
            "ran: replayed or re-inserted)",
            job_id,
            delivery.queue,
            extra={
                "vaultq": {
                    "job_id": job_id,
                    "queue": delivery.queue,
                    "decision": "rejected",
                    "reason": "replayed",
                }
            },
        )
        return Drop(delivery=delivery, reason="replayed")


# -- how a failure is recorded ------------------------------------------------------------


def log_traceback(exc: BaseException, job_id: str, task: str, attempt: int, payload: Any) -> None:
    """The operator's view of a task that raised: frames without locals, Secret values
    of the payload masked (see ``vaultq.logs.render_traceback``)."""
    if tracebacks.isEnabledFor(logging.WARNING):
        tracebacks.warning(
            "job %s (%s) attempt %d raised:\n%s",
            job_id,
            task,
            attempt,
            render_traceback(exc, payload),
            extra={"vaultq": {"job_id": job_id, "task": task, "attempt": attempt}},
        )


def type_path(exc: BaseException) -> str:
    """The error type a result records: ``ValueError`` for builtins, else ``module.Qual``."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def safe_text(exc: BaseException) -> str:
    """The exception's own message: stored only inside the sealed result, never logged."""
    if isinstance(exc, VaultqError):
        return str(exc)
    try:
        return str(exc)[:MAX_ERROR_TEXT]
    except Exception:
        return type(exc).__name__


# -- what the middleware hears once a settlement is written --------------------------------


_BURIED = {
    "failed": Outcome.FAILED,
    "timed_out": Outcome.TIMED_OUT,
    "denied": Outcome.DENIED,
    "expired": Outcome.EXPIRED,
    "cancelled": Outcome.CANCELLED,
    "internal_error": Outcome.INTERNAL_ERROR,
}


# Made once: an enum member read from its class costs a Python-level lookup on 3.11 (about
# ten times a global's), on the path of every reported job.
_SUCCEEDED: Final = Outcome.SUCCEEDED
_ACKED: Final = (_SUCCEEDED, None)
_RETRIED: Final = (Outcome.RETRYING, None)
_RELEASED: Final = (Outcome.RELEASED, None)


def report_settlement(
    hooks: Hooks, slot: JobSlot, settlement: Settlement, *, app: str, worker_id: str
) -> None:
    """Report one written settlement to the middleware (``settled``, or ``rejected`` for
    an entry that did not open). The worker's settler calls it, and so does the test
    kit's ``TestWorker``, so middleware sees the same events under test."""
    job = slot.job
    if job is not None and type(settlement) is Ack:
        hooks.settled(job, _SUCCEEDED, None)  # the common case, first
        return
    if job is None:
        # Never opened: only the broker's (unauthenticated) claims are known.
        delivery = slot.delivery
        job = JobInfo(
            job_id=safe_id(delivery.job_id),
            queue=delivery.queue,
            attempt=delivery.attempt,
            app=app,
            worker_id=worker_id,
        )
    outcome, reason = _settled_outcome(settlement)
    if outcome is None:
        hooks.rejected(job, reason or "unauthenticated")
    else:
        hooks.settled(job, outcome, reason)


def report_settlements(
    hooks: Hooks, written: Sequence[tuple[JobSlot, Settlement]], *, app: str, worker_id: str
) -> None:
    """``report_settlement`` for a batch the worker's settler wrote: an opened job that
    succeeded (the common case) goes to the ``settled`` hooks without the per-job calls."""
    for slot, settlement in written:
        job = slot.job
        if job is None or type(settlement) is not Ack:
            report_settlement(hooks, slot, settlement, app=app, worker_id=worker_id)
            continue
        for hook in hooks.on_settled:
            try:
                hook(job, _SUCCEEDED, None)
            except Exception as exc:
                hooks.failed(hook, "settled", exc)


def _settled_outcome(settlement: Settlement) -> tuple[Outcome | None, str | None]:
    """The outcome a written settlement reports, and its reason; outcome None for a
    rejection (``rejected`` hook), whose reason is then the dead letter's code."""
    if isinstance(settlement, Ack):
        return _ACKED
    if isinstance(settlement, Retry):
        return _RETRIED
    if isinstance(settlement, Release):
        return _RELEASED
    if isinstance(settlement, Drop):
        if settlement.reason == "finished":
            return Outcome.DROPPED, "finished"
        return None, settlement.reason
    reason = settlement.reason
    if reason.startswith("rejected:"):
        return None, reason.removeprefix("rejected:")
    return _BURIED.get(reason, Outcome.FAILED), reason
