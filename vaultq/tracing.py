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

Cost (``benchmarks/observability.py``, ``docs/observability.md``): the hooks read and
write the W3C headers directly (the propagator's generic getter/setter machinery cost
more than the span), attach the span's context once per attempt in ``attempt_started``
and detach it in ``attempt_finished`` (which run in the task's context: no
``around_async``/``around_sync`` wrapper per job), and -- when the producer's span was
not sampled -- ask the tracer's sampler first and create no span at all when it would
drop one (the task still runs in the unsampled trace, so its own spans are dropped
alike). With OpenTelemetry's stock runtime context (the default) the span is made
current with one ``ContextVar.set``/``reset`` instead of ``set_span_in_context`` +
``attach``/``detach`` (the same context, eight Python calls fewer), and once the sampler
is known to drop unsampled spans such a job takes an inline path through
``attempt_started``. Export is the span processor's business: use a
``BatchSpanProcessor``.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar, Token
from typing import Any, Final

from vaultq.errors import ConfigurationError
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import (
        NonRecordingSpan,
        ProxyTracerProvider,
        Span,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        Tracer,
        TracerProvider,
        TraceState,
    )
    from opentelemetry.trace.propagation import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "OpenTelemetry tracing needs opentelemetry-api: pip install 'vaultq[otel]'"
    ) from exc

__all__ = ["SYSTEM", "Tracing"]

SYSTEM: Final = "vaultq"
_FAILED: Final = frozenset({Outcome.FAILED, Outcome.TIMED_OUT})
_MAX_OPEN: Final = 100_000
# W3C trace context version 00, lowercase hex, as this module writes it. Anything else
# (another version, upper case) goes through the generic propagator.
_TRACEPARENT: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# The trace flags' last hex digit with the sampled bit (the low bit) clear.
_UNSAMPLED: Final = frozenset("02468ace")
# A valid traceparent of an unsampled span (ids not all zeros, sampled bit clear), in one
# match: the worker's common case, checked per job.
_UNSAMPLED_TRACEPARENT: Final = re.compile(
    r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]"
)
_ERROR: Final = Status(StatusCode.ERROR)
_FLAGS: Final = {"00": TraceFlags(0), "01": TraceFlags(1)}
"""The two trace flags a W3C traceparent carries in practice, made once."""
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
log = logging.getLogger("opentelemetry.context")  # where the API logs the same failure


