"""At most one running copy, fenced: an outage of the broker longer than the lease, a
locked SQLite database, and a job that blocks the event loop must never let two
attempts of one job id run at the same time (docs/reliability.md)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from chaos.conftest import RedisProcess, Runs
from support.workers import make_app, running_worker

import vaultq

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LEASE = 3.0


class Work(msgspec.Struct, frozen=True):
    n: int
    seconds: float


def long_task(app: vaultq.App, runs: Runs) -> vaultq.Task[Work, int]:
    @app.task(name="chaos.long", timeout=120, retries=0)
    async def long(job: Work) -> int:
        run = runs.start(vaultq.current_job().job_id)
        try:
            await anyio.sleep(job.seconds)
        finally:
            run.end = time.monotonic()
        return job.n

    return long


async def wait_started(runs: Runs, ids: set[str], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not ids <= runs.started():
            await anyio.sleep(0.05)


async def test_redis_outage_longer_than_the_lease_runs_no_job_twice_at_once(
    dedicated_redis: RedisProcess, unique_name: str, runs: Runs
) -> None:
    app = make_app(unique_name, dedicated_redis.url, lease=LEASE)
    long = long_task(app, runs)
    async with running_worker(app, concurrency=6, name="w1", grace=1) as w1:
        handles = await long.enqueue_many([Work(n, 10.0) for n in range(6)])
        await wait_started(runs, {h.id for h in handles})
        # Down for longer than the lease, then back with the same data (append-only file);
        # a worker that starts just then reclaims every lease that ran out.
        await anyio.to_thread.run_sync(dedicated_redis.stop)
        await anyio.sleep(LEASE * 1.7)
        await anyio.to_thread.run_sync(dedicated_redis.start)
        async with running_worker(app, concurrency=6, name="w2", grace=1):
            with anyio.fail_after(90):
                for h in handles:
                    assert await h.result(timeout=80) in range(6)
    assert runs.overlapping() == []
    # Every first attempt was fenced (cancelled, not settled) and ran again after the lease.
    assert w1.fenced >= len(handles)
    assert all(len(runs.of(h.id)) >= 2 for h in handles)
    await app.aclose()


async def test_redis_frozen_longer_than_the_lease_runs_no_job_twice_at_once(
    dedicated_redis: RedisProcess, unique_name: str, runs: Runs
) -> None:
    # A hung server (SIGSTOP: connections stay open, nothing answers) is the other face
    # of an outage: the workers' requests time out instead of being refused.
    app = make_app(unique_name, dedicated_redis.url + "?socket_timeout=1", lease=LEASE)
    long = long_task(app, runs)
    async with running_worker(app, concurrency=4, name="w1", grace=1) as w1:
        handles = await long.enqueue_many([Work(n, 8.0) for n in range(4)])
        await wait_started(runs, {h.id for h in handles})
        dedicated_redis.freeze()
        await anyio.sleep(LEASE * 1.7)
        dedicated_redis.thaw()
        async with running_worker(app, concurrency=4, name="w2", grace=1):
            with anyio.fail_after(90):
                for h in handles:
                    await h.result(timeout=80)
    assert runs.overlapping() == []
    assert w1.fenced >= len(handles)
    await app.aclose()


async def test_sqlite_locked_longer_than_the_lease_runs_no_job_twice_at_once(
    tmp_path: Path, unique_name: str, runs: Runs
) -> None:
    db = tmp_path / "vaultq.db"
    app = make_app(unique_name, f"sqlite:///{db}", lease=LEASE)
    long = long_task(app, runs)
    release = threading.Event()

    def hold_the_lock() -> None:
        # Another connection holds SQLite's write lock for longer than the lease.
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            release.wait(LEASE * 1.7)
            conn.execute("COMMIT")
        finally:
            conn.close()

    async with running_worker(app, concurrency=4, name="w1", grace=1) as w1:
        handles = await long.enqueue_many([Work(n, 8.0) for n in range(4)])
        await wait_started(runs, {h.id for h in handles})
        await anyio.to_thread.run_sync(hold_the_lock)
        async with running_worker(app, concurrency=4, name="w2", grace=1):
            with anyio.fail_after(90):
                for h in handles:
                    await h.result(timeout=80)
    assert runs.overlapping() == []
    assert w1.fenced >= len(handles)
    await app.aclose()


class Nap(msgspec.Struct, frozen=True):
    seconds: float
    block: bool = False


async def test_a_job_that_blocks_the_event_loop_does_not_get_its_siblings_run_twice(
    redis_url: str, unique_name: str, runs: Runs, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(unique_name, redis_url, lease=2.0)
    blocking = threading.Event()
    done = threading.Event()

    @app.task(name="chaos.nap", timeout=60, retries=0)
    async def nap(job: Nap) -> None:
        ctx = vaultq.current_job()
        run = runs.start(ctx.job_id, ctx.worker_id)
        try:
            if job.block:
                blocking.set()
                time.sleep(job.seconds)  # noqa: ASYNC251 - the fault under test
            else:
                await anyio.sleep(job.seconds)
        finally:
            run.end = time.monotonic()

    # A second worker on its own event loop (another thread), started once the first
    # worker's loop is blocked, ready to take any job whose lease lapses.
    other_app = make_app(unique_name, redis_url, keyring=app.keyring, lease=2.0)
    other_app.task(name="chaos.nap", timeout=60, retries=0)(nap.fn)
    from vaultq.runtime.worker import Worker

    other = Worker(other_app, concurrency=4, block=0.2, name="other", grace=1)

    async def run_other() -> None:
        await anyio.to_thread.run_sync(blocking.wait)
        async with anyio.create_task_group() as tg:
            tg.start_soon(other.run)
            await anyio.to_thread.run_sync(done.wait)
            other.stop()
        await other_app.aclose()

    thread = threading.Thread(target=lambda: anyio.run(run_other), daemon=True)
    thread.start()
    caplog.set_level(logging.WARNING, logger="vaultq.worker")
    try:
        async with running_worker(app, concurrency=4, name="stalled", grace=1):
            siblings = await nap.enqueue_many([Nap(7.0) for _ in range(3)])
            await wait_started(runs, {h.id for h in siblings})
            blocker = await nap.enqueue(Nap(6.0, block=True))
            for h in [*siblings, blocker]:
                await h.result(timeout=60)
    finally:
        blocking.set()
        done.set()
        thread.join(timeout=30)
    assert runs.overlapping() == []
    for h in siblings:
        assert [r.worker for r in runs.of(h.id)] == ["stalled"]
    blamed = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert blamed and blocker.id in blamed[0]
    await app.aclose()


async def test_the_fence_counts_from_the_lease_not_from_a_blocking_fetch(
    broker_url: str, unique_name: str, runs: Runs
) -> None:
    # An idle worker blocks in fetch for longer than 0.7 x lease; a job that arrives late
    # in that wait is leased by the last round trip, so it must run, not be fenced.
    app = make_app(unique_name, broker_url, lease=1.0)
    long = long_task(app, runs)
    async with running_worker(app, concurrency=1, block=3.0, grace=1) as worker:
        await anyio.sleep(1.5)  # well into the first blocking fetch
        handle = await long.enqueue(Work(1, 0.1))
        assert await handle.result(timeout=30) == 1
    assert worker.fenced == 0
    assert len(runs.of(handle.id)) == 1
    await app.aclose()
