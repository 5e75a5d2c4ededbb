"""``TestWorker``: run queued jobs in-process through the worker's own pipeline.

Not an eager mode. A job enqueued in a test is sealed and written to the broker like any
other; ``run_pending`` fetches it under a lease, and the worker's
:class:`~vaultq.runtime.execute.Executor` opens it (size, header, signature, decryption,
replay), decodes it strictly, evaluates the task's policy, runs it under its deadline
and seals its outcome, which is settled on the broker. So a policy that denies denies
here too, a tampered envelope is rejected, a deadline cancels, and ``handle.result()``
reads the sealed result as in production.

The app's middleware sees these jobs as it would in a worker (``attempt_started``,
``attempt_finished``, ``settled``, ``rejected``, the call wrappers); ``worker_started``
and ``worker_stopped`` are not called: there is no long-running worker.

A job cancelled by id is never started, or stopped (CANCELLED) while it runs. What it
leaves out, on purpose: the fetch loop's blocking waits and the lease keeper's thread
(leases are long enough for any task's timeout instead). Tasks with
``isolation="process"`` run in child processes as under a worker: the children import
the app's module, so it must be importable by name (``PYTHONPATH``).

With the memory broker (``memory://``) it also records every job enqueued, opened with
the app's keyring and decoded as its task's payload type (:meth:`TestWorker.enqueued`,
:meth:`TestWorker.jobs`), and can run delayed jobs and retries by running the broker's
clock ahead instead of sleeping (``run_pending(delayed=True)``, :meth:`advance`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio
import msgspec

from vaultq.brokers.base import Ack, Broker, Bury, Drop, Release, Retry, Settlement
from vaultq.brokers.memory import MemoryBroker, MemoryStore, store_of
from vaultq.envelope import open_job
from vaultq.errors import ConfigurationError
from vaultq.runtime.execute import Executor, JobSlot, Stop
from vaultq.runtime.joblog import log_outcome
from vaultq.runtime.worker import report_settlement

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.middleware import Hooks
    from vaultq.principal import Principal
    from vaultq.runtime.isolation import ProcessPool
    from vaultq.tasks import Task

__all__ = ["EnqueuedJob", "Ran", "TestWorker", "run_pending", "run_pending_sync"]

P = TypeVar("P", bound=msgspec.Struct)

DEFAULT_LIMIT = 1000
"""Jobs one ``run_pending`` call may run before it suspects a task that enqueues itself."""
CANCEL_POLL = 0.05
"""Seconds between two looks for cancel requests of the running jobs."""


class Ran(msgspec.Struct, frozen=True):
    """One delivery ``run_pending`` handled, and how it ended."""

    job_id: str
    queue: str
    task: str
    """The task name ("" when the envelope did not open)."""
    attempt: int
    outcome: str
    """``succeeded``, ``failed``, ``timed_out``, ``denied``, ``rejected``, ``expired``,
    ``cancelled`` (final outcomes, as ``JobStatus`` values), or ``retry`` (it runs again
    after its backoff), ``released`` (handed back, e.g. not valid yet) or ``dropped`` (a
    copy of a job that already finished)."""
    reason: str = ""
    """The dead-letter reason of a final outcome other than success (``denied``,
    ``rejected:unauthenticated``, ``rejected:payload``...)."""


@dataclass(frozen=True)
class EnqueuedJob(Generic[P]):
    """A job as a producer enqueued it, opened with the app's keyring (so its seal was
    checked) and its payload decoded as the task's type."""

    payload: P
    task: str
    job_id: str
    queue: str
    principal: Principal | None
    issued_at: float
    """Unix seconds, as sealed by the producer."""
    not_before: float
    """When it may start (Unix seconds, sealed): ``issued_at`` unless delayed."""
    expires_at: float
    timeout: float | None
    """The per-enqueue ``timeout=`` override, if one was given."""
    unique: bool
    """Enqueued with a custom ``job_id=`` (the broker's "enqueue unless it exists")."""

    @property
    def principal_id(self) -> str | None:
        return self.principal.id if self.principal is not None else None

    @property
    def delay(self) -> float:
        """Seconds between enqueue and the earliest start (0 for an immediate job)."""
        return max(0.0, round(self.not_before - self.issued_at, 3))


