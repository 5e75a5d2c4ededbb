"""Middleware: one protocol that sees every job's life, with safe fields only.

A middleware is a subclass of :class:`Middleware` that overrides the hooks it needs
(every hook of the base class does nothing). Install it with ``App(middleware=[...])`` or
``app.add_middleware(m)``; the hooks then run in the producer (enqueue hooks) and in the
worker (every other hook). ``docs/extending.md`` lists every hook and when it runs.

What a hook is given is *safe by construction*: ids, the task name, the queue, the
principal's id, the attempt number, outcomes, durations and reason codes. Never a payload
value, a result, a ``Secret``, a principal's roles or attributes, or key material: metrics,
traces and event streams are where data usually leaks, so they get nothing to leak.

Hooks are guarded: an exception in a hook is logged on the ``vaultq.middleware`` logger
(the middleware's own frames; never the task's exception it may have seen pass) and the
job goes on as if the middleware were not there. A job is never lost, skipped or run
twice because of a middleware.

With no middleware installed nothing is dispatched: every call site tests one
precomputed attribute of :class:`Hooks` and moves on.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import msgspec

__all__ = [
    "MAX_TRACE_BYTES",
    "CallWrappers",
    "EnqueueInfo",
    "Hooks",
    "JobInfo",
    "Middleware",
    "Outcome",
    "WorkerInfo",
]

log = logging.getLogger("vaultq.middleware")

MAX_TRACE_BYTES = 4096
"""Largest trace context (keys and values, UTF-8) ``before_enqueue`` may add to a job;
a larger or malformed one is dropped with a warning (the job is still enqueued)."""


class Outcome(enum.StrEnum):
    """What happened: to one attempt (``attempt_finished``) or to a delivery once its
    settlement was written (``settled``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The task raised (attempt); no retry left or the error is not retried (settled)."""
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """Attempt only: stopped from outside (worker shutdown, lost lease); handed back."""
    RETRYING = "retrying"
    """Settled only: the attempt failed or timed out and the job will run again."""
    EXPIRED = "expired"
    """Settled only: the job's start deadline passed before it could run."""
    DENIED = "denied"
    """Settled only: the task's policy refused the principal in the worker."""
    RELEASED = "released"
    """Settled only: handed back unrun or interrupted (shutdown, not valid yet, too many
    abandoned threads); it will be delivered again."""
    DROPPED = "dropped"
    """Settled only: a redelivered copy of a job that already has its outcome."""
    INTERNAL_ERROR = "internal_error"
    """Settled only: vaultq itself failed on this delivery (see the worker log)."""


class EnqueueInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One job being enqueued (``before_enqueue``/``after_enqueue``)."""

    job_id: str
    task: str
    queue: str
    app: str
    principal_id: str | None
    enqueued_at: float
    """The producer's clock at the enqueue (seconds since the epoch)."""
    not_before: float
    """When the job may start (``enqueued_at`` unless delayed)."""


# ``gc=False``: one JobInfo per delivery lives as long as its attempt, and with 50 jobs in
# flight a tracked one was a large part of what the collector walked each cycle. Its
# fields are strings, numbers and a str -> str dict, which cannot hold a reference back
# to it, so it can never be part of a cycle.
class JobInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One delivery in the worker.

    Until the envelope opened (and for every rejected delivery) only ``job_id``, ``queue``
    and ``attempt`` are known, and ``authenticated`` is False: the id is then the broker's
    claim, escaped for logs, and means nothing. Once opened, the fields come from the
    signed and sealed envelope.
    """

    job_id: str
    queue: str
    attempt: int
    app: str
    worker_id: str
    authenticated: bool = False
    task: str = ""
    principal_id: str | None = None
    signer_id: str = ""
    enqueued_at: float = 0.0
    """Sealed issue time (the producer's clock), seconds since the epoch."""
    not_before: float = 0.0
    """Sealed earliest start; queue latency is ``start - max(enqueued_at, not_before)``."""
    max_attempts: int = 0
    isolation: str = "none"
    redelivered: bool = False
    """Delivered again after its lease ran out (a worker died or stalled), not retried."""
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    """The trace context ``before_enqueue`` sealed into the job (a copy per delivery,
    shared by every middleware: read it, don't change it)."""


class WorkerInfo:
    """The worker a middleware runs in (``worker_started``/``worker_stopped``).

    ``start_soon(fn, *args, name=...)`` runs ``await fn(*args)`` in the worker's task
    group until the worker stops (it is cancelled then): a heartbeat, a scheduler, a
    metrics flusher. An exception it raises is logged and ends that task only.
    """

    __slots__ = (
        "_spawn",
        "_stats",
        "app",
        "concurrency",
        "host",
        "id",
        "pid",
        "queues",
        "started_at",
    )

    def __init__(
        self,
        *,
        worker_id: str,
        app: str,
        queues: Sequence[str],
        concurrency: int,
        stats: Callable[[], tuple[int, int, int, int]],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]], str], None],
    ) -> None:
        self.id = worker_id
        self.app = app
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started_at = time.time()
        self._stats = stats
        self._spawn = spawn

    def __repr__(self) -> str:
        return f"WorkerInfo({self.id!r}, app={self.app!r}, queues={self.queues!r})"

    @property
    def in_flight(self) -> int:
        """Deliveries fetched and not yet settled, now."""
        return self._stats()[0]

    @property
    def processed(self) -> int:
        """Deliveries settled since the worker started."""
        return self._stats()[1]

    @property
    def abandoned_threads(self) -> int:
        """Sync attempts stopped at their deadline whose threads still run, now."""
        return self._stats()[2]

    @property
    def fenced(self) -> int:
        """Attempts cancelled (or never started) since the worker started because their
        lease could no longer be proven."""
        return self._stats()[3]

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None
    ) -> None:
        label: str = name or str(getattr(fn, "__qualname__", None) or repr(fn))

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                _log_failure(f"background task {label}", exc)

        self._spawn(guarded, label)


