"""Operator actions on single jobs: inspect one, cancel one, re-run dead letters.

The CLI's ``vaultq job``, ``vaultq cancel`` and ``vaultq dead retry|purge`` are thin
wrappers around these functions. They read the broker through the operator tools of the
broker protocol (``job_info``, ``cancel_queued``, ``retry_dead``) and trust nothing the
broker says until the keyring has authenticated it: a status comes from an opened result,
a cancelled job's outcome is sealed only for an envelope that opens with this app's keys.

Every change an operator makes (cancel, retry, purge) writes one WARNING line on the
``vaultq.audit`` logger naming the operating-system user, so it survives the usual
"warnings and up" audit filter.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import pwd
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from vaultq.brokers.base import RETRYABLE_REASONS, DeadLetter, JobInfo
from vaultq.envelope import JOB_ID_FORM, Header, ResultBody, open_result, peek_header, seal_result
from vaultq.errors import ConfigurationError, EnvelopeError, KeyringError
from vaultq.jobs import JobStatus
from vaultq.payload import Secret
from vaultq.policy import AUDIT_LOGGER, safe_id

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "CancelOutcome",
    "JobReport",
    "RetryOutcome",
    "audit_operator",
    "cancel_job",
    "check_job_id",
    "inspect_job",
    "mask_secrets",
    "operator",
    "purge_dead",
    "retry_dead",
]

audit = logging.getLogger(AUDIT_LOGGER)

_DUPLICATES = 100
"""Entries of one job id ``cancel_job`` dead-letters at most (duplicates written into
the queue by hand or by an attacker); the cancel marker covers any beyond."""


def operator() -> str:
    """The operating-system user running the command (for audit lines): the account of
    the real uid (not ``$USER``, which the caller sets), plus the account ``sudo`` was
    run from when there is one."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (a container's arbitrary uid): the uid still says who
        name = f"uid:{uid}"
    via = os.environ.get("SUDO_USER")
    return f"{name} (sudo from {via})" if via and via != name else name


def audit_operator(
    action: str, *, queue: str, job_id: str = "-", user: str | None = None, **fields: object
) -> None:
    """One audit line for an operator's change to the queue. ``user``: who acted, when it
    is not this process's OS user (the dashboard passes its logged-in operator)."""
    user = operator() if user is None else user
    safe_job = safe_id(job_id)
    extra: dict[str, object] = {
        "event": "operator",
        "action": action,
        "queue": queue,
        "job_id": safe_job,
        "user": safe_id(user),
        **fields,
    }
    details = " ".join(f"{k}={safe_id(str(v))}" for k, v in fields.items())
    audit.warning(
        "operator %s: job=%s queue=%s user=%s%s",
        action,
        safe_job,
        queue,
        extra["user"],
        f" {details}" if details else "",
        extra={"vaultq": extra},
    )


# -- inspect ---------------------------------------------------------------------------


class JobReport(msgspec.Struct, kw_only=True):
    """What ``vaultq job`` shows. ``status`` is a :class:`~vaultq.JobStatus` value or
    ``unknown``; ``state`` is where the broker holds the job (``queued``, ``delayed``,
    ``running``, ``absent``). Times are Unix seconds."""

    job_id: str
    queue: str | None
    status: str
    state: str = "absent"
    task: str | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    not_before: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    reason: str | None = None
    error_type: str | None = None
    cancel_requested: bool = False
    note: str | None = None
    result: Any = msgspec.UNSET
    """Only with ``with_result``: the result value, ``Secret`` values masked."""


async def inspect_job(
    app: App, job_id: str, queues: Sequence[str], *, with_result: bool = False
) -> JobReport:
    """Where ``job_id`` is and how it ended, looked up in ``queues`` in order."""
    broker = await app.broker()
    for queue in queues:
        info = await broker.job_info(queue, job_id)
        data = await broker.get_result(queue, job_id)
        if data is None and info.state == "absent" and info.dead is None and not info.finished:
            continue
        report = _from_info(info)
        if data is not None:
            _add_result(app, report, data, job_id, queue, with_result)
        return report
    return JobReport(job_id=job_id, queue=None, status="unknown")


def _from_info(info: JobInfo) -> JobReport:
    report = JobReport(
        job_id=info.job_id,
        queue=info.queue,
        status="unknown",
        state=info.state,
        attempts=info.attempt,
        enqueued_at=info.enqueued_at or None,
        not_before=info.not_before or None,
        cancel_requested=info.cancel_requested,
    )
    if info.envelope:
        try:
            report.task = safe_id(peek_header(info.envelope).task)
        except EnvelopeError:
            report.note = "the queued entry is not a readable envelope; a worker rejects it"
    if info.state == "running":
        report.status = JobStatus.RUNNING.value
    elif info.state in ("queued", "delayed"):
        report.status = JobStatus.PENDING.value
    if info.dead is not None and info.state == "absent":
        report.reason = safe_id(info.dead.reason)
        report.attempts = report.attempts or info.dead.attempt
        report.finished_at = info.dead.at or None
        report.status = _status_of_reason(info.dead.reason)
    elif info.state == "absent" and info.finished:
        report.note = "finished; its result is no longer stored (result_ttl)"
    return report