def _runtime_var() -> tuple[ContextVar[Context], str] | None:
    """OpenTelemetry's current-context variable and its current-span key, when the
    runtime context is the API's stock ``ContextVarsRuntimeContext`` (the default; one
    set by ``OTEL_PYTHON_CONTEXT`` is used through the API instead).

    ``set_span_in_context`` + ``attach`` and ``detach`` are eight Python calls per
    attempt around one ``ContextVar.set``/``reset`` and a dict copy; the worker does the
    same steps directly. Both names are private to OpenTelemetry, so they are read
    defensively and the self-check below proves they behave as the API does before
    they are used: anything unexpected falls back to the API."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:  # pragma: no cover - another API version
        return None
    if type(_RUNTIME_CONTEXT) is not ContextVarsRuntimeContext or not isinstance(_SPAN_KEY, str):
        return None  # pragma: no cover - a custom runtime context
    var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
    if not isinstance(var, ContextVar):
        return None  # pragma: no cover - another API version
    probe = NonRecordingSpan(SpanContext(1, 1, False))
    token = var.set(Context({_SPAN_KEY: probe}))
    try:
        if trace.get_current_span() is not probe:
            return None  # pragma: no cover - the API reads the span elsewhere
    finally:
        var.reset(token)
    return var, _SPAN_KEY


_FAST: Final = _runtime_var()


class Tracing(Middleware):
    """Producer "send" and worker "process" spans, the context sealed in the job (see the
    module docstring). ``tracer_provider``: default, the global one."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._propagator = TraceContextTextMapPropagator()
        self._sending: dict[str, Span] = {}
        # An attempt's token, with its span when there is one to end.
        self._running: dict[tuple[str, int], tuple[Span, Token[Context]] | Token[Context]] = {}
        self._provider = tracer_provider
        # With the global provider this is a proxy that follows a provider set later
        # (after the app was built); _real_tracer() swaps it for the real one once set.
        self._tracer: Tracer = trace.get_tracer("vaultq", tracer_provider=tracer_provider)
        self._resolved = tracer_provider is not None
        self._sampler: object = None
        self._drops_unsampled = False

    def _real_tracer(self) -> Tracer:
        if not self._resolved:
            provider = trace.get_tracer_provider()
            if not isinstance(provider, ProxyTracerProvider):
                # The global provider can be set once only: from now on it is this one.
                self._tracer = provider.get_tracer("vaultq")
                self._resolved = True
        return self._tracer

    def _drops(self, tracer: Tracer) -> bool:
        """Whether ``tracer`` has a sampler to ask before creating a span (an SDK
        tracer's); sets ``_drops_unsampled`` True when that sampler is the SDK's
        ``ParentBased`` with its default ``ALWAYS_OFF`` for unsampled remote parents,
        whose answer is known without asking."""
        sampler = getattr(tracer, "sampler", None)
        if sampler is None:
            return False
        if self._sampler is not sampler:
            self._sampler = sampler
            self._drops_unsampled = False
            try:
                from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

                # A private attribute, read defensively: without it we ask each time.
                self._drops_unsampled = isinstance(sampler, ParentBased) and (
                    getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF
                )
            except ImportError:  # pragma: no cover - a tracer with a sampler but no SDK
                pass
        return True

    # -- producer -------------------------------------------------------------------------

    def before_enqueue(self, job: EnqueueInfo, trace_context: dict[str, str]) -> None:
        span = self._real_tracer().start_span(
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
        sc = span.get_span_context()
        if sc.is_valid:
            # What TraceContextTextMapPropagator.inject writes, without its setter calls.
            trace_context["traceparent"] = (
                f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
            )
            if sc.trace_state:
                trace_context["tracestate"] = sc.trace_state.to_header()
        _bounded(self._sending)
        self._sending[job.job_id] = span

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        span = self._sending.pop(job.job_id, None)
        if span is None:
            return
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(_ERROR)
        span.end()

    # -- worker ---------------------------------------------------------------------------

    def _parent(self, carrier: dict[str, str]) -> tuple[Context, Span, bool] | None:
        """The producer's context, its (non-recording) span, and whether that span is
        valid and unsampled; None without a valid traceparent. The context is built on
        the current one, as ``set_span_in_context`` does."""
        header = carrier.get("traceparent")
        if header is None:
            return None
        found = _TRACEPARENT.fullmatch(header)
        if found is None:
            context = self._propagator.extract(carrier)  # another version, or invalid
            span = trace.get_current_span(context)
            sc = span.get_span_context()
            return context, span, sc.is_valid and not sc.trace_flags.sampled
        if header.startswith(_ZERO_TRACE, 3) or header.startswith(_ZERO_SPAN, 36):
            return None  # all zeros: invalid, as the propagator would say
        span = _RemoteSpan(header, carrier.get("tracestate"))
        return _in_context(span), span, header[54:] in _UNSAMPLED

    def attempt_started(self, job: JobInfo) -> None:
        carrier = job.trace
        if carrier and self._drops_unsampled and _FAST is not None:
            # The common case, inline (no helper calls): an unsampled producer's span,
            # a sampler known to drop such spans (the same one _drops() examined), the
            # stock runtime context. Exactly what the general path below does then,
            # with fewer objects: no match groups, and only the token kept (nothing is
            # ended for this span), since each object that lives as long as the
            # attempt is one more for the garbage collector to walk.
            header = carrier.get("traceparent")
            if (
                header is not None
                and _UNSAMPLED_TRACEPARENT.fullmatch(header) is not None
                # _drops_unsampled was set by _drops() on this tracer (resolved by then,
                # never swapped after), so it has a sampler: still the one examined?
                and self._tracer.sampler is self._sampler  # type: ignore[attr-defined]
            ):
                var, key = _FAST
                # set_span_in_context: a new Context, the current one's values plus the
                # span (set through dict: Context refuses item assignment, which guards
                # contexts already shared, not this one being built). The worker's own
                # context is usually empty: then one literal, no copy.
                remote = _RemoteSpan(header, carrier.get("tracestate"))
                base = var.get()
                if base:
                    context = Context(base)
                    dict.__setitem__(context, key, remote)
                else:
                    context = Context({key: remote})
                if len(self._running) > _MAX_OPEN:
                    _bounded(self._running)
                self._running[job.job_id, job.attempt] = var.set(context)
                return
        self._attempt_started(job)

    def _attempt_started(self, job: JobInfo) -> None:
        # The producer's span is the parent (no link besides: the same trace, and a
        # link would cost a fifth of the span again).
        found = self._parent(job.trace) if job.trace else None
        tracer = self._tracer if self._resolved else self._real_tracer()
        span: Span | None = None
        context: Context | None = None
        parent: Context | None = None
        remote_span: Span | None = None
        if found is not None:
            parent, remote_span, unsampled = found
            if not (unsampled and self._drops(tracer)):
                remote_span = None
            elif self._drops_unsampled:
                # The producer did not sample this trace and the sampler drops such spans:
                # create none -- the attempt runs in the producer's unsampled context, so
                # the spans the task starts are dropped alike.
                span, context = remote_span, parent
        if span is None:
            name = f"process {job.queue}"
            attributes: dict[str, Any] = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.job_id,
                "vaultq.task": job.task,
                "vaultq.attempt": job.attempt,
            }
            if (
                remote_span is not None
                and not tracer.sampler.should_sample(  # type: ignore[attr-defined]
                    parent,
                    remote_span.get_span_context().trace_id,
                    name,
                    SpanKind.CONSUMER,
                    attributes,
                ).decision.is_recording()
            ):
                span, context = remote_span, parent  # another sampler said so
            else:
                span = tracer.start_span(
                    name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
                )
        if len(self._running) > _MAX_OPEN:
            _bounded(self._running)
        if context is None:
            context = _in_context(span)
        # The task runs in this context: the runtime calls attempt_started and
        # attempt_finished in the context the task's call runs in (a sync task's thread
        # gets a copy of it), so one attach here and one detach there make the span
        # current for the task -- no around_async/around_sync wrapper per job.
        token = _FAST[0].set(context) if _FAST is not None else otel_context.attach(context)
        self._running[job.job_id, job.attempt] = (span, token)

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        entry = self._running.pop((job.job_id, job.attempt), None)
        if entry is None:
            return
        span: Span | None = None
        if isinstance(entry, tuple):
            span, token = entry
        else:
            token = entry
        if _FAST is not None:
            try:
                _FAST[0].reset(token)
            except Exception:  # what otel_context.detach does: log and go on
                log.exception("Failed to detach context")
        else:
            otel_context.detach(token)
        if span is not None and type(span) is not _RemoteSpan and span.is_recording():
            span.set_attribute("vaultq.outcome", outcome.value)
            if outcome in _FAILED:
                span.set_attribute("error.type", outcome.value)
                span.set_status(_ERROR)
            span.end()