class TestWorker:
    """Runs ``app``'s queued jobs in this process, on demand (see the module docstring).

    ``queues``: the queues to run (default: every queue of the app's tasks).
    ``concurrency``: jobs run at once per round (default 1: in enqueue order).

    ``run_pending()`` / ``run_pending_sync()`` return what ran; ``enqueued(task)`` the
    typed payloads enqueued for ``task``; ``jobs(task)`` the same with ids, queue,
    principal and timing; ``clear()`` empties the memory broker between tests.
    """

    __test__ = False  # a class named Test*: tell pytest it is not a test case

    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int = 1,
        name: str = "vaultq-test-worker",
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        self.app = app
        self._queues = queues
        self.concurrency = concurrency
        self.name = name
        store = self._store()
        if store is not None:
            store.start_recording()

    def __repr__(self) -> str:
        return f"TestWorker({self.app.name!r}, broker={self.app.broker_url!r})"

    @property
    def queues(self) -> list[str]:
        if self._queues:
            return list(self._queues)
        found = {t.queue for t in self.app.tasks.values()} | {self.app.default_queue}
        return sorted(found)

    def _store(self) -> MemoryStore | None:
        url = self.app.broker_url
        return store_of(url) if url.startswith("memory:") else None

    @property
    def store(self) -> MemoryStore:
        """The memory broker's store (raises ConfigurationError on another broker)."""
        store = self._store()
        if store is None:
            raise ConfigurationError(
                f"app {self.app.name!r} uses {self.app.broker_url}, not the memory broker: "
                "recording enqueues and moving the clock need App(..., broker='memory://') "
                "(or app.swap_broker('memory://') in the test's setup)"
            )
        return store

    # -- running ----------------------------------------------------------------------

    async def run_pending(self, *, delayed: bool = False, limit: int = DEFAULT_LIMIT) -> list[Ran]:
        """Run every job that is due, and the jobs those enqueue, until none is due;
        return what ran, in order. ``delayed=True`` also runs delayed jobs and retries
        in backoff by running the memory broker's clock ahead to each one. Raises
        ConfigurationError after ``limit`` jobs (a task that keeps enqueueing itself)."""
        app = self.app
        broker = await app.broker()
        hooks = app.hooks()  # the app's middleware sees these jobs as in a worker
        pool = self._process_pool()
        executor = Executor(
            app,
            worker_id=self.name,
            max_abandoned_threads=8,
            thread_tokens=self.concurrency + 8,
            hooks=hooks,
            process_pool=pool,
        )
        try:
            return await self._rounds(broker, executor, hooks, delayed, limit)
        finally:
            if pool is not None:
                with anyio.CancelScope(shield=True):
                    await pool.aclose()

    def _process_pool(self) -> ProcessPool | None:
        """Child processes for ``isolation="process"`` tasks, as a worker starts them."""
        if not any(t.options.isolation == "process" for t in self.app.tasks.values()):
            return None
        from vaultq.runtime.isolation import ProcessPool

        return ProcessPool(self.app, size=self.concurrency)

    async def _rounds(
        self, broker: Broker, executor: Executor, hooks: Hooks, delayed: bool, limit: int
    ) -> list[Ran]:
        app = self.app
        # Long enough for any attempt: nothing here renews leases.
        lease = max([app.lease, *(t.options.timeout_ceiling + 60 for t in app.tasks.values())])
        ran: list[Ran] = []
        while True:
            await app.clock.measure(broker)  # follows advance() and clear()
            deliveries = await broker.fetch(
                self.queues,
                self.concurrency,
                consumer=self.name,
                lease=lease,
                block=0.0,
                max_size=app.max_envelope_size,
            )
            if not deliveries:
                if delayed and self._skip_to_next_due(broker):
                    continue
                return ran
            if len(ran) + len(deliveries) > limit:
                raise ConfigurationError(
                    f"run_pending ran {len(ran)} jobs and more are still due: does a task "
                    "enqueue itself? Pass a higher limit= if this many are expected"
                )
            slots = [JobSlot(d) for d in deliveries]
            done = await _run_all(executor, slots, broker)
            for slot, settlement in zip(slots, done, strict=True):
                log_outcome(slot, settlement)  # the worker's own finished-job line
            with anyio.CancelScope(shield=True):
                await broker.settle(done)
            if hooks.jobs:
                for slot, settlement in zip(slots, done, strict=True):
                    report_settlement(hooks, slot, settlement, app=app.name, worker_id=self.name)
            ran += [_ran(slot, s) for slot, s in zip(slots, done, strict=True)]

    def _skip_to_next_due(self, broker: Broker) -> bool:
        if not isinstance(broker, MemoryBroker):
            raise ConfigurationError(
                "run_pending(delayed=True) needs the memory broker (memory://): it runs the "
                "broker's clock ahead instead of sleeping"
            )
        due = broker.next_due(self.queues)
        if due is None:
            return False
        broker.store.advance(max(0.0, due - broker.store.now()) + 0.001)
        return True

    def run_pending_sync(self, *, delayed: bool = False, limit: int = DEFAULT_LIMIT) -> list[Ran]:
        """``run_pending`` for sync tests (Django's TestCase, plain functions): runs an
        event loop in this thread. Not from inside a running event loop: await
        ``run_pending()`` there."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return anyio.run(lambda: self.run_pending(delayed=delayed, limit=limit))
        raise ConfigurationError(
            "run_pending_sync() was called inside a running event loop: use "
            "`await worker.run_pending()` in async tests"
        )

    def advance(self, seconds: float) -> None:
        """Run the memory broker's clock ``seconds`` ahead: delayed jobs and retries
        become due (and envelopes may expire) as if that time had passed."""
        self.store.advance(seconds)
        self.app.clock.measured_at = None  # producers re-read the broker's clock

    def clear(self) -> None:
        """Empty the memory broker (jobs, results, dead letters, recorded enqueues, the
        clock's advance): a clean slate for the next test."""
        self.store.clear()
        self.app.clock.measured_at = None

    # -- what was enqueued ----------------------------------------------------------

    @overload
    def jobs(self, task: Task[P, Any]) -> list[EnqueuedJob[P]]: ...
    @overload
    def jobs(self, task: None = None) -> list[EnqueuedJob[Any]]: ...
    def jobs(self, task: Task[Any, Any] | None = None) -> list[EnqueuedJob[Any]]:
        """The jobs enqueued (for ``task``, or for any task of the app) since this worker
        was made or last cleared, oldest first; each opened with the app's keyring, so a
        job whose seal does not verify raises the envelope's error here."""
        app = self.app
        out: list[EnqueuedJob[Any]] = []
        for record in self.store.recorded(app.name):
            opened = open_job(
                record.envelope,
                app.keyring,
                app=app.name,
                tasks=app.tasks,
                now=time.time(),
                queue=record.queue,
                job_id=record.job_id,
                skew=math.inf,  # every check but time: a delayed job is not valid yet
                max_size=app.max_envelope_size,
                accept_v1=app.accept_envelope_v1,
            )
            header, body = opened.header, opened.body
            if task is not None and header.task != task.name:
                continue
            owner = app.tasks[header.task]
            out.append(
                EnqueuedJob(
                    payload=owner.payload_codec.decode(bytes(body.payload)),
                    task=header.task,
                    job_id=header.job_id,
                    queue=header.queue,
                    principal=body.principal,
                    issued_at=header.issued_at / 1000,
                    not_before=header.not_before / 1000,
                    expires_at=header.expires_at / 1000,
                    timeout=body.meta.timeout,
                    unique=record.unique,
                )
            )
        return out

    def enqueued(self, task: Task[P, Any]) -> list[P]:
        """The payloads enqueued for ``task``, typed: ``assert worker.enqueued(refund) ==
        [Refund(order_id=7)]``."""
        return [job.payload for job in self.jobs(task)]


async def _run_all(executor: Executor, slots: list[JobSlot], broker: Broker) -> list[Settlement]:
    """Run one round's deliveries at once (each in the executor's own pipeline), while
    watching for cancel requests as the worker does."""
    settlements: list[Settlement | None] = [None] * len(slots)

    async def one(i: int) -> None:
        settlements[i] = await executor.run(slots[i])

    async with anyio.create_task_group() as outer:
        outer.start_soon(_watch_cancels, broker, slots)
        async with anyio.create_task_group() as tg:
            for i in range(len(slots)):
                tg.start_soon(one, i)
        outer.cancel_scope.cancel()
    return [s for s in settlements if s is not None]


async def _watch_cancels(broker: Broker, slots: list[JobSlot]) -> None:
    """``app.cancel(job_id)`` during ``run_pending`` stops the running attempt
    (CANCELLED), as the worker's cancel watcher does (every 0.5 s there)."""
    while True:
        await anyio.sleep(CANCEL_POLL)
        by_queue: dict[str, list[str]] = {}
        for slot in slots:
            if slot.stop is None:
                by_queue.setdefault(slot.delivery.queue, []).append(slot.delivery.job_id)
        for queue, ids in by_queue.items():
            cancelled = await broker.cancelled(queue, ids)
            for slot in slots:
                if slot.delivery.job_id in cancelled and slot.stop is None:
                    slot.request_stop(Stop.CANCELLED)


def _ran(slot: JobSlot, settlement: Settlement) -> Ran:
    d = slot.delivery
    reason = ""
    if isinstance(settlement, Ack):
        outcome = "succeeded"
    elif isinstance(settlement, Bury):
        reason = settlement.reason
        outcome = "rejected" if reason.startswith("rejected") else reason
    elif isinstance(settlement, Retry):
        outcome = "retry"
    elif isinstance(settlement, Release):
        outcome = "released"
    elif isinstance(settlement, Drop):
        outcome, reason = "dropped", settlement.reason
    else:  # pragma: no cover - Settlement has no other kind
        raise TypeError(f"unknown settlement {type(settlement).__name__}")
    return Ran(
        job_id=d.job_id,
        queue=d.queue,
        task=slot.task,
        attempt=d.attempt,
        outcome=outcome,
        reason=reason,
    )


async def run_pending(app: App, *, delayed: bool = False, limit: int = DEFAULT_LIMIT) -> list[Ran]:
    """Run ``app``'s due jobs in-process through the real pipeline (see
    :class:`TestWorker`); returns what ran."""
    return await TestWorker(app).run_pending(delayed=delayed, limit=limit)


def run_pending_sync(app: App, *, delayed: bool = False, limit: int = DEFAULT_LIMIT) -> list[Ran]:
    """``run_pending`` for sync code (runs an event loop in this thread)."""
    return TestWorker(app).run_pending_sync(delayed=delayed, limit=limit)
