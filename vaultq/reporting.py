"""Sending task failures to an error reporter (Sentry, or any logging-based one) safely.

Error reporters capture what vaultq never logs: the exception's message (which may quote
payload values), and -- Sentry by default -- the *local variables* of every frame, where
the payload, its decoded ``Secret`` values and the principal live. Two helpers keep them
out:

* :class:`ReportFailures` -- middleware that hands a :class:`FailureReport` to your
  callable for every task exception: ids, task, queue, attempt, the exception's class
  path and its traceback as (file, line, function) -- no locals, and no message unless
  you opt in (``include_message=True``; a ``Secret`` inside it is still ``Secret('***')``).
* :func:`scrub_sentry_event` -- a ``before_send`` for ``sentry_sdk.init`` that removes
  frame locals (``vars``), request bodies and ``extra`` data, and replaces exception
  messages by their class name.

``docs/observability.md`` has the recipe for both.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from vaultq.middleware import JobInfo, Middleware

__all__ = ["FailureReport", "Frame", "ReportFailures", "failure_report", "scrub_sentry_event"]

_MAX_FRAMES = 50
_MAX_MESSAGE = 2000


class Frame(msgspec.Struct, frozen=True, array_like=True):
    filename: str
    lineno: int
    function: str


class FailureReport(msgspec.Struct, frozen=True):
    """One task exception, without payload values or frame locals."""

    job_id: str
    task: str
    queue: str
    attempt: int
    error_type: str
    """``module.QualName`` of the exception class."""
    frames: tuple[Frame, ...]
    """Innermost last, as in a Python traceback; at most 50."""
    message: str | None = None
    """Only with ``include_message=True``: ``str(exc)``, bounded."""


def _class_path(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def failure_report(job: JobInfo, exc: BaseException, *, include_message: bool) -> FailureReport:
    """The report of ``exc`` raised by ``job``'s task (see :class:`FailureReport`)."""
    summary = traceback.extract_tb(exc.__traceback__)[-_MAX_FRAMES:]
    frames = tuple(Frame(f.filename, f.lineno or 0, f.name) for f in summary)
    message = str(exc)[:_MAX_MESSAGE] if include_message else None
    return FailureReport(
        job_id=job.job_id,
        task=job.task,
        queue=job.queue,
        attempt=job.attempt,
        error_type=_class_path(exc),
        frames=frames,
        message=message,
    )


class ReportFailures(Middleware):
    """Call ``report(FailureReport)`` for every exception a task raises (not for
    cancellations: deadlines, cancel by id, shutdown). ``report`` runs on the worker's
    event loop for async tasks and in the task's thread for sync ones: keep it quick
    (hand it to a queue or an SDK that sends in the background). An exception it raises
    is logged by the middleware guard and the job goes on. Under ``isolation="process"``
    it runs in the child process."""

    def __init__(
        self, report: Callable[[FailureReport], None], *, include_message: bool = False
    ) -> None:
        self.report = report
        self.include_message = include_message

    async def around_async(self, job: JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except Exception as exc:
            self._send(job, exc)
            raise

    def around_sync(self, job: JobInfo, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:
            self._send(job, exc)
            raise

    def _send(self, job: JobInfo, exc: Exception) -> None:
        # Cancellations (deadline, cancel by id, shutdown) are BaseExceptions: never here.
        self.report(failure_report(job, exc, include_message=self.include_message))


def scrub_sentry_event(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """``sentry_sdk.init(before_send=vaultq.reporting.scrub_sentry_event)``: drop frame
    locals, request data and ``extra``, and replace each exception's message by its type.
    Returns the event (changed in place)."""
    for value in (event.get("exception") or {}).get("values") or []:
        if isinstance(value, dict):
            if "value" in value:
                value["value"] = str(value.get("type") or "error")
            for frame in (value.get("stacktrace") or {}).get("frames") or []:
                if isinstance(frame, dict):
                    frame.pop("vars", None)
    for thread in (event.get("threads") or {}).get("values") or []:
        for frame in ((thread or {}).get("stacktrace") or {}).get("frames") or []:
            if isinstance(frame, dict):
                frame.pop("vars", None)
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string"):
            request.pop(key, None)
    event.pop("extra", None)
    if "logentry" in event and isinstance(event["logentry"], dict):
        # A log record's arguments may be payload values: keep the format string only.
        event["logentry"].pop("params", None)
        if "formatted" in event["logentry"]:
            event["logentry"]["formatted"] = event["logentry"].get("message", "")
    return event
