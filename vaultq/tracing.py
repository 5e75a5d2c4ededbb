"""OpenTelemetry tracing for vaultq producers and workers (``pip install 'vaultq[otel]'``).

``app.add_middleware(Tracing())`` in the module that defines the app (so producers and
workers both have it), with a ``TracerProvider`` configured the usual way.

* The producer opens a ``send <queue>`` span (kind PRODUCER) as a child of whatever span
  is current, and puts its W3C trace context (``traceparent``, ``tracestate``) into the
  job *inside the sealed envelope*: a call graph is information too, so it is encrypted
  and signed with the payload, never written in clear broker fields.
* The worker opens a ``process <queue>`` span (kind CONSUMER) per attempt, a child of the
  producer's span, so the whole job is one trace; a retry is another
  ``process`` span in the same trace. While an async task runs, its span is the current
  span (spans the task starts are its children); a sync task's thread gets it too,
  except under ``isolation="process"`` (the child process has no tracer of ours).
* Attributes follow the OpenTelemetry messaging semantic conventions: ``messaging.system``
  = ``vaultq``, ``messaging.destination.name`` = the queue, ``messaging.operation.type``
  (``send``/``process``), ``messaging.operation.name``, ``messaging.message.id`` = the job
  id; plus ``vaultq.task``, ``vaultq.attempt`` and ``vaultq.outcome``. Never a payload
  value, a result, a principal or an exception message (those may quote payload values):
  a failed attempt is marked with status ERROR and ``error.type`` = the outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from vaultq.errors import ConfigurationError
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "OpenTelemetry tracing needs opentelemetry-api: pip install 'vaultq[otel]'"
    ) from exc

__all__ = ["SYSTEM", "Tracing"]

SYSTEM: Final = "vaultq"
_FAILED: Final = frozenset({Outcome.FAILED, Outcome.TIMED_OUT})
_MAX_OPEN: Final = 100_000


class Tracing(Middleware):
    """Producer "send" and worker "process" spans, the context sealed in the job (see the
    module docstring). ``tracer_provider``: default, the global one."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._propagator = TraceContextTextMapPropagator()
        self._sending: dict[str, Span] = {}
        self._running: dict[tuple[str, int], Span] = {}

        # Once: with the global provider this is a proxy that follows a provider set
        # later (after the app was built), at no cost per span.
        self._tracer = trace.get_tracer("vaultq", tracer_provider=tracer_provider)

    # -- producer -------------------------------------------------------------------------

    def before_enqueue(self, job: EnqueueInfo, trace_context: dict[str, str]) -> None:
        span = self._tracer.start_span(
            f"send {job.queue}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "enqueue",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.job_id,
                "vaultq.task": job.task,
            },
        )
        self._propagator.inject(trace_context, context=trace.set_span_in_context(span))
        _bounded(self._sending)
        self._sending[job.job_id] = span

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        span = self._sending.pop(job.job_id, None)
        if span is None:
            return
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # -- worker ---------------------------------------------------------------------------

    def attempt_started(self, job: JobInfo) -> None:
        # The producer's span is the parent (no link besides: the same trace, and a
        # link would cost a fifth of the span again).
        parent = self._propagator.extract(job.trace) if job.trace else None
        span = self._tracer.start_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.job_id,
                "vaultq.task": job.task,
                "vaultq.attempt": job.attempt,
            },
        )
        _bounded(self._running)
        self._running[job.job_id, job.attempt] = span

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        span = self._running.pop((job.job_id, job.attempt), None)
        if span is None:
            return
        span.set_attribute("vaultq.outcome", outcome.value)
        if outcome in _FAILED:
            span.set_attribute("error.type", outcome.value)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    async def around_async(self, job: JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        span = self._running.get((job.job_id, job.attempt))
        if span is None:
            await call()
            return
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            await call()

    def around_sync(self, job: JobInfo, call: Callable[[], None]) -> None:
        span = self._running.get((job.job_id, job.attempt))
        if span is None:
            call()
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            call()
        finally:
            otel_context.detach(token)


def _bounded(spans: dict[Any, Span]) -> None:
    # Spans whose closing hook never came (a lost lease is not settled): end and forget
    # them rather than grow.
    if len(spans) > _MAX_OPEN:
        for span in spans.values():
            span.end()
        spans.clear()