def _in_context(span: Span) -> Context:
    """``trace.set_span_in_context(span)``: the current context plus ``span``."""
    if _FAST is None:
        return set_span_in_context(span)
    var, key = _FAST
    context = Context(var.get())
    dict.__setitem__(context, key, span)  # a new Context, not yet shared
    return context


def _bounded(spans: dict[Any, Any]) -> None:
    # Spans whose closing hook never came (a lost lease is not settled): end and forget
    # them rather than grow.
    if len(spans) > _MAX_OPEN:
        for entry in spans.values():
            if isinstance(entry, tuple):
                entry[0].end()
            elif isinstance(entry, Span):
                entry.end()  # a producer's span; a bare token has no span to end
        spans.clear()


class _RemoteSpan(NonRecordingSpan):
    """The producer's span, as the attempt's context carries it: the parent of the
    spans the task starts, what ``trace.get_current_span()`` returns in the task.

    Its ``SpanContext`` is built from the traceparent's fields when first asked for: an
    unsampled job whose task starts no span (most jobs when 1 in 10 or fewer traces are
    sampled) never pays for it. Built twice at worst (two threads asking at once), to
    the same value."""

    _state: str | None = None
    """The tracestate header, when there is one (a class default: most jobs have none)."""
    _built: SpanContext | None = None
    """get_span_context(), once asked."""

    def __init__(self, traceparent: str, state: str | None) -> None:
        # NonRecordingSpan.__init__ is not called: its one field, _context, is
        # get_span_context() here, and both methods that read it are overridden.
        # ``traceparent`` matched _TRACEPARENT; its fields are sliced out when needed.
        self._header = traceparent
        if state is not None:
            self._state = state

    def get_span_context(self) -> SpanContext:
        built = self._built
        if built is None:
            header, state = self._header, self._state
            flags = header[53:55]
            # Positional: SpanContext's keywords cost a third of its construction.
            built = self._built = SpanContext(
                int(header[3:35], 16),
                int(header[36:52], 16),
                True,  # is_remote
                _FLAGS.get(flags) or TraceFlags(int(flags, 16)),
                TraceState.from_header([state]) if state else None,
            )
        return built

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"