def _status_of_reason(reason: str) -> str:
    head = reason.partition(":")[0]
    try:
        return JobStatus(head).value
    except ValueError:
        return JobStatus.FAILED.value if head == "internal_error" else "unknown"


def _add_result(
    app: App, report: JobReport, data: bytes, job_id: str, queue: str, with_result: bool
) -> None:
    try:
        body = open_result(
            data,
            app.keyring,
            app=app.name,
            job_id=job_id,
            queue=queue,
            max_size=app.max_envelope_size,
        )
        header = peek_header(data, max_size=app.max_envelope_size)
    except (EnvelopeError, KeyringError) as exc:
        report.note = f"a stored result does not open with this app's keys ({type(exc).__name__})"
        return
    report.status = safe_id(body.status)
    report.attempts = body.attempts or report.attempts
    report.started_at = body.started_at
    report.finished_at = body.finished_at or report.finished_at
    report.worker = safe_id(body.worker_id) if body.worker_id else None
    report.error_type = safe_id(body.error_type) if body.error_type else None
    if report.reason is None and body.status != JobStatus.SUCCEEDED:
        report.reason = report.error_type or report.status
    if header.task:
        report.task = safe_id(header.task)
    if with_result and body.value is not None:
        task = app.get_task(header.task) if header.task else None
        if task is None:
            # Without the task's result type, a Secret field is a plain JSON string here:
            # showing the value could reveal it.
            report.note = (
                f"result not shown: task {safe_id(header.task)!r} is not registered in this "
                "app, so its Secret fields cannot be masked"
            )
            return
        report.result = msgspec.json.decode(
            msgspec.json.encode(task.result_codec.decode(bytes(body.value)), enc_hook=mask_secrets)
        )


def mask_secrets(obj: Any) -> Any:
    """Results are shown with every ``Secret`` masked, never revealed."""
    if isinstance(obj, Secret):
        return repr(obj)
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


# -- cancel ------------------------------------------------------------------------------


class CancelOutcome(enum.StrEnum):
    """What ``cancel_job`` found (and the CLI's exit code says)."""

    PENDING = "pending"
    """Queued or delayed: it will never start (dead-lettered as cancelled at once)."""
    RUNNING = "running"
    """A worker runs it: its cancel scope is cancelled within about a second."""
    FINISHED = "finished"
    """It already ended: nothing changed."""
    UNKNOWN = "unknown"
    """No trace of the id in these queues: a cancel marker is left in case it arrives."""


async def cancel_job(app: App, job_id: str, queues: Sequence[str]) -> CancelOutcome:
    """Cancel ``job_id`` wherever it is in ``queues``.

    The cancel marker is set first (as ``App.cancel`` does), so a worker that fetches the
    job while we look still drops it; then each waiting entry of the id is dead-lettered
    at once with a sealed CANCELLED outcome, so ``status``, ``job`` and a waiting
    producer see it cancelled without waiting for a worker (or for a delay to pass).
    """
    broker = await app.broker()
    ttl = app.task_defaults.expires + app.clock_skew
    states = [await broker.cancel(q, job_id, ttl=ttl) for q in queues]
    if any(state == "finished" for state in states):
        return CancelOutcome.FINISHED
    outcome = CancelOutcome.UNKNOWN
    for queue in queues:
        for _ in range(_DUPLICATES):
            info = await broker.job_info(queue, job_id)
            if info.state == "running":
                outcome = CancelOutcome.RUNNING
                break
            if info.state not in ("queued", "delayed"):
                break
            if outcome is CancelOutcome.UNKNOWN:
                outcome = CancelOutcome.PENDING
            if not await _drop(app, broker, info):
                break  # taken by a worker just now, or not ours to seal: the marker acts
    if outcome is not CancelOutcome.UNKNOWN:
        audit_operator("cancel", queue=",".join(queues), job_id=job_id, found=outcome.value)
    return outcome


async def _drop(app: App, broker: Any, info: JobInfo) -> bool:
    """Dead-letter one waiting entry with a sealed CANCELLED outcome. Only an envelope
    that opens with this app's keys gets an outcome under its id: an entry that does not
    authenticate is left to the worker, which rejects it."""
    now = time.time()
    try:
        opened = app.open_job(
            info.envelope,
            tasks=app.tasks,
            now=now,
            queue=info.queue,
            job_id=info.job_id,
            skew=math.inf,
        )
    except (EnvelopeError, KeyringError):
        return False
    header: Header = opened.header
    task = app.get_task(header.task)
    body = ResultBody(
        status=JobStatus.CANCELLED.value,
        attempts=info.attempt,
        finished_at=now,
        worker_id=f"operator:{safe_id(operator())}",
    )
    try:
        result = seal_result(app.keyring, header, body, now=now)
    except KeyringError:
        return False
    ttl = task.options.result_ttl if task is not None else app.task_defaults.result_ttl
    dropped: bool = await broker.cancel_queued(
        info,
        result=result,
        result_ttl=ttl,
        remember_until=header.expires_at / 1000 + app.clock_skew,
    )
    return dropped


