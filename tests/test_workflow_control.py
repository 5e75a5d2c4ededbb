"""Controlling workflows (issue 16): ``WorkflowHandle.cancel()`` on every broker kind, the
race between a step finishing and ``cancel()`` (the worker's own forwarding code against
the broker's tombstone), and cancellation on real worker processes (Redis, SQLite)."""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
from flow_app import Priced, Text, build
from support.workers import start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.brokers.base import CancelState
from vaultq.envelope import OpenedJob, open_job, peek_header
from vaultq.jobs import JobStatus
from vaultq.runtime import continuations
from vaultq.testing import TestWorker
from vaultq.workflow_control import CANCELLED_ERROR
from vaultq.workflows import WorkflowFailed

pytestmark = pytest.mark.anyio


def _opened(app: vaultq.App, envelope: bytes) -> OpenedJob:
    header = peek_header(envelope)
    return open_job(
        envelope,
        app.keyring,
        app=app.name,
        tasks=app.tasks,
        now=time.time(),
        queue=header.queue,
        job_id=header.job_id,
        skew=5,
    )


async def _take_step0(app: vaultq.App, workflow_id: str) -> OpenedJob:
    """Lease step 0 as a worker would (its job id is now claimed: running)."""
    broker = await app.broker()
    with anyio.fail_after(10):
        while True:
            got = await broker.fetch(["default"], 1, consumer="w1", lease=30, block=0.2)
            if got:
                break
    (delivery,) = got
    assert delivery.job_id == f"{workflow_id}.0"
    return _opened(app, delivery.envelope)


async def test_cancel_before_anything_ran_stops_the_first_step(
    broker_url: str, unique_name: str
) -> None:
    app = vaultq.App(unique_name, broker=broker_url, keyring=vaultq.Keyring.generate())
    t = build(app)
    try:
        handle = await t.parse.s(Text("pen:3")).then(t.price).then(t.receipt).enqueue()
        assert await handle.cancel() is CancelState.REQUESTED
        assert await TestWorker(app).run_pending() == []
        with pytest.raises(WorkflowFailed) as caught:
            await handle.result(timeout=5)
        assert (caught.value.step, caught.value.status) == (0, "cancelled")
        statuses = [s.status for s in await handle.steps()]
        assert statuses == [JobStatus.CANCELLED, JobStatus.PENDING, JobStatus.PENDING]
    finally:
        await app.aclose()


async def test_a_step_finishing_after_cancel_does_not_enqueue_the_next_one(
    broker_url: str, unique_name: str
) -> None:
    """The race, made deterministic: step 0 is running when ``cancel()`` comes; then it
    succeeds and the worker's own forwarding code writes step 1. The tombstone got there
    first, so the broker refuses the write: step 1 is never enqueued and never runs."""
    app = vaultq.App(unique_name, broker=broker_url, keyring=vaultq.Keyring.generate())
    t = build(app)
    try:
        handle = await t.parse.s(Text("pen:3")).then(t.price).enqueue(workflow_id="wf-race")
        step0 = await _take_step0(app, "wf-race")
        flow = step0.body.meta.flow
        assert flow is not None
        assert await handle.cancel() is CancelState.REQUESTED  # step 0 runs: goes on to 1
        assert not await continuations.forward(app, step0, flow)  # refused: tombstone
        broker = await app.broker()
        assert [e.job_id for e in await broker.queued("default")] == ["wf-race.0"]
        outcome = await handle.handles[1].outcome()
        assert outcome is not None
        assert (outcome.status, outcome.error_type) == ("cancelled", CANCELLED_ERROR)
        assert outcome.started_at is None
        assert await broker.cancelled("default", ["wf-race.0"]) == {"wf-race.0"}
    finally:
        await app.aclose()


async def test_a_step_written_just_before_cancel_is_cancelled_before_it_starts(
    broker_url: str, unique_name: str
) -> None:
    """The other order: the step finishing wrote the next step before ``cancel()``; the
    walk finds that step waiting and dead-letters it with a CANCELLED outcome."""
    app = vaultq.App(unique_name, broker=broker_url, keyring=vaultq.Keyring.generate())
    t = build(app)
    try:
        handle = (
            await t.parse.s(Text("pen:3"))
            .then(t.price)
            .then(t.receipt)
            .enqueue(workflow_id="wf-late")
        )
        step0 = await _take_step0(app, "wf-late")
        flow = step0.body.meta.flow
        assert flow is not None
        assert await continuations.forward(app, step0, flow)  # step 1 written
        assert await handle.cancel() is CancelState.REQUESTED
        broker = await app.broker()
        assert [e.job_id for e in await broker.queued("default")] == ["wf-late.0"]
        statuses = [s.status for s in await handle.steps()]
        assert statuses[1:] == [JobStatus.CANCELLED, JobStatus.PENDING]
    finally:
        await app.aclose()


