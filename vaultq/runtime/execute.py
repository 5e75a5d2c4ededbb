"""The fate of one delivery: open → checks → decode → authorize → run under a deadline.

The order is fixed and every step before ``run`` fails closed. Nothing here calls the
broker (but the :class:`~vaultq.limits.Limiter` the worker passes in, for limited tasks):
the result is a :data:`Settlement` that the worker applies (batched, shielded).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel

from vaultq.brokers.base import Delivery, Release, Retry, Settlement
from vaultq.cancellation import issued
from vaultq.envelope import OpenedJob
from vaultq.errors import (
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    PayloadError,
    TaskRaised,
    UnknownTask,
)
from vaultq.jobs import JobContext, JobStatus, reset_current_job, set_current_job
from vaultq.middleware import Hooks, JobInfo, Outcome
from vaultq.policy import AUDIT_LOGGER, PolicyRequest, evaluate
from vaultq.runtime import chords, continuations, dependencies, flowsettle
from vaultq.runtime.outcomes import (
    UNAUTHENTICATED,
    Outcomes,
    log_traceback,
    safe_text,
    type_path,
)
from vaultq.runtime.preopen import usable
from vaultq.runtime.slots import JobSlot, Stop
from vaultq.runtime.threads import ThreadGuard

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.limits import Limiter
    from vaultq.runtime.isolation import ProcessPool
    from vaultq.tasks import Task

__all__ = [
    "UNAUTHENTICATED",
    "AttemptTimedOut",
    "Executor",
    "JobSlot",
    "Stop",
    "TaskRaised",
    "ThreadGuard",
]

log = logging.getLogger("vaultq.worker")
audit = logging.getLogger(AUDIT_LOGGER)

_RESULT_OVERHEAD = 1024
"""Room left for the sealed result's header, metadata and signature."""
# Module constants: an enum member read from its class is a Python-level lookup on 3.11.
_FAILED: Final = Outcome.FAILED
_SUCCEEDED: Final = Outcome.SUCCEEDED


class _EveryTask:
    """A task registry that has every name: to authenticate an envelope whose task this
    worker does not know (the answer is REJECTED either way; this decides whether the
    producer may hear it)."""

    def __contains__(self, name: object) -> bool:
        return True


_EVERY_TASK = _EveryTask()


class AttemptTimedOut(Exception):
    """The attempt hit its deadline."""