# -- dead letters --------------------------------------------------------------------------


class RetryOutcome(msgspec.Struct):
    """One dead letter ``retry_dead`` looked at: ``retried`` or why it was refused."""

    job_id: str
    reason: str
    done: bool
    message: str


async def retry_dead(
    app: App, queue: str, *, job_id: str | None, limit: int, user: str | None = None
) -> list[RetryOutcome]:
    """Re-enqueue dead letters of ``queue`` on purpose: the one(s) of ``job_id``, or
    (``job_id=None``) every retryable one among the newest ``limit``.

    Only letters whose job ran and ended for good (reasons in ``RETRYABLE_REASONS``) are
    moved; REJECTED, DENIED, EXPIRED, CANCELLED and replayed ones are refused with the
    reason, since re-running them would bypass the check that stopped them. The sealed
    envelope goes back unchanged as attempt 1; a job whose envelope has expired is
    refused (it could only end EXPIRED). Each retry is audited with the OS user (or
    ``user``, for a web operator).
    """
    broker = await app.broker()
    letters: list[DeadLetter] = await broker.dead_letters(queue, limit=limit)
    if job_id is not None:
        letters = [d for d in letters if d.job_id == job_id]
    out: list[RetryOutcome] = []
    seen: set[str] = set()
    now = time.time()
    for letter in letters:
        safe = safe_id(letter.job_id)
        reason = safe_id(letter.reason)
        if letter.job_id in seen:
            continue  # the newest letter of an id decides; older ones stay as history
        seen.add(letter.job_id)
        if letter.reason not in RETRYABLE_REASONS:
            out.append(RetryOutcome(safe, reason, False, _refusal(letter.reason)))
            continue
        expiry = await _expiry(app, broker, queue, letter.job_id)
        if expiry is not None and expiry < now:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(expiry))
            message = f"refused: its envelope expired at {when}; enqueue a new job instead"
            out.append(RetryOutcome(safe, reason, False, message))
            continue
        moved = await broker.retry_dead(queue, letter.tag)
        if moved is None:
            out.append(RetryOutcome(safe, reason, False, "refused: no longer in the dead letters"))
            continue
        audit_operator(
            "dead_retry", queue=queue, job_id=letter.job_id, user=user, reason=letter.reason
        )
        out.append(RetryOutcome(safe, reason, True, "re-enqueued as attempt 1"))
    return out


def _refusal(reason: str) -> str:
    head = reason.partition(":")[0]
    why = {
        "rejected": "its envelope failed a check (signature, key, format, replay); "
        "re-running it would bypass that check",
        "replayed": "it is a replay of a job that already ran",
        "denied": "its policy denied it; enqueue a new job for a principal that is allowed",
        "cancelled": "it was cancelled on purpose; enqueue a new job to run it",
        "expired": "its start deadline passed; enqueue a new job instead",
    }.get(head, "only jobs dead after failures or timeouts can be retried")
    return f"refused ({safe_id(reason)}): {why}"


async def _expiry(app: App, broker: Any, queue: str, job_id: str) -> float | None:
    """The envelope's latest start, read from the job's stored (sealed) outcome."""
    data = await broker.get_result(queue, job_id)
    if data is None:
        return None
    try:
        open_result(
            data,
            app.keyring,
            app=app.name,
            job_id=job_id,
            queue=queue,
            max_size=app.max_envelope_size,
        )
        header = peek_header(data, max_size=app.max_envelope_size)
    except (EnvelopeError, KeyringError):
        return None
    if not header.expires_at:
        return None
    return header.expires_at / 1000 + app.clock_skew


async def purge_dead(app: App, queue: str, *, user: str | None = None) -> int:
    """Delete every dead letter of ``queue`` (audited, as ``user`` when given)."""
    broker = await app.broker()
    count: int = await broker.purge_dead(queue)
    audit_operator("dead_purge", queue=queue, user=user, count=count)
    return count


def check_job_id(job_id: str) -> str:
    """Refuse an id that no vaultq job can have, before touching the broker."""
    if not JOB_ID_FORM.fullmatch(job_id):
        raise ConfigurationError(
            f"{safe_id(job_id)!r} is not a job id: ids are 1-128 letters, digits, '_', '.', "
            "':' or '-' (the id `vaultq enqueue` printed)"
        )
    return job_id