async def test_cancel_of_a_finished_workflow_changes_nothing(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker=f"memory://{unique_name}")
    t = build(app)
    handle = await t.parse.s(Text("pen:3")).then(t.price).enqueue()
    await TestWorker(app).run_pending(delayed=True)
    assert await handle.cancel() is CancelState.FINISHED
    assert await handle.result(timeout=5) == Priced("pen", 750)
    failed = await t.parse.s(Text("cup:1")).then(t.explode).then(t.receipt).enqueue()
    await TestWorker(app).run_pending(delayed=True)
    assert failed.cancel_sync() is CancelState.FINISHED
    statuses = [s.status for s in await failed.steps()]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING]


@contextlib.contextmanager
def _flow_workers(broker_url: str, name: str, sleep: float) -> Iterator[tuple[vaultq.App, Any]]:
    """Two ``vaultq worker flow_app`` processes (verification keys only; ``price`` sleeps
    ``sleep`` seconds) and the producer's app with its tasks."""
    keys = vaultq.Keyring.generate(signing="ed25519")
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": keys.public().to_json(),
            "FLOW_APP": name,
            "FLOW_SLEEP": str(sleep),
        }
    )
    app = vaultq.App(name, broker=broker_url, keyring=keys)
    tasks = build(app)
    workers = [start_worker_process("flow_app", env) for _ in range(2)]
    try:
        wait_until_serving(workers)
        yield app, tasks
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        app.close()


@pytest.mark.other_processes
def test_cancel_on_real_workers_cancels_the_running_step(broker_url: str, unique_name: str) -> None:
    with _flow_workers(broker_url, unique_name, 5.0) as (app, t):
        handle = t.parse.s(Text("pen:3")).then(t.price).then(t.receipt).enqueue_sync()
        _wait_running(handle.handles[1])
        assert handle.cancel_sync() is CancelState.REQUESTED
        with pytest.raises(WorkflowFailed) as caught:
            handle.result_sync(timeout=60)
        assert (caught.value.step, caught.value.status) == (1, "cancelled")
        running, after = handle.handles[1].outcome_sync(), handle.handles[2].outcome_sync()
        assert running is not None and running.started_at is not None  # it had started
        assert after is not None and after.error_type == CANCELLED_ERROR  # never enqueued
        assert app.run_sync(_stats, app) == (0, 0, 0)


@pytest.mark.other_processes
def test_cancel_racing_steps_that_finish_on_real_workers(broker_url: str, unique_name: str) -> None:
    """``price`` takes 0.4 s and the workers look for cancel marks every 0.5 s: sixteen
    chains are cancelled at random moments around the end of ``price``, so cancels meet
    steps that are finishing (and writing the next step). For each: no step is enqueued
    after ``cancel()`` returned (a step not in the broker then never gets an outcome but
    its tombstone); a chain that did not complete stops at a CANCELLED step and no step
    after it ever started; a chain completes only when it ended before the cancel or its
    last step was already in the broker; nothing is left in the queue."""
    rng = random.Random(16)  # noqa: S311  # nosec B311 -- a test's schedule
    kinds: Counter[str] = Counter()
    with _flow_workers(broker_url, unique_name, 0.4) as (app, t):
        for i in range(16):
            handle = t.parse.s(Text(f"s{i}:1")).then(t.price).then(t.receipt).enqueue_sync()
            _wait_running(handle.handles[1])
            time.sleep(rng.uniform(0.25, 0.55))  # around the end of price's 0.4 s
            state = handle.cancel_sync()
            written = app.run_sync(_written, app, handle)  # the steps in the broker by now
            try:
                result = handle.result_sync(timeout=60)
            except WorkflowFailed as exc:
                failed: WorkflowFailed | None = exc
            else:
                failed = None
            outcomes = [h.outcome_sync() for h in handle.handles]
            # The guarantee: once cancel() returned, no step is enqueued. A step not in
            # the broker then has no outcome but the tombstone, ever.
            for index, o in enumerate(outcomes):
                assert index in written or o is None or o.error_type == CANCELLED_ERROR
            if failed is None:
                # It ended first (FINISHED), or its last step was already in the broker.
                assert result == f"s{i}=250"
                assert state is CancelState.FINISHED or len(outcomes) - 1 in written
                kinds[f"completed ({state})"] += 1
                continue
            assert state is CancelState.REQUESTED and failed.status == "cancelled"
            stop = failed.step
            assert all(o is not None and o.status == "succeeded" for o in outcomes[:stop])
            for later in outcomes[stop + 1 :]:
                assert later is None or (later.status == "cancelled" and later.started_at is None)
            stopped = outcomes[stop]
            assert stopped is not None
            kinds[
                f"stopped at step {stop}, " + ("running" if stopped.started_at else "never ran")
            ] += 1
        deadline = time.monotonic() + 30
        while app.run_sync(_stats, app) != (0, 0, 0):  # every step written was settled
            assert time.monotonic() < deadline, app.run_sync(_stats, app)
            time.sleep(0.1)
    print("cancel outcomes:", dict(kinds))


