"""The scheduler loop: enqueue each due tick of an app's schedules, exactly once.

Every worker that holds a signing key runs one (nothing extra to deploy), and so does
``vaultq scheduler MODULE`` for split-trust deployments whose workers only verify. Any
number may run at once: each tick is claimed in the broker by (schedule, tick time) with
one atomic step (:meth:`vaultq.brokers.base.TickStore.claim_tick`) that moves the
schedule's mark forward and writes the job, whose id is derived from the same pair. A
scheduler killed at any point leaves either both or neither, so the tick fires once.

One pass, per schedule (the tick rules are in ``vaultq/schedule.py``):

    first start      mark := now, unless another scheduler set it (nothing fires for the past)
    missed ticks     ticks in (mark, now - grace]: "skip" moves the mark past them;
                     "run_once" fires the newest of them now, unless an on-time tick fires
    on-time ticks    ticks in (max(mark, now - grace), now]: seal, authorize, claim, in order

A tick's job is sealed under the schedule's principal and passes the task's policy at
enqueue (audited) and again in the worker, like any job. Time is the broker's clock as
estimated by ``app.clock`` (or the ``clock`` a test passes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio

from vaultq.brokers.base import Broker, EnqueueItem, TickStore
from vaultq.envelope import JobMeta, seal_job
from vaultq.errors import (
    AuthorizationDenied,
    BrokerError,
    ConfigurationError,
    DuplicateJob,
    VaultqError,
)
from vaultq.middleware import EnqueueInfo, Middleware, WorkerInfo
from vaultq.priority import task_level
from vaultq.schedule import Schedule

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["Scheduler", "SchedulerMiddleware", "scheduler_middleware", "tick_store"]

log = logging.getLogger("vaultq.scheduler")

_MAX_SLEEP = 1.0
"""Seconds a scheduler sleeps at most between passes (marks moved elsewhere are seen)."""
_ERROR_PAUSE = 1.0


def tick_store(broker: Broker) -> TickStore:
    """``broker`` as a :class:`TickStore`, or a ConfigurationError saying it cannot
    schedule."""
    if not isinstance(broker, TickStore):
        raise ConfigurationError(
            f"the broker {broker.url} has no schedule operations (TickStore): periodic jobs "
            "need the Redis or SQLite broker, or a broker that implements claim_tick"
        )
    return broker


class Scheduler:
    """Enqueues the due ticks of ``schedules`` (default: all of ``app``'s).

    ``clock``: the current time on the broker's clock (default ``app.clock.now``); tests
    pass their own to drive a scheduler through a DST change.
    """

    def __init__(
        self,
        app: App,
        *,
        schedules: Sequence[Schedule] | None = None,
        clock: Callable[[], float] | None = None,
        max_sleep: float = _MAX_SLEEP,
    ) -> None:
        self.app = app
        self.schedules = list(app.schedules.values() if schedules is None else schedules)
        self._clock = clock
        self.max_sleep = max_sleep
        self.fired = 0
        """Jobs this scheduler wrote (ticks other schedulers claimed are not counted)."""
        self._stopping = anyio.Event()

    def now(self) -> float:
        return self._clock() if self._clock is not None else self.app.clock.now()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, started: anyio.Event | None = None) -> None:
        """Pass after pass until :meth:`stop` (or cancellation). Never raises for a broker
        outage or a refused tick: it logs, waits and carries on."""
        if not self.schedules:
            if started is not None:
                started.set()
            return
        log.info(
            "scheduler: %d schedule(s): %s",
            len(self.schedules),
            "; ".join(f"{s.name} ({s.describe()})" for s in self.schedules),
        )
        if started is not None:
            started.set()
        while not self._stopping.is_set():
            try:
                broker = await self.app.broker()
                if self._clock is None and self.app.clock.due():
                    await self.app.clock.measure(broker)
                await self.run_pass(broker)
                pause = self._until_next_tick()
            except BrokerError as exc:
                log.warning("scheduler: broker error (%s); retrying in %.0f s", exc, _ERROR_PAUSE)
                pause = _ERROR_PAUSE
            with anyio.move_on_after(pause):
                await self._stopping.wait()

    def _until_next_tick(self) -> float:
        now = self.now()
        upcoming = [t for s in self.schedules if (t := s.next_after(now)) is not None]
        if not upcoming:
            return self.max_sleep
        # Wake just after the tick: the tick is claimed once its time has come.
        return max(0.0, min(min(upcoming) - now + 0.001, self.max_sleep))

    async def run_pass(self, broker: Broker | None = None) -> list[str]:
        """One pass over every schedule; returns the job ids this pass wrote."""
        store = tick_store(broker if broker is not None else await self.app.broker())
        now = self.now()
        written: list[str] = []
        marks: dict[str, dict[str, float]] = {}
        for schedule in self.schedules:
            queue = schedule.queue
            if queue not in marks:
                marks[queue] = {m.name: m.mark for m in await store.schedule_marks(queue)}
            written += await self._pass_one(store, schedule, marks[queue].get(schedule.name), now)
        self.fired += len(written)
        return written

    async def _pass_one(
        self, store: TickStore, s: Schedule, mark: float | None, now: float
    ) -> list[str]:
        if mark is None:
            # First start of this schedule anywhere: the past is not replayed.
            mark = await store.mark_schedule(s.queue, s.name, math.floor(now), only_if_absent=True)
        on_time_from = max(mark, now - s.grace)
        on_time = s.ticks(on_time_from, now)
        written: list[str] = []
        if on_time_from > mark:
            newest_missed = s.last_at_or_before(on_time_from)
            if newest_missed is not None and newest_missed > mark:
                if s.missed == "run_once" and not on_time:
                    log.info(
                        "schedule %s: ticks missed up to %s; running once now (run_once)",
                        s.name,
                        s.job_id(newest_missed),
                    )
                    if await self._fire(store, s, newest_missed, lateness=0.0):
                        written.append(s.job_id(newest_missed))
                else:
                    log.info(
                        "schedule %s: ticks missed up to %s were skipped (missed=%s)",
                        s.name,
                        s.job_id(newest_missed),
                        s.missed,
                    )
                    await store.mark_schedule(s.queue, s.name, newest_missed)
        for tick in on_time:
            if await self._fire(store, s, tick, lateness=now - tick):
                written.append(s.job_id(tick))
        return written

    async def _fire(self, store: TickStore, s: Schedule, tick: float, *, lateness: float) -> bool:
        """Seal and claim one tick; True when this call wrote its job.

        The same steps, in the same order, as ``task.enqueue``: the policy, then the app's
        ``before_enqueue`` hooks (their trace context is sealed into the job), the seal,
        the write, and ``after_enqueue``. A tick another scheduler claimed first is, for
        the hooks, a duplicate (``error="DuplicateJob"``), as for a held unique key."""
        app = self.app
        job_id = s.job_id(tick)
        try:
            await app.authorize_enqueue(s.task, s.payload, s.principal, job_id)
        except AuthorizationDenied as exc:
            # Not retried every pass: the tick is passed over, and the next one is
            # evaluated afresh (the policy may allow it by then).
            log.error("schedule %s: tick %s not enqueued: %s", s.name, job_id, exc)
            await store.mark_schedule(s.queue, s.name, tick)
            return False
        # Sealed times are this host's clock (its signed claims). A late tick's not-before
        # goes back to the tick (at most grace), so its expiry counts from the tick.
        now = app.clock.local()
        not_before = now - max(0.0, min(lateness, s.grace))
        hooks = app.enqueue_hooks
        if not hooks.enqueue:
            missed = await self._seal_and_claim(store, s, tick, job_id, now, not_before, JobMeta())
            return missed is None
        info = EnqueueInfo(
            job_id=job_id,
            task=s.task.name,
            queue=s.queue,
            app=app.name,
            principal_id=s.principal.id,
            enqueued_at=now,
            not_before=not_before,
        )
        trace = hooks.before_enqueue(info)
        # Inside the seal, as for any job: trace context reveals call graphs.
        meta = JobMeta() if trace is None else JobMeta(trace=trace)
        try:
            missed = await self._seal_and_claim(store, s, tick, job_id, now, not_before, meta)
        except BaseException as exc:
            hooks.after_enqueue(info, type(exc).__name__)
            raise
        hooks.after_enqueue(info, missed)
        return missed is None

    async def _seal_and_claim(
        self,
        store: TickStore,
        s: Schedule,
        tick: float,
        job_id: str,
        now: float,
        not_before: float,
        meta: JobMeta,
    ) -> str | None:
        """None when this call wrote the tick's job; otherwise why not, as an exception
        class name for ``after_enqueue``."""
        app = self.app
        try:
            envelope = self._seal(s, job_id, now, not_before, meta)
            level = task_level(app, s.task, None)
        except VaultqError as exc:
            log.error("schedule %s: tick %s could not be sealed: %s", s.name, job_id, exc)
            await store.mark_schedule(s.queue, s.name, tick)
            return type(exc).__name__
        item = EnqueueItem(queue=s.queue, job_id=job_id, envelope=envelope, priority=level)
        # The id stays reserved for the job's validity, like a custom job id.
        reserve = s.task.options.expires + app.clock_skew
        written = await store.claim_tick(item, schedule=s.name, tick=tick, ttl=reserve)
        if not written:
            return DuplicateJob.__name__  # another scheduler claimed it first
        log.info("schedule %s: enqueued tick %s", s.name, job_id)
        return None

    def _seal(
        self, s: Schedule, job_id: str, now: float, not_before: float, meta: JobMeta
    ) -> bytes:
        app = self.app
        task = s.task
        envelope = seal_job(
            app.keyring,
            job_id=job_id,
            app=app.name,
            task=task.name,
            queue=task.queue,
            payload=task.check_payload(s.payload),
            principal=s.principal,
            meta=meta,
            issued_at=now,
            not_before=not_before,
            expires_at=not_before + task.options.expires,
            version=app.envelope_version,
        )
        if len(envelope) > app.max_envelope_size:
            raise ConfigurationError(
                f"the sealed tick job is {len(envelope)} bytes, over max_envelope_size"
            )
        return envelope


class SchedulerMiddleware(Middleware):
    """Runs a :class:`Scheduler` for the app inside a worker: started by the worker's
    ``worker_started`` hook in its task group, stopped with the worker."""

    def __init__(self, app: App) -> None:
        self.scheduler = Scheduler(app)

    async def worker_started(self, worker: WorkerInfo) -> None:
        worker.start_soon(self.scheduler.run, name="vaultq-scheduler")

    async def worker_stopped(self, worker: WorkerInfo) -> None:
        self.scheduler.stop()


def scheduler_middleware(app: App, worker: str = "") -> list[Middleware]:
    """``[SchedulerMiddleware(app)]`` when ``app`` has schedules and its keyring can sign;
    ``[]`` otherwise (a verify-only worker says where its schedules must run instead)."""
    if not app.schedules:
        return []
    if not app.keyring.can_sign:
        log.info(
            "worker %s: verify-only keyring, so the app's %d schedule(s) do not run here; "
            "run `vaultq scheduler MODULE` where the signing key is",
            worker,
            len(app.schedules),
        )
        return []
    return [SchedulerMiddleware(app)]