class Middleware:
    """Base class of middleware: every hook does nothing; override the ones you need.

    The per-job hooks are plain functions called on the worker's event loop (the enqueue
    hooks on the producer's): keep them quick and never block. For I/O (a broker write,
    an HTTP push) queue the event and flush it from a task started with
    ``WorkerInfo.start_soon`` in :meth:`worker_started`.
    """

    async def worker_started(self, worker: WorkerInfo) -> None:
        """The worker is connected and about to consume (before its first fetch)."""

    async def worker_stopped(self, worker: WorkerInfo) -> None:
        """The worker drained: every job settled or handed back, background tasks
        cancelled. Bounded by a few seconds, shielded from cancellation."""

    def before_enqueue(self, job: EnqueueInfo, trace: dict[str, str]) -> None:
        """A job is about to be sealed (its policy allowed it). Entries added to
        ``trace`` (strings, at most :data:`MAX_TRACE_BYTES` in all) travel *inside* the
        sealed envelope and come back as ``JobInfo.trace`` in the worker: W3C
        ``traceparent``/``tracestate``, a request id."""

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        """The broker took the job (``error`` None), or the enqueue failed after
        ``before_enqueue`` (``error``: the exception's class name, e.g.
        ``BrokerUnavailable``, ``DuplicateJob``)."""

    def attempt_started(self, job: JobInfo) -> None:
        """The task is about to be called: the envelope opened, the job is not expired
        nor cancelled, and the policy allowed it. For ``isolation="process"`` tasks this
        runs in the worker, not in the child."""

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        """The call ended: SUCCEEDED, FAILED, TIMED_OUT, CANCELLED or INTERRUPTED, after
        ``duration`` seconds (wall clock). Once per ``attempt_started``."""

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        """The delivery's settlement was written to the broker. ``reason`` is the dead
        letter's reason code for buried jobs (``failed``, ``timed_out``, ``denied``, ...)
        and None otherwise. Not called for a settlement that could not be written (lost
        lease, broker gone at exit): that job is delivered again."""

    @staticmethod
    def failed(hook: Any, name: str, exc: BaseException) -> None:
        """Log a bound hook that raised (the job goes on): for call sites that loop over
        ``on_attempt_started``, ``on_attempt_finished`` or ``on_settled`` themselves."""
        _hook_failed(hook.__self__, name, exc)

    def rejected(self, job: JobInfo, reason: str) -> None:
        """A delivery was refused without running and its dead letter written: the
        envelope failed its checks (``unauthenticated`` for anything refused before or by
        the signature check; ``payload``, ``unknown_task``, ``unknown_key`` or
        ``decryption_failed`` for a trusted signer's job; ``revoked_key`` for one naming a
        revoked key) or it replays a finished job (``replayed``)."""

    def around_sync(self, job: JobInfo, call: Callable[[], None]) -> None:
        """Runs around a sync task's call, in the task's own thread (in the child
        process for ``isolation="process"``). Call ``call()`` once. It returns None (the
        result never reaches a middleware); the task's exception passes through it, and
        a middleware cannot change the outcome by catching it."""
        call()

    async def around_async(self, job: JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        """Like :meth:`around_sync`, around an async task's call, inside its deadline."""
        await call()


def _overriding(middleware: Sequence[Middleware], hook: str) -> tuple[Middleware, ...]:
    base = getattr(Middleware, hook)
    return tuple(m for m in middleware if getattr(type(m), hook, base) is not base)


def _bound(middleware: Sequence[Middleware], hook: str) -> tuple[Any, ...]:
    """The bound ``hook`` methods of the middleware that override it."""
    return tuple(getattr(m, hook) for m in _overriding(middleware, hook))


class Hooks:
    """The installed middleware, sorted per hook once: a hook that no middleware
    overrides is an empty tuple and its ``fire``/``wrap`` is never reached (call sites
    test :attr:`enqueue`, :attr:`jobs`, :attr:`lifecycle` or the wrap flags first)."""

    __slots__ = (
        "_after_enqueue",
        "_around_async",
        "_around_sync",
        "_attempt_finished",
        "_attempt_started",
        "_before_enqueue",
        "_rejected",
        "_settled",
        "_worker_started",
        "_worker_stopped",
        "enqueue",
        "jobs",
        "lifecycle",
        "middleware",
        "on_attempt_finished",
        "on_attempt_started",
        "on_settled",
        "wraps_async",
        "wraps_sync",
    )

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = tuple(middleware)
        m = self.middleware
        self._worker_started = _overriding(m, "worker_started")
        self._worker_stopped = _overriding(m, "worker_stopped")
        self._before_enqueue = _overriding(m, "before_enqueue")
        self._after_enqueue = _overriding(m, "after_enqueue")
        # The per-delivery hooks are kept bound: one attribute lookup less per call on
        # the path of every job (a failing one is named through its __self__).
        self._attempt_started = _bound(m, "attempt_started")
        self._attempt_finished = _bound(m, "attempt_finished")
        self._settled = _bound(m, "settled")
        self._rejected = _bound(m, "rejected")
        # The worker's per-job call sites loop over these themselves (one Python frame
        # less per hook and job), each call guarded as below, failures through failed().
        self.on_attempt_started = self._attempt_started
        self.on_attempt_finished = self._attempt_finished
        self.on_settled = self._settled
        self._around_sync = _overriding(m, "around_sync")
        self._around_async = _overriding(m, "around_async")
        self.enqueue = bool(self._before_enqueue or self._after_enqueue)
        """Some middleware watches enqueues."""
        self.jobs = bool(
            self._attempt_started or self._attempt_finished or self._settled or self._rejected
        )
        """Some middleware watches deliveries (the worker then builds a JobInfo each)."""
        self.lifecycle = bool(self._worker_started or self._worker_stopped)
        self.wraps_sync = bool(self._around_sync)
        self.wraps_async = bool(self._around_async)

    def __bool__(self) -> bool:
        return bool(self.middleware)

    # -- worker lifecycle -----------------------------------------------------------------

    async def worker_started(self, worker: WorkerInfo) -> None:
        for m in self._worker_started:
            try:
                await m.worker_started(worker)
            except Exception as exc:
                _hook_failed(m, "worker_started", exc)

    async def worker_stopped(self, worker: WorkerInfo) -> None:
        # Reverse order: the first middleware started is the last to stop.
        for m in reversed(self._worker_stopped):
            try:
                await m.worker_stopped(worker)
            except Exception as exc:
                _hook_failed(m, "worker_stopped", exc)

    # -- enqueue --------------------------------------------------------------------------

    def before_enqueue(self, job: EnqueueInfo) -> dict[str, str] | None:
        """Run ``before_enqueue`` hooks; the trace context to seal, or None."""
        trace: dict[str, str] = {}
        for m in self._before_enqueue:
            try:
                m.before_enqueue(job, trace)
            except Exception as exc:
                _hook_failed(m, "before_enqueue", exc)
        if not trace:
            return None
        return _checked_trace(trace)

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        for m in self._after_enqueue:
            try:
                m.after_enqueue(job, error)
            except Exception as exc:
                _hook_failed(m, "after_enqueue", exc)

    # -- deliveries -----------------------------------------------------------------------

    def attempt_started(self, job: JobInfo) -> None:
        for hook in self._attempt_started:
            try:
                hook(job)
            except Exception as exc:
                _hook_failed(hook.__self__, "attempt_started", exc)

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        for hook in self._attempt_finished:
            try:
                hook(job, outcome, duration)
            except Exception as exc:
                _hook_failed(hook.__self__, "attempt_finished", exc)

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        for hook in self._settled:
            try:
                hook(job, outcome, reason)
            except Exception as exc:
                _hook_failed(hook.__self__, "settled", exc)

    @staticmethod
    def failed(hook: Any, name: str, exc: BaseException) -> None:
        """Log a bound hook that raised (the job goes on): for call sites that loop over
        ``on_attempt_started``, ``on_attempt_finished`` or ``on_settled`` themselves."""
        _hook_failed(hook.__self__, name, exc)

    def rejected(self, job: JobInfo, reason: str) -> None:
        for hook in self._rejected:
            try:
                hook(job, reason)
            except Exception as exc:
                _hook_failed(hook.__self__, "rejected", exc)

    # -- around the call --------------------------------------------------------------------

    def wrap_sync(self, job: JobInfo, call: Callable[[], None]) -> Callable[[], None]:
        """``call`` inside every ``around_sync`` (the first middleware outermost)."""
        for m in reversed(self._around_sync):
            call = _guard_sync(m, job, call)
        return call

    def wrap_async(
        self, job: JobInfo, call: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """``call`` inside every ``around_async`` (the first middleware outermost)."""
        for m in reversed(self._around_async):
            call = _guard_async(m, job, call)
        return call


class _Pass:
    """What happened to the inner call while a wrapper ran."""

    __slots__ = ("called", "error")

    def __init__(self) -> None:
        self.called = False
        self.error: BaseException | None = None


def _guard_sync(m: Middleware, job: JobInfo, inner: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        state = _Pass()

        def once() -> None:
            if state.called:
                return  # a wrapper that calls twice must not run the task twice
            state.called = True
            try:
                inner()
            except BaseException as exc:
                state.error = exc
                raise

        try:
            m.around_sync(job, once)
        except BaseException as exc:
            if exc is state.error:
                raise
            if not isinstance(exc, Exception):
                raise
            _hook_failed(m, "around_sync", exc)
        if not state.called:
            # The wrapper failed (or forgot) before the call: the job still runs, once.
            _not_called(m, "around_sync", job)
            inner()
        elif state.error is not None:
            # Swallowed by the wrapper: the task's failure stands all the same.
            raise state.error

    return call


def _guard_async(
    m: Middleware, job: JobInfo, inner: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        state = _Pass()

        async def once() -> None:
            if state.called:
                return
            state.called = True
            try:
                await inner()
            except BaseException as exc:
                state.error = exc
                raise

        try:
            await m.around_async(job, once)
        except BaseException as exc:
            # A cancellation (the deadline, a cancel by id, shutdown) is a BaseException
            # and always goes on, as does the task's own exception.
            if exc is state.error or not isinstance(exc, Exception):
                raise
            _hook_failed(m, "around_async", exc)
        if not state.called:
            _not_called(m, "around_async", job)
            await inner()
        elif state.error is not None:
            raise state.error

    return call


def _checked_trace(trace: dict[str, str]) -> dict[str, str] | None:
    size = 0
    for key, value in trace.items():
        if not isinstance(key, str) or not isinstance(value, str):
            log.warning(
                "before_enqueue added a trace entry that is not str -> str; the job is "
                "enqueued without trace context"
            )
            return None
        size += len(key.encode("utf-8", "replace")) + len(value.encode("utf-8", "replace"))
    if size > MAX_TRACE_BYTES:
        log.warning(
            "before_enqueue added %d bytes of trace context (limit %d); the job is "
            "enqueued without it",
            size,
            MAX_TRACE_BYTES,
        )
        return None
    return dict(trace)


def _hook_failed(m: Middleware, hook: str, exc: BaseException) -> None:
    _log_failure(f"middleware {type(m).__module__}.{type(m).__qualname__}.{hook}", exc)


def _log_failure(what: str, exc: BaseException) -> None:
    # chain=False: an exception raised while the task's own exception was in flight has
    # it as __context__, and the task's message may quote payload values.
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    log.warning("%s raised %s; the job goes on without it\n%s", what, type(exc).__name__, detail)


def _not_called(m: Middleware, hook: str, job: JobInfo) -> None:
    log.warning(
        "middleware %s.%s.%s returned without calling the task of job %s; it runs now anyway",
        type(m).__module__,
        type(m).__qualname__,
        hook,
        job.job_id,
    )


class CallWrappers(Middleware):
    """``App.around_sync``/``App.around_async`` on this protocol: plain wrappers of the
    task call (``wrap(call) -> call()``), applied in list order (the last one added is
    the outermost), read when each job runs."""

    def __init__(
        self,
        sync: Sequence[Callable[[Callable[[], Any]], Any]],
        async_: Sequence[Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]],
    ) -> None:
        self.sync = sync
        self.async_ = async_

    def around_sync(self, job: JobInfo, call: Callable[[], None]) -> None:
        wrapped: Callable[[], Any] = call
        for wrap in self.sync:
            wrapped = _bind_sync(wrap, wrapped)
        wrapped()

    async def around_async(self, job: JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        wrapped: Callable[[], Awaitable[Any]] = call
        for wrap in self.async_:
            wrapped = _bind_async(wrap, wrapped)
        await wrapped()


def _bind_sync(
    wrap: Callable[[Callable[[], Any]], Any], inner: Callable[[], Any]
) -> Callable[[], Any]:
    def call() -> Any:
        return wrap(inner)

    return call


def _bind_async(
    wrap: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    inner: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await wrap(inner)

    return call