async def _written(app: vaultq.App, handle: vaultq.WorkflowHandle[Any]) -> set[int]:
    """The steps of ``handle`` in the broker: waiting, running, or with an outcome that
    is not a tombstone.

    Where the step is comes first, its outcome second: a step can only leave the queue by
    its ack, which stores its outcome in the same atomic step, so a step running now is
    seen either way. (Outcome first raced: a step finishing between the two reads had no
    outcome yet and was already absent, so it looked never written.)"""
    broker = await app.broker()
    found = set()
    for i, step in enumerate(handle.handles):
        waiting_or_running = (await broker.job_info(step.queue, step.id)).state != "absent"
        outcome = await step.outcome()
        ran = outcome is not None and outcome.error_type != CANCELLED_ERROR
        if waiting_or_running or ran:
            found.add(i)
    return found


async def _stats(app: vaultq.App) -> tuple[int, int, int]:
    stats = await (await app.broker()).stats("default")
    return stats.ready, stats.delayed, stats.running


def _wait_running(handle: vaultq.JobHandle[object]) -> None:
    deadline = time.monotonic() + 60
    while handle.status_sync() is not JobStatus.RUNNING:
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.02)


class Num(msgspec.Struct, frozen=True):
    n: int


def _two_queue_chain(app: vaultq.App) -> tuple[Any, Any]:
    """``first`` (queue ``default``, result_ttl 1 s) feeding ``second`` (queue ``later``),
    both with short windows so the workflow's horizon is small: expires 10 s, timeout
    1 s, no retries (step 1's envelope expires 22 s after the enqueue)."""

    @app.task(name="first", result_ttl=1, expires=10, timeout=1, max_timeout=1, retries=0)
    def first(p: Num) -> Num:
        return Num(p.n + 1)

    @app.task(
        name="second", queue="later", result_ttl=1, expires=10, timeout=1, max_timeout=1, retries=0
    )
    def second(p: Num) -> Num:
        return Num(p.n * 10)

    return first, second


async def test_a_feeding_result_outlives_its_result_ttl_while_the_next_step_can_run(
    broker_url: str, unique_name: str
) -> None:
    """Step 0's result_ttl is 1 s; step 1 waits 2.5 s in its queue (no worker for it):
    the result that feeds it is kept until step 1's envelope expires, so it still runs."""
    app = vaultq.App(unique_name, broker=broker_url, keyring=vaultq.Keyring.generate())
    first, second = _two_queue_chain(app)
    try:
        handle = await first.s(Num(1)).then(second).enqueue()
        ran = await TestWorker(app, queues=["default"]).run_pending()
        assert [(r.task, r.outcome) for r in ran] == [("first", "succeeded")]
        await anyio.sleep(2.5)  # past step 0's result_ttl
        ran = await TestWorker(app, queues=["later"]).run_pending()
        assert [(r.task, r.outcome) for r in ran] == [("second", "succeeded")]
        assert await handle.result(timeout=5) == Num(20)
    finally:
        await app.aclose()


async def test_feeding_results_expire_with_the_workflow(unique_name: str) -> None:
    """On the memory broker's clock: a feeding result is still there while the step it
    feeds may start (its envelope valid), and gone once that has expired; the last
    step's result keeps its own result_ttl (1 s)."""
    app = vaultq.App(unique_name, broker=f"memory://{unique_name}")
    first, second = _two_queue_chain(app)
    worker = TestWorker(app)
    handle = await first.s(Num(1)).then(second).enqueue()
    await worker.run_pending()
    assert await handle.result(timeout=1) == Num(20)
    broker = await app.broker()
    step0, step1 = handle.handles[0].id, handle.handles[1].id
    worker.store.advance(15)  # past result_ttl, before step 1's envelope expires (22 s)
    assert await broker.get_result("default", step0) is not None
    assert await broker.get_result("later", step1) is None
    worker.store.advance(22 - 15 + app.clock_skew + 2)  # past step 1's expiry + skew
    assert await broker.get_result("default", step0) is None