class Executor:
    """Runs deliveries for one worker process."""

    def __init__(
        self,
        app: App,
        *,
        worker_id: str,
        max_abandoned_threads: int,
        thread_tokens: int,
        process_pool: ProcessPool | None = None,
        hooks: Hooks | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.app = app
        self.worker_id = worker_id
        self.threads = ThreadGuard(max_abandoned_threads, thread_tokens)
        self.outcomes = Outcomes(app, worker_id)
        self.process_pool = process_pool
        self._tasks = app.tasks
        self.hooks = app.hooks() if hooks is None else hooks
        self.limiter = limiter
        """Asks the broker whether a limited task's job may start (vaultq/limits.py)."""
        # Precomputed: with no middleware, no JobInfo is ever built.
        self._describe = self.hooks.jobs or self.hooks.wraps_sync or self.hooks.wraps_async

    # -- the pipeline ---------------------------------------------------------------------

    def open(
        self, delivery: Delivery, now: float, slot: JobSlot | None = None
    ) -> OpenedJob | Settlement:
        """Open and check the envelope; a Settlement when the job must not run. An
        authentic job that is expired or not valid yet is described on ``slot`` (when
        middleware needs it) before its settlement is returned."""
        app = self.app
        if slot is not None and slot.opened is not None:
            pre, slot.opened = usable(slot.opened, now, app.clock_skew), None
            if pre is not None:
                return pre
        try:
            return app.open_job(
                delivery.envelope,
                tasks=self._tasks,
                now=now,
                queue=delivery.queue,
                job_id=delivery.job_id,
                skew=app.clock_skew,
            )
        except (EnvelopeExpired, EnvelopeNotYetValid) as exc:
            # Only an authentic envelope earns EXPIRED (or a wait): check everything but time.
            try:
                opened = app.open_job(
                    delivery.envelope,
                    tasks=self._tasks,
                    now=now,
                    queue=delivery.queue,
                    job_id=delivery.job_id,
                    skew=math.inf,
                )
            except EnvelopeError as inner:
                return self.outcomes.reject(delivery, inner)
            known = self._tasks.get(opened.header.task)
            if slot is not None and self._describe and known is not None:
                slot.job = self.describe(delivery, opened, known)
            if isinstance(exc, EnvelopeNotYetValid):
                return self.outcomes.defer(delivery, opened.header, now)
            audit.warning(
                "job %s expired before it could start (task %s, attempt %d)",
                delivery.job_id,
                opened.header.task,
                delivery.attempt,
                extra={"vaultq": {"job_id": delivery.job_id, "decision": "expired"}},
            )
            return self.outcomes.finish(
                delivery,
                opened,
                JobStatus.EXPIRED,
                task=known,
                started=None,
            )
        except UnknownTask as exc:
            # Authenticate it anyway (every check but the registry): a job that a trusted
            # signer sealed for a task this worker lacks is answered REJECTED under its
            # signed id (the producer hears it); anything else stays unauthenticated junk.
            try:
                app.open_job(
                    delivery.envelope,
                    tasks=_EVERY_TASK,
                    now=now,
                    queue=delivery.queue,
                    job_id=delivery.job_id,
                    skew=math.inf,
                )
            except EnvelopeError as inner:
                return self.outcomes.reject(delivery, inner)
            return self.outcomes.reject(delivery, exc, authenticated=True)
        except EnvelopeError as exc:
            return self.outcomes.reject(delivery, exc)

    async def run(self, slot: JobSlot) -> Settlement:
        """Everything that happens to one delivery; never raises (but cancellation)."""
        delivery = slot.delivery
        # The finished check comes before every other verdict: a copy of a finished job
        # (re-inserted after its expiry, say) must not earn EXPIRED, REJECTED or any
        # outcome that would stand beside the real one. The broker is write-once too.
        if delivery.completed:
            return self.outcomes.finished(delivery)
        # Time checks and requeue times use the broker's clock (see vaultq/clock.py).
        now = self.app.clock.now()
        opened = self.open(delivery, now, slot)
        if not isinstance(opened, OpenedJob):
            return opened
        header, body = opened.header, opened.body
        task = self._tasks[header.task]
        slot.task = task.name
        if self._describe:
            slot.job = self.describe(delivery, opened, task)

        flow = body.meta.flow
        if delivery.cancel_requested or slot.stop == Stop.CANCELLED:
            end = self.outcomes.finish(
                delivery, opened, JobStatus.CANCELLED, task=task, started=None
            )
            return await flowsettle.before_settle(self.app, opened, flow, end)
        if delivery.attempt > 1 and now > header.expires_at / 1000 + self.app.clock_skew:
            end = self.outcomes.finish(delivery, opened, JobStatus.EXPIRED, task=task, started=None)
            return await flowsettle.before_settle(self.app, opened, flow, end)

        raw = bytes(body.payload)
        if flow is not None and flow.step > 0:
            # The previous step's sealed result (a chord callback: its members' results).
            feed = chords.gather if flow.gather is not None else continuations.feed
            fed = await feed(self.app, opened, flow)
            if isinstance(fed, continuations.Waiting):
                return Release(delivery=delivery, not_before=self.app.clock.now() + 1.0)
            if isinstance(fed, continuations.Upstream):
                return self.outcomes.finish(
                    delivery,
                    opened,
                    JobStatus.CANCELLED,
                    task=task,
                    started=None,
                    error_type="vaultq.WorkflowRefused",
                    error=fed.reason,
                    reason="cancelled",
                )
            raw = fed.payload
        try:
            payload = task.payload_codec.decode(raw)
        except PayloadError as exc:
            return self.outcomes.reject(delivery, exc)
        # depends_on=: held until every job the producer named succeeded (runtime.dependencies)
        if body.meta.depends and (held := await dependencies.gate(self, delivery, opened, task)):
            return held

        decision = await evaluate(
            task.policy or self.app.default_policy,
            PolicyRequest(
                principal=body.principal,
                payload=payload,
                task=task.name,
                signer_id=header.signer_id,
                attempt=delivery.attempt,
                job_id=header.job_id,
                stage="run",
            ),
            timeout=self.app.policy_timeout,
        )
        if not decision.allowed:
            denied = self.outcomes.finish(
                delivery,
                opened,
                JobStatus.DENIED,
                task=task,
                started=None,
                error_type="vaultq.AuthorizationDenied",
                error=f"denied by {decision.policy} ({decision.reason})",
                reason="denied",
            )
            return await flowsettle.before_settle(self.app, opened, flow, denied)

        if not task.is_async and task.options.isolation == "none" and self.threads.full:
            log.warning(
                "not starting sync job %s: %d abandoned threads still run; handing it back",
                header.job_id,
                self.threads.abandoned,
            )
            return Release(delivery=delivery, not_before=self.app.clock.now() + 5.0)

        if self.limiter is not None and (
            task.max_concurrency is not None or task.rate_interval is not None
        ):
            # Last, once the job is known to be allowed: a job over its task's concurrency
            # or rate limit is handed back until its turn, neither failed nor retried.
            wait = await self.limiter.wait(task, payload, header.job_id, header.queue)
            if wait > 0:
                return Release(delivery=delivery, not_before=self.app.clock.now() + wait)

        settlement = await self._attempt(slot, task, opened, payload)
        return await flowsettle.before_settle(self.app, opened, flow, settlement)

    def describe(self, delivery: Delivery, opened: OpenedJob, task: Task[Any, Any]) -> JobInfo:
        """The safe fields of an opened job, for middleware (never payload or result)."""
        header, body = opened.header, opened.body
        trace = body.meta.trace
        options = task.options  # a property: read once (it was twice per job)
        return JobInfo(
            job_id=header.job_id,
            queue=header.queue,
            attempt=delivery.attempt,
            app=header.app,
            worker_id=self.worker_id,
            authenticated=True,
            task=task.name,
            principal_id=body.principal.id if body.principal is not None else None,
            signer_id=header.signer_id,
            enqueued_at=header.issued_at / 1000,
            not_before=header.not_before / 1000,
            max_attempts=options.retries + 1,
            isolation=options.isolation,
            redelivered=delivery.redelivered,
            # A copy: the opened envelope stays as it was.
            trace=dict(trace) if trace else {},
        )

    async def _attempt(
        self, slot: JobSlot, task: Task[Any, Any], opened: OpenedJob, payload: Any
    ) -> Settlement:
        delivery = slot.delivery
        header, body = opened.header, opened.body
        timeout = task.options.timeout
        if body.meta.timeout is not None:
            timeout = min(body.meta.timeout, task.options.timeout_ceiling)
        started = time.time()
        ctx = JobContext(
            job_id=header.job_id,
            task=task.name,
            queue=header.queue,
            attempt=delivery.attempt,
            principal=body.principal,
            signer_id=header.signer_id,
            deadline=started + timeout,
            max_attempts=task.max_attempts,
            worker_id=self.worker_id,
        )
        value: bytes | None = None
        failure: tuple[str, str] | None = None
        verdict: tuple[bool, float | None] = (False, None)
        timed_out = False
        job = slot.job
        hooks = self.hooks
        reported = False
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                if job is not None:
                    # The one place attempts are reported (isolated ones too: by the
                    # parent). Inside the scope: its deadline timer copies the task's
                    # context, and asyncio keeps a cancelled timer until purged -- made
                    # first, it does not keep what a middleware sets there (a span) alive.
                    for hook in hooks.on_attempt_started:  # hooks.attempt_started, inline
                        try:
                            hook(job)
                        except Exception as exc:
                            hooks.failed(hook, "attempt_started", exc)
                    reported = True
                slot.scope = scope
                if slot.stop is not None:
                    scope.cancel()
                try:
                    value = await self._call(
                        task,
                        payload,
                        ctx,
                        opened,
                        timeout,
                        urgent=lambda: slot.stop == Stop.LEASE_LOST,
                        job=job,
                    )
                except AttemptTimedOut:
                    timed_out = True
                except TaskRaised as exc:
                    failure = (exc.error_type, exc.message)
                    retry = exc.retry
                    if retry is None:
                        retry = task.options.retries_unknown_errors
                    verdict = (retry, exc.delay)
                except Exception as exc:
                    failure = (type_path(exc), safe_text(exc))
                    verdict = task.options.retry_verdict(exc)
                    log_traceback(exc, header.job_id, task.name, delivery.attempt, payload)
                except BaseException as exc:
                    # SystemExit (sys.exit() in task code), KeyboardInterrupt or a custom
                    # BaseException is the task failing, not the worker stopping: it must
                    # not crash the worker, nor print its message. Only a cancellation
                    # that was issued (deadline, cancel, shutdown) passes through: a
                    # CancelledError the task raised itself (awaiting a cancelled future)
                    # is a failed attempt.
                    if issued(exc, scope):
                        raise
                    failure = (type_path(exc), safe_text(exc))
                    verdict = task.options.retry_verdict(exc)
                    log_traceback(exc, header.job_id, task.name, delivery.attempt, payload)
        except BaseException:
            # Cancelled from outside this attempt's scope (the worker torn down).
            if job is not None and reported:
                hooks.attempt_finished(job, Outcome.INTERRUPTED, time.time() - started)
            raise
        slot.scope = None
        cancelled = scope.cancelled_caught  # a property: read once
        if job is not None:
            outcome = (
                _SUCCEEDED
                if not (cancelled or timed_out or failure)
                else _attempt_outcome(cancelled, slot.stop, timed_out, failure)
            )
            duration = time.time() - started
            for hook in hooks.on_attempt_finished:  # hooks.attempt_finished, inline
                try:
                    hook(job, outcome, duration)
                except Exception as exc:
                    hooks.failed(hook, "attempt_finished", exc)
        if cancelled:
            if slot.stop == Stop.LEASE_LOST:
                # The worker drops this settlement (and the broker would refuse it).
                return Release(delivery=delivery, not_before=self.app.clock.now())
            if slot.stop == Stop.SHUTDOWN:
                log.info("job %s handed back at shutdown", header.job_id)
                return Release(delivery=delivery, not_before=self.app.clock.now())
            if slot.stop == Stop.CANCELLED:
                return self.outcomes.finish(
                    delivery, opened, JobStatus.CANCELLED, task=task, started=started
                )
            timed_out = True

        if timed_out:
            log.warning(
                "job %s (%s) timed out after %.3f s on attempt %d",
                header.job_id,
                task.name,
                time.time() - started,
                delivery.attempt,
            )
            if task.options.retry_on_timeout and delivery.attempt < task.max_attempts:
                return self._retry(delivery, task)
            return self.outcomes.finish(
                delivery,
                opened,
                JobStatus.TIMED_OUT,
                task=task,
                started=started,
                error_type="TimeoutError",
                error=f"attempt exceeded its {timeout:g} s deadline",
                reason="timed_out",
            )
        if failure is not None:
            error_type, message = failure
            log.warning(
                "job %s (%s) raised %s on attempt %d of %d",
                header.job_id,
                task.name,
                error_type,
                delivery.attempt,
                task.max_attempts,
            )
            retry, delay = verdict
            if retry and delivery.attempt < task.max_attempts:
                return self._retry(delivery, task, delay)
            return self.outcomes.finish(
                delivery,
                opened,
                JobStatus.FAILED,
                task=task,
                started=started,
                error_type=error_type,
                error=message,
                reason="failed",
            )
        return self.outcomes.finish(
            delivery, opened, JobStatus.SUCCEEDED, task=task, started=started, value=value
        )

    def _retry(
        self, delivery: Delivery, task: Task[Any, Any], delay: float | None = None
    ) -> Settlement:
        if delay is None:
            cap = min(task.options.max_backoff, task.options.backoff * 2 ** (delivery.attempt - 1))
            # Jitter spreads retries; it protects nothing, so a plain PRNG is right here.
            delay = random.uniform(0, cap)  # nosec B311
        # else: the task asked for this wait (vaultq.Retry(delay=...)): kept exactly.
        return Retry(delivery=delivery, not_before=self.app.clock.now() + delay)

    def _fits(self, encoded: bytes) -> bytes:
        if len(encoded) > self.app.max_envelope_size - _RESULT_OVERHEAD:
            raise TaskRaised(
                "vaultq.PayloadError",
                f"the task's return value is {len(encoded)} bytes, too large for the app's "
                f"max_envelope_size ({self.app.max_envelope_size}); return a reference instead",
                retry=False,
            )
        return encoded

    async def _call(
        self,
        task: Task[Any, Any],
        payload: Any,
        ctx: JobContext,
        opened: OpenedJob,
        timeout: float,
        *,
        urgent: Callable[[], bool] | None = None,
        job: JobInfo | None = None,
    ) -> bytes | None:
        """Run the task function once and encode its result; raises on failure.
        ``urgent()``: the attempt lost its lease, so an isolated child is killed at once."""
        if task.options.isolation == "process":
            if self.process_pool is None:
                raise TaskRaised(
                    "vaultq.ConfigurationError", "process isolation is not available here"
                )
            encoded: bytes = await self.process_pool.run(task, opened, ctx, timeout, urgent=urgent)
            if task.result_type is not None:
                try:
                    task.result_codec.decode(encoded)
                except PayloadError as exc:
                    raise TaskRaised(
                        "vaultq.PayloadError", f"the task's return value: {exc}", retry=False
                    ) from None
            return self._fits(encoded)
        token = set_current_job(ctx)
        try:
            if task.is_async:
                result = await self._call_async(task, payload, job)
            else:
                result = await self._call_sync(task, payload, ctx, job)
        finally:
            reset_current_job(token)
        if task.result_type is None and result is not None:
            raise TaskRaised(
                "vaultq.PayloadError",
                f"task returned {type(result).__name__}, declared None",
                retry=False,
            )
        try:
            encoded = task.result_codec.encode(result)
            if not _plainly_typed(result, task.result_type):
                # msgspec encodes without checking types: prove the value decodes as declared.
                task.result_codec.decode(encoded)
        except PayloadError as exc:
            raise TaskRaised(
                "vaultq.PayloadError", f"the task's return value: {exc}", retry=False
            ) from None
        return self._fits(encoded)

    async def _call_async(self, task: Task[Any, Any], payload: Any, job: JobInfo | None) -> Any:
        if job is None or not self.hooks.wraps_async:
            return await task.fn(payload)
        # The result goes around the wrappers, never through them.
        box: list[Any] = []

        async def call() -> None:
            box.append(await task.fn(payload))

        await self.hooks.wrap_async(job, call)()
        return box[0]

    async def _call_sync(
        self, task: Task[Any, Any], payload: Any, ctx: JobContext, job: JobInfo | None
    ) -> Any:
        def call() -> Any:
            token = set_current_job(ctx)
            try:
                return task.fn(payload)
            finally:
                reset_current_job(token)

        run: Callable[[], Any] = call
        if job is not None and self.hooks.wraps_sync:
            box: list[Any] = []

            def inner() -> None:
                box.append(call())

            wrapped = self.hooks.wrap_sync(job, inner)

            def run() -> Any:
                wrapped()
                return box[0]

        return await self.threads.run(run, f"{task.name}[{ctx.job_id}]")


def _attempt_outcome(
    cancelled: bool, stop: str | None, timed_out: bool, failure: tuple[str, str] | None
) -> Outcome:
    if cancelled:
        if stop == Stop.CANCELLED:
            return Outcome.CANCELLED
        if stop is not None:
            return Outcome.INTERRUPTED  # shutdown or lost lease: handed back
        return Outcome.TIMED_OUT
    if timed_out:
        return Outcome.TIMED_OUT
    return _FAILED if failure is not None else _SUCCEEDED


def _plainly_typed(value: Any, declared: Any) -> bool:
    """Cheap check for the common scalar cases; Structs and containers are decoded instead,
    since their fields are not type-checked at construction."""
    if declared is None:
        return value is None
    return declared in (int, str, float, bytes) and type(value) is declared
