"""One worker process: fetch within capacity, run, settle in batches, keep leases, drain.

Layout (one anyio task group)::

    fetch loop ──(Dispatch, capacity-bounded)──> N consumers ──> settler (batches)
    cancel watcher: cancels the scopes of running jobs that were cancelled by id
    clock watcher: measures the offset to the broker's clock, warns when it is large

    lease keeper (its own thread and broker connection, see runtime/leases.py): renews
    the lease of every delivery not yet settled, fences (cancels, never settles) the ones
    it can no longer prove, and names a job that blocks this event loop

The fetch loop never asks for more than the free capacity (no prefetch hoarding): a
delivery counts against capacity from fetch until its settlement is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from vaultq import config
from vaultq.brokers.base import Broker, Bury, Release, Retry, Settlement
from vaultq.brokers.monitor import WorkerBeat, monitoring
from vaultq.cancellation import cancel_requested, is_cancellation
from vaultq.clock import MEASURE_INTERVAL, describe_offset
from vaultq.errors import BrokerError, BrokerUnavailable, InvalidArgument
from vaultq.limits import Limiter
from vaultq.middleware import Hooks, WorkerInfo
from vaultq.runtime.dispatch import Dispatch
from vaultq.runtime.execute import Executor, JobSlot, Stop
from vaultq.runtime.health import DEFAULT_INTERVAL as DEFAULT_HEALTH_INTERVAL
from vaultq.runtime.health import keep_beating
from vaultq.runtime.joblog import log_outcome
from vaultq.runtime.leases import LeaseKeeper
from vaultq.runtime.outcomes import report_settlement, report_settlements
from vaultq.runtime.preopen import BatchOpener, batch_opener
from vaultq.runtime.presence import keep_registered
from vaultq.runtime.scheduler import scheduler_middleware

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.runtime.isolation import ProcessPool

__all__ = ["Worker", "report_settlement"]

log = logging.getLogger("vaultq.worker")

_SETTLE_BATCH = 256


def _vaultq_version() -> str:
    try:
        return package_version("vaultq")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


_VERSION = _vaultq_version()
_INTERNAL_ERROR_ATTEMPTS = 5


class Worker:
    """Runs jobs of ``app`` from ``queues``, ``concurrency`` at once (config.default_concurrency).

    ``grace``: seconds running jobs get to finish after a stop request before they are
    cancelled and handed back to the broker (not lost, not dead-lettered).
    ``lease``: seconds a delivery stays leased without renewal (default: the app's).
    Renewed every ``lease/5`` from the lease thread; an attempt whose lease could not be
    renewed for ``0.7 * lease`` is cancelled and not settled (``docs/reliability.md``).
    ``stall_warning``: seconds the event loop may be blocked by a job before a warning
    names it.
    ``health_file``: rewrite this heartbeat file every ``health_interval`` seconds from
    the event loop while running (``vaultq health`` reads it).
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        grace: float = config.DEFAULT_GRACE,
        lease: float | None = None,
        block: float = 1.0,
        max_abandoned_threads: int = config.DEFAULT_MAX_ABANDONED_THREADS,
        name: str | None = None,
        stall_warning: float = config.DEFAULT_STALL_WARNING,
        health_file: Path | None = None,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        schedules: bool = True,
    ) -> None:
        concurrency = config.default_concurrency(app.tasks.values(), concurrency)
        if concurrency < 1:
            raise InvalidArgument(
                f"concurrency={concurrency!r}: a worker runs at least one job at a time; "
                "give concurrency >= 1"
            )
        self.app = app
        self.queues = list(queues) if queues else app.queues
        self.concurrency = concurrency
        self.grace = grace
        self.lease = app.lease if lease is None else lease
        self.block = block
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._max_abandoned = max_abandoned_threads
        self._slots: dict[str, JobSlot] = {}
        self._stopping: anyio.Event | None = None
        self._capacity = anyio.Event()
        self.processed = 0
        self.failed = False
        """True when the worker stopped because it could no longer serve (a consumer
        ended unexpectedly): the CLI then exits non-zero so a supervisor restarts it."""
        self._pool: ProcessPool | None = None
        self._last_warned: dict[str, float] = {}
        self._stall_warning = stall_warning
        self.keeper: LeaseKeeper | None = None
        self.fenced = 0
        """Attempts cancelled (or never started) because their lease was lost."""
        self.health = (health_file, health_interval)  # heartbeat: see runtime/health.py
        self.started_at = 0.0
        self.run_schedules = schedules
        """Run the app's schedules (periodic jobs) here when the keyring can sign."""
        self.hooks = Hooks()
        """The app's middleware sorted per hook, taken when :meth:`run` starts."""
        self._executor: Executor | None = None
        self._opener: BatchOpener | None = None

    def describe(self) -> str:
        """The one start line: app, broker (password masked), queues, concurrency, tasks,
        signer mode."""
        keyring = self.app.keyring
        mode = keyring.signing_algorithm or "verify-only"
        signer = keyring.signer_id or "-"
        return (
            f"vaultq worker {self.name}: app={self.app.name} broker={self.app.broker_url} "
            f"queues={','.join(self.queues)} concurrency={self.concurrency} "
            f"tasks={len(self.app.tasks)} signing={mode} signer={signer} "
            f"keys={self.app.keyring_source or 'given'}"
        )

    @property
    def _stop(self) -> anyio.Event:
        if self._stopping is None:
            raise RuntimeError("the worker is not running")
        return self._stopping

    def stop(self) -> None:
        """Stop fetching; running jobs get ``grace`` seconds, then are handed back."""
        if self._stopping is not None:
            self._stopping.set()

    def stop_now(self) -> None:
        """Stop fetching and hand running jobs back at once (a second Ctrl-C)."""
        self.stop()
        for slot in list(self._slots.values()):
            slot.request_stop(Stop.SHUTDOWN)

    def beat(self) -> WorkerBeat:
        """This worker's heartbeat now: identity and counters, nothing from any job."""
        return WorkerBeat(
            worker=self.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            app=self.app.name,
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            in_flight=len(self._slots),
            done=self.processed,
            started_at=self.started_at,
            version=_VERSION,
            every=self.health[1],
        )

    @property
    def running(self) -> int:
        """Deliveries fetched and not yet settled."""
        return len(self._slots)

    async def run(self, *, started: anyio.Event | None = None) -> None:
        """Run until :meth:`stop` is called (or the surrounding scope is cancelled)."""
        self._stopping = anyio.Event()
        self.started_at = time.time()
        broker = await self._connect()
        if broker is None:
            log.info("worker %s stopped before the broker could be reached", self.name)
            return
        self._pool = self._make_pool()
        # Sorted once per worker: with no middleware every hook site is one falsy test.
        # The app's schedules run as this worker's own middleware (worker_started starts
        # the scheduler loop in the worker's task group), when it may sign jobs.
        own = scheduler_middleware(self.app, self.name) if self.run_schedules else []
        hooks = self.hooks = self.app.hooks(extra=own)
        executor = self._executor = Executor(
            self.app,
            worker_id=self.name,
            max_abandoned_threads=self._max_abandoned,
            thread_tokens=self.concurrency + self._max_abandoned,
            process_pool=self._pool,
            hooks=hooks,
            limiter=Limiter(broker),
        )
        await self._measure_clock(broker)
        keeper = self.keeper = self._make_keeper(broker)
        keeper.start()
        dispatch = Dispatch()
        opener = self._opener = batch_opener(self.app)
        settle_send, settle_recv = anyio.create_memory_object_stream[tuple[JobSlot, Settlement]](
            math.inf
        )
        info: WorkerInfo | None = None
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._clock_watcher, broker)
                outer.start_soon(self._cancel_watcher, broker)
                if self.health[0] is not None:
                    outer.start_soon(keep_beating, self.health[0], self.name, self.health[1])
                monitor = monitoring(broker)
                if monitor is not None:  # the broker's worker registry (vaultq status)
                    outer.start_soon(keep_registered, monitor, self.beat, self.health[1])
                if hooks.lifecycle:
                    info = self._info(outer)
                    await hooks.worker_started(info)
                async with anyio.create_task_group() as inner:
                    inner.start_soon(self._settler, broker, settle_recv)
                    async with anyio.create_task_group() as consumers:
                        for _ in range(self.concurrency):
                            consumers.start_soon(
                                self._consume, executor, dispatch, settle_send.clone()
                            )
                        settle_send.close()
                        if started is not None:
                            started.set()
                        try:
                            await self._fetch_loop(broker, dispatch)
                        finally:
                            dispatch.close()
                        outer.start_soon(self._grace_timer)
                # every consumer is done and every settlement handed to the settler
                outer.cancel_scope.cancel()
        finally:
            if info is not None:
                # Shielded (a torn-down worker still says so) and bounded.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_HOOKS_TIMEOUT):
                    await hooks.worker_stopped(info)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(keeper.stop)
            if opener is not None:
                opener.close()
            if self._pool is not None:
                await self._pool.aclose()
        log.info("worker %s stopped after %d jobs", self.name, self.processed)

    def _abandoned(self) -> int:
        executor = self._executor
        return executor.threads.abandoned if executor is not None else 0

    def _info(self, group: TaskGroup) -> WorkerInfo:
        def spawn(fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
            group.start_soon(fn, name=name)

        return WorkerInfo(
            worker_id=self.name,
            app=self.app.name,
            queues=self.queues,
            concurrency=self.concurrency,
            stats=lambda: (len(self._slots), self.processed, self._abandoned(), self.fenced),
            spawn=spawn,
        )

    async def _connect(self) -> Broker | None:
        """Connect, waiting out a broker that is not up yet; None when stopped meanwhile."""
        failures = 0
        while True:
            try:
                return await self.app.broker()
            except BrokerUnavailable as exc:
                failures += 1
                pause = min(5.0, 0.2 * 2**failures)
                log.warning("broker unreachable (%s); retrying in %.1f s", exc, pause)
                with anyio.move_on_after(pause):
                    await self._stop.wait()
                if self._stop.is_set():
                    return None

    def _make_keeper(self, broker: Broker) -> LeaseKeeper:
        token = anyio.lowlevel.current_token()

        def on_fence(slot: JobSlot, why: str) -> None:
            # Called from the keeper's thread: hand the cancellation to this loop.
            def fence() -> None:
                self.fenced += 1
                slot.stop = Stop.LEASE_LOST  # overrides a shutdown: this one never settles
                if slot.scope is not None:
                    slot.scope.cancel()

            # RuntimeError: the loop is gone, so nothing runs any more.
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(fence, token=token)

        return LeaseKeeper(
            broker,
            consumer=self.name,
            lease=self.lease,
            on_fence=on_fence,
            loop=_asyncio_loop(),
            stall_warning=self._stall_warning,
        )

    def _make_pool(self) -> ProcessPool | None:
        if not any(t.options.isolation == "process" for t in self.app.tasks.values()):
            return None
        from vaultq.runtime.isolation import ProcessPool

        return ProcessPool(self.app, size=max(1, min(self.concurrency, os.cpu_count() or 1)))

    # -- fetching -------------------------------------------------------------------------

    async def _fetch_loop(self, broker: Broker, dispatch: Dispatch) -> None:
        failures = 0
        while not self._stop.is_set():
            free = self.concurrency - len(self._slots)
            if free <= 0:
                with anyio.move_on_after(1.0):
                    await self._capacity.wait()
                self._capacity = anyio.Event()
                continue
            sent = time.monotonic()
            try:
                deliveries = await broker.fetch(
                    self.queues,
                    free,
                    consumer=self.name,
                    lease=self.lease,
                    block=self.block,
                    max_size=self.app.max_envelope_size,
                )
                failures = 0
            except BrokerError as exc:
                failures += 1
                pause = min(5.0, 0.1 * 2**failures)
                log.warning("fetch failed (%s); retrying in %.1f s", type(exc).__name__, pause)
                with anyio.move_on_after(pause):
                    await self._stop.wait()
                continue
            slots = [JobSlot(delivery) for delivery in deliveries]
            for slot in slots:
                self._slots[slot.delivery.tag] = slot
                if self.keeper is not None:
                    # Counted from the round trip that took the lease, not from the
                    # start of a fetch that may have blocked waiting for work.
                    self.keeper.add(slot, slot.delivery.leased_at or sent)
            # The whole batch at once, without a checkpoint per delivery: it runs and
            # settles together (one settle pipeline, one next fetch). Handing it over job
            # by job made the fetcher, a consumer and the settler take turns per job and
            # batches shrank to ~2 jobs (docs/performance.md).
            if self._opener is not None:  # Ed25519 signers: verify on two cores
                self._opener.open(slots, self.app.clock.now())
            dispatch.put(slots)

    # -- running ----------------------------------------------------------------------------

    async def _consume(
        self,
        executor: Executor,
        dispatch: Dispatch,
        settle: MemoryObjectSendStream[tuple[JobSlot, Settlement]],
    ) -> None:
        try:
            async with settle:
                loop = _asyncio_loop()
                task = asyncio.current_task(loop) if loop is not None else None
                while (slot := await dispatch.get()) is not None:
                    settlement: Settlement
                    if self._stop.is_set() or slot.lost is not None:
                        # A fenced slot never starts; its Release is dropped by the settler.
                        settlement = Release(
                            delivery=slot.delivery, not_before=self.app.clock.now()
                        )
                    else:
                        if self.keeper is not None:
                            self.keeper.running(task, slot)
                        try:
                            settlement = await executor.run(slot)
                        except BaseException as exc:
                            # Only a cancellation issued from outside (shutdown) ends a
                            # consumer. Anything else -- a bug in vaultq, a CancelledError
                            # that escaped job code -- must not take the consumer down,
                            # nor loop forever on one poison delivery.
                            if is_cancellation(exc) and cancel_requested():
                                raise
                            log.exception("internal error running job %s", slot.delivery.job_id)
                            settlement = _internal_error(slot, self.app.clock.now())
                        finally:
                            if self.keeper is not None:
                                self.keeper.running(task, None)
                    log_outcome(slot, settlement)
                    slot.settling = True
                    # Unbounded, so it never blocks, and without an await no cancellation
                    # can drop the settlement here.
                    settle.send_nowait((slot, settlement))
        finally:
            if not self._stop.is_set() and not cancel_requested():
                # A consumer that ends while the worker still fetches leaves jobs unserved
                # (the old failure: fetching stopped, the process lived on). Stop and say
                # so; the CLI exits non-zero so the supervisor or orchestrator restarts us.
                log.error("worker %s: a job consumer ended unexpectedly; stopping", self.name)
                self.failed = True
                self.stop()

    async def _grace_timer(self) -> None:
        if self._slots:
            log.info(
                "stopping: %d job(s) running, %.1f s grace before handing them back",
                len(self._slots),
                self.grace,
            )
        await anyio.sleep(self.grace)
        for slot in list(self._slots.values()):
            slot.request_stop(Stop.SHUTDOWN)

    # -- settling ----------------------------------------------------------------------------

    async def _settler(
        self, broker: Broker, recv: MemoryObjectReceiveStream[tuple[JobSlot, Settlement]]
    ) -> None:
        async with recv:
            while True:
                try:
                    batch = [await recv.receive()]
                except anyio.EndOfStream:
                    return
                while len(batch) < _SETTLE_BATCH:
                    try:
                        batch.append(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    written = await self._apply(broker, batch)
                if self.hooks.jobs:
                    # The one place settlements are reported: after they were written.
                    report_settlements(self.hooks, written, app=self.app.name, worker_id=self.name)
                for slot, _ in batch:
                    self._slots.pop(slot.delivery.tag, None)
                    if self.keeper is not None:
                        self.keeper.discard(slot)
                self.processed += len(batch)
                self._capacity.set()

    def _provable(
        self, batch: list[tuple[JobSlot, Settlement]]
    ) -> list[tuple[JobSlot, Settlement]]:
        """The settlements whose lease is still proven; a fenced one is dropped (the
        broker would refuse it too): its job runs again after the lease, elsewhere."""
        now = time.monotonic()
        keep = []
        for slot, settlement in batch:
            if slot.lost is None and now <= slot.fence_at:
                keep.append((slot, settlement))
            elif slot.stop != Stop.LEASE_LOST or slot.lost is None:
                log.warning(
                    "job %s: not settling an attempt whose lease is no longer proven (%s); "
                    "the job will be delivered again after its lease",
                    slot.delivery.job_id,
                    slot.lost or "no renewal for too long",
                )
        return keep

    async def _apply(
        self, broker: Broker, batch: list[tuple[JobSlot, Settlement]]
    ) -> list[tuple[JobSlot, Settlement]]:
        """Write settlements, retrying while the broker is away. Once stopping, give up
        after the grace period: unsettled leases expire and the jobs are delivered again.
        A settlement whose lease is no longer proven is never written. Returns the
        written ones."""
        failures = 0
        given_up_at: float | None = None
        while True:
            pairs = self._provable(batch)
            if not pairs:
                return []
            settlements = [settlement for _, settlement in pairs]
            try:
                await broker.settle(settlements)
                return pairs
            except BrokerError as exc:
                failures += 1
                if self._stop.is_set():
                    given_up_at = given_up_at or time.monotonic() + self.grace
                    if time.monotonic() > given_up_at:
                        log.error(
                            "could not settle %d job(s) before exit; they will be "
                            "delivered again after their lease",
                            len(settlements),
                        )
                        return []
                pause = min(5.0, 0.1 * 2**failures)
                log.warning("settle failed (%s); retrying in %.1f s", type(exc).__name__, pause)
                await anyio.sleep(pause)

    def _warn_now_and_then(self, kind: str, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(kind, -_QUIET_FOR) >= _QUIET_FOR:
            self._last_warned[kind] = now
            log.warning(message, type(exc).__name__)

    # -- leases and cancellation ---------------------------------------------------------------

    async def _measure_clock(self, broker: Broker) -> None:
        """Measure the offset to the broker's clock; warn past half the allowed skew."""
        try:
            offset = await self.app.clock.measure(broker)
        except BrokerError as exc:
            self._warn_now_and_then("clock", "could not read the broker's clock (%s)", exc)
            return
        if abs(offset) > self.app.clock_skew / 2:
            log.warning(
                "this worker's clock is %s the broker's (more than half of clock_skew=%g s); "
                "vaultq schedules on the broker's clock, but fix this host's clock (NTP): "
                "results and logs carry its time",
                describe_offset(offset),
                self.app.clock_skew,
            )

    async def _clock_watcher(self, broker: Broker) -> None:
        while True:
            await anyio.sleep(MEASURE_INTERVAL)
            await self._measure_clock(broker)

    async def _cancel_watcher(self, broker: Broker) -> None:
        while True:
            await anyio.sleep(0.5)
            by_queue: dict[str, list[str]] = {}
            for slot in self._slots.values():
                by_queue.setdefault(slot.delivery.queue, []).append(slot.delivery.job_id)
            for queue, ids in by_queue.items():
                try:
                    cancelled = await broker.cancelled(queue, ids)
                except BrokerError as exc:
                    self._warn_now_and_then("cancel", "cancel check failed (%s)", exc)
                    continue
                if not cancelled:
                    continue
                for slot in list(self._slots.values()):
                    if slot.delivery.job_id in cancelled and slot.stop is None:
                        log.info("cancelling running job %s on request", slot.delivery.job_id)
                        slot.request_stop(Stop.CANCELLED)


_QUIET_FOR = 30.0
"""Seconds between two warnings of the same periodic failure (a broker outage would
otherwise log the lease keeper and cancel watcher every few hundred ms)."""


_STOP_HOOKS_TIMEOUT = 5.0
"""Seconds the ``worker_stopped`` hooks get, together, at exit."""


def _internal_error(slot: JobSlot, now: float) -> Settlement:
    delivery = slot.delivery
    if delivery.attempt < _INTERNAL_ERROR_ATTEMPTS:
        return Retry(delivery=delivery, not_before=now + 5.0)
    return Bury(
        delivery=delivery,
        reason="internal_error",
        detail="vaultq failed to run this job repeatedly; see the worker log",
        result=None,
        result_ttl=1.0,
        remember_until=None,
    )


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop; None on another anyio backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
