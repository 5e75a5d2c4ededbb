"""Attacks on outcomes and on the fleet: each test performs the attack against a real
broker (the session's private Redis, a real SQLite file) and failed before the fix.

- a copy of a finished job re-inserted after its expiry replaced SUCCEEDED by EXPIRED;
- a task or policy raising ``CancelledError`` halted the worker;
- junk under an honest job's id made its waiting producer give up (JobRejected);
- a flood of hostile entries grew Redis without bound (full copies, result keys);
- enqueueing a custom id that exists silently created a doomed job;
- a malformed SQLite row crashed the worker;
- consumers of killed workers stayed in the Redis consumer group for an hour.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
from support.brokers import url_for
from support.workers import make_app, running_worker

import vaultq
from vaultq.brokers.base import EnqueueItem
from vaultq.policy import PolicyRequest

pytestmark = pytest.mark.anyio


class N(msgspec.Struct, frozen=True):
    n: int


async def _queued_envelopes(app: vaultq.App, broker_kind: str, tmp_path: Path) -> list[bytes]:
    """Every envelope waiting in the default queue, read straight from storage."""
    broker = await app.broker()
    if broker_kind == "sqlite":
        con = sqlite3.connect(tmp_path / "vaultq.db")
        try:
            rows = con.execute(
                "SELECT envelope FROM vaultq_jobs WHERE namespace = ? ORDER BY id", (app.name,)
            ).fetchall()
        finally:
            con.close()
        return [bytes(r[0]) for r in rows]
    raw: Any = redis.Redis.from_url(broker.url)  # bytes replies; redis-py types bytes | str
    try:
        entries = raw.xrange(broker.keys("default").stream)  # type: ignore[attr-defined]
    finally:
        raw.close()
    return [bytes(fields[b"env"]) for _, fields in entries]


async def _drained(broker: vaultq.brokers.Broker) -> None:
    """Wait until nothing is ready or running in the default queue."""
    with anyio.fail_after(20):
        while True:
            stats = await broker.stats("default")
            if stats.ready == stats.running == 0:
                return
            await anyio.sleep(0.05)


# -- 1. a finished job's outcome cannot be replaced ------------------------------------


@pytest.mark.broker_kinds("sqlite", "redis")  # reads what they store
async def test_expired_copy_cannot_replace_a_succeeded_outcome(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """Issue 9, broken claim 1: a copy of the envelope re-inserted after its ``expires``
    made the worker record EXPIRED over SUCCEEDED (a producer retrying on it charges
    twice). The finished check now comes first and the broker stores outcomes once."""
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request), clock_skew=0.1)
    runs: list[int] = []

    # expires leaves a loaded machine's worker start-up time to run the genuine job
    @app.task(name="t.charge", expires=3.0)
    async def charge(job: N) -> int:
        runs.append(job.n)
        return job.n

    broker = await app.broker()
    enqueued_at = time.monotonic()
    handle = await charge.enqueue(N(7))
    (copy,) = await _queued_envelopes(app, broker_kind, tmp_path)  # the attacker's copy
    async with running_worker(app):
        assert await handle.result(timeout=10) == 7
        # past expires + clock_skew; the result is still stored
        await anyio.sleep(max(0.0, enqueued_at + 3.5 - time.monotonic()))
        await broker.enqueue([EnqueueItem(queue="default", job_id=handle.id, envelope=copy)])
        await _drained(broker)
    assert await handle.status() == vaultq.JobStatus.SUCCEEDED
    assert await handle.result(timeout=1) == 7
    assert runs == [7]
    assert not await broker.dead_letters("default")
    assert await broker.counters("default") == {"replayed": 1}
    await app.aclose()


# -- 2. CancelledError raised by job code is a failure, not a shutdown -------------------


async def test_task_raising_cancelled_error_fails_and_the_worker_keeps_serving(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """Issue 9, broken claim 4: awaiting a cancelled future raises CancelledError in the
    task; it was taken for a shutdown, the job got no outcome and the worker stopped
    fetching. Now it is a FAILED attempt and the same worker (one consumer) serves on."""
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.awaits_cancelled", retries=1, backoff=0.01)
    async def awaits_cancelled(job: N) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future

    @app.task(name="t.sync_raises", retries=0)
    def sync_raises(job: N) -> int:
        raise asyncio.CancelledError

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    async with running_worker(app, concurrency=1):
        first = await awaits_cancelled.enqueue(N(1))
        second = await sync_raises.enqueue(N(2))
        with pytest.raises(vaultq.JobFailed) as failed:
            await first.result(timeout=15)
        assert failed.value.error_type.endswith("CancelledError")
        with pytest.raises(vaultq.JobFailed):
            await second.result(timeout=15)
        assert await (await ok.enqueue(N(5))).result(timeout=15) == 5
    await app.aclose()


async def test_policy_raising_cancelled_error_denies(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))
    calls: list[str] = []

    async def policy(req: PolicyRequest) -> bool:
        calls.append(req.stage)
        if req.stage == "enqueue":
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.cancel()
        return await future

    @app.task(name="t.guarded", policy=policy)
    async def guarded(job: N) -> int:
        return job.n

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    async with running_worker(app, concurrency=1):
        with pytest.raises(vaultq.JobDenied):
            await (await guarded.enqueue(N(1))).result(timeout=15)
        assert await (await ok.enqueue(N(2))).result(timeout=15) == 2
    assert calls == ["enqueue", "run"]
    await app.aclose()


async def test_a_real_shutdown_still_hands_jobs_back(tmp_path: Path, unique_name: str) -> None:
    """The other side of the same line: a cancellation vaultq issues (stop_now) is still
    a shutdown: the job is handed back, not failed."""
    app = make_app(unique_name, f"sqlite:///{tmp_path}/vaultq.db")
    started = anyio.Event()

    @app.task(name="t.slow", retries=0)
    async def slow(job: N) -> int:
        started.set()
        await anyio.sleep(30)
        return job.n

    handle = await slow.enqueue(N(1))
    async with running_worker(app) as worker:
        with anyio.fail_after(10):
            await started.wait()
        worker.stop_now()
    assert await handle.status() == vaultq.JobStatus.PENDING
    assert (await (await app.broker()).stats("default")).ready == 1
    await app.aclose()


# -- 3. junk never answers for an honest job ---------------------------------------------


async def test_junk_under_honest_ids_does_not_make_producers_give_up(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """Issue 10, item 4: each junk entry written under the id of a genuine job still
    waiting (here: in its delay) made the worker seal a REJECTED result under that id,
    and the waiting producer gave up with JobRejected although its job later succeeded.
    Nothing unauthenticated writes a result now: the producer gets the real outcome."""
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    broker = await app.broker()
    handles = [await ok.enqueue(N(i), delay=1.5) for i in range(20)]
    await broker.enqueue(
        [EnqueueItem(queue="default", job_id=h.id, envelope=b"junk") for h in handles]
    )
    async with running_worker(app):
        results = [await h.result(timeout=20) for h in handles]
    assert results == list(range(20))
    dead = await broker.dead_letters("default")
    assert len(dead) == 20
    assert {d.reason for d in dead} == {"rejected:unauthenticated"}
    assert all(d.stub and d.size == 4 for d in dead)
    await app.aclose()


async def test_hostile_flood_keeps_redis_memory_bounded(redis_url: str, unique_name: str) -> None:
    """Issue 10, item 4: 100,000 junk entries took Redis from 2 MB to 329 MB (a full
    dead-letter copy each, oversized envelopes copied whole, plus a result key each).
    Here 5,000 entries (20 of them 2 MiB): no result key, stubs only, memory bounded."""
    app = make_app(unique_name, redis_url)

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    broker = await app.broker()
    keys = broker.keys("default")  # type: ignore[attr-defined]
    raw = redis.Redis.from_url(redis_url)
    raw.xgroup_create(keys.stream, "vaultq", id="0", mkstream=True)
    before = int(raw.info("memory")["used_memory"])
    pipe = raw.pipeline(transaction=False)
    for i in range(4980):
        pipe.xadd(keys.stream, {"id": f"junk-{i}", "env": os.urandom(300), "att": "1", "at": "0"})
    pipe.execute()
    for i in range(20):
        raw.xadd(keys.stream, {"id": f"big-{i}", "env": b"B" * (2 << 20), "att": "1", "at": "0"})
    async with running_worker(app, concurrency=16):
        with anyio.fail_after(120):
            while (await broker.stats("default")).ready:
                await anyio.sleep(0.2)
        assert await (await ok.enqueue(N(3))).result(timeout=20) == 3
    after = int(raw.info("memory")["used_memory"])
    results = list(raw.scan_iter(match=keys.result("*"), count=1000))
    dead = await broker.dead_letters("default", limit=10_000)
    raw.close()
    # 5,000 stubs of ~150 bytes; old code kept ~1.5 MB of junk copies plus 40 MiB of
    # oversized envelopes and 5,000 result keys.
    assert after - before < 4 * 1024 * 1024, (before, after)
    assert len(results) == 1  # the genuine job's, none for junk
    assert len(dead) == 5000
    assert all(d.stub for d in dead)
    assert {d.size for d in dead if d.job_id.startswith("big-")} == {2 << 20}
    await app.aclose()


# -- 5. a custom job id that exists is refused ---------------------------------------------


async def test_duplicate_custom_job_id_is_refused_without_a_replay_warning(
    broker_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 9, job-id squatting (duplicate half): enqueueing a custom id that is queued
    or finished used to write a second entry that the worker then rejected as
    "replayed" (a false security warning) -- a doomed job, silently. Now: DuplicateJob."""
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))
    runs: list[int] = []

    @app.task(name="t.once")
    async def once(job: N) -> int:
        runs.append(job.n)
        return job.n

    handle = await once.enqueue(N(1), job_id="order-42")
    with pytest.raises(vaultq.DuplicateJob) as queued:
        await once.enqueue(N(2), job_id="order-42")
    assert queued.value.job_id == "order-42"
    caplog.set_level(logging.INFO)
    async with running_worker(app):
        assert await handle.result(timeout=10) == 1
        with pytest.raises(vaultq.DuplicateJob):
            await once.enqueue(N(3), job_id="order-42")
        other = await once.enqueue(N(4), job_id="order-43")
        assert await other.result(timeout=10) == 4
    assert runs == [1, 4]
    assert "replay" not in caplog.text
    assert await (await app.broker()).counters("default") == {}
    await app.aclose()


# -- 6. poison rows and dead consumers -----------------------------------------------------


async def test_poison_sqlite_rows_are_quarantined(tmp_path: Path, unique_name: str) -> None:
    """A row whose not_before is text or a blob (only a hand-written row can be) used to
    crash the worker's fetch with ValueError; now it is moved to the dead letters."""
    db = tmp_path / "vaultq.db"
    app = make_app(unique_name, f"sqlite:///{db}")

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    broker = await app.broker()
    con = sqlite3.connect(db)
    for job_id, not_before in (("p1", "soon"), ("p2", b"\x00")):
        con.execute(
            "INSERT INTO vaultq_jobs (namespace, queue, job_id, envelope, not_before, "
            "enqueued_at) VALUES (?, 'default', ?, x'00', ?, 0)",
            (unique_name, job_id, not_before),
        )
    con.commit()
    con.close()
    async with running_worker(app):
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < 2:
                await anyio.sleep(0.05)
        assert await (await ok.enqueue(N(4))).result(timeout=10) == 4
    dead = await broker.dead_letters("default")
    assert sorted(d.job_id for d in dead) == ["p1", "p2"]
    assert {d.reason for d in dead} == {"rejected:unauthenticated"}
    await app.aclose()


async def test_consumers_of_gone_workers_leave_the_group(redis_url: str, unique_name: str) -> None:
    """Issue 10, item 6: consumers of killed workers stayed in the group for an hour.
    A stopped worker removes itself; one that vanished (kill -9) is removed by the next
    idle fetch of another worker once it held nothing for three leases."""
    app = make_app(unique_name, redis_url, lease=0.5)

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    broker = await app.broker()
    keys = broker.keys("default")  # type: ignore[attr-defined]
    await ok.enqueue(N(1))
    # A worker that is killed after its job was settled by another after the lease.
    (d,) = await broker.fetch(["default"], 1, consumer="killed-1", lease=0.5, block=0.0)
    raw = redis.Redis.from_url(redis_url)

    def consumers() -> set[str]:
        return {c["name"].decode() for c in raw.xinfo_consumers(keys.stream, "vaultq")}

    assert "killed-1" in consumers()
    async with running_worker(app, name="live-1"):
        with anyio.fail_after(20):
            while "killed-1" in consumers():
                await anyio.sleep(0.1)
        assert "live-1" in consumers()
    assert d.job_id
    await app.aclose()  # closing the broker removes this worker's consumer
    assert "live-1" not in consumers()
    raw.close()


async def test_unknown_task_is_answered_only_when_authentic(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """A job a trusted signer sealed for a task this worker lacks is answered REJECTED
    under its signed id (its producer hears it); the same task name in an envelope from
    a stranger's keys is an unauthenticated stub with no outcome and no task name."""
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    worker_app = make_app(unique_name, url, keyring=keys)
    producer = make_app(unique_name, url, keyring=keys)
    stranger = make_app(unique_name, url, keyring=vaultq.Keyring.generate())

    @worker_app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    for app in (producer, stranger):

        @app.task(name="t.extra")
        async def extra(job: N) -> int:
            return job.n

    honest = await producer.get_task("t.extra").enqueue(N(1))  # type: ignore[union-attr]
    forged = await stranger.get_task("t.extra").enqueue(N(2))  # type: ignore[union-attr]
    broker = await worker_app.broker()
    async with running_worker(worker_app):
        with pytest.raises(vaultq.JobRejected):
            await producer.job(honest.id).result(timeout=10)
        await _drained(broker)
    reasons = {d.job_id: d.reason for d in await broker.dead_letters("default")}
    assert reasons == {honest.id: "rejected:unknown_task", forged.id: "rejected:unauthenticated"}
    assert await broker.get_result("default", forged.id) is None
    for app in (worker_app, producer, stranger):
        await app.aclose()


async def test_a_renewal_racing_a_settle_is_not_reported_as_a_lost_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10, item 6: "leases could not be extended: another delivery holds them" was
    logged for jobs that had simply finished (the renewal raced their own settle, which
    released the claim). A slot whose settlement is on its way is not fenced or warned
    about; a slot that really lost its claim still is, with a message that says what
    happened."""
    from vaultq.brokers.base import Delivery
    from vaultq.runtime.execute import JobSlot
    from vaultq.runtime.leases import LeaseKeeper

    class AllLost:
        async def connect(self) -> None:
            pass

        async def extend(self, deliveries: list[Delivery], **_: object) -> set[str]:
            return {d.tag for d in deliveries}

    def slot(tag: str) -> JobSlot:
        return JobSlot(Delivery(queue="q", job_id=tag, envelope=b"", attempt=1, tag=tag))

    fenced: list[str] = []
    keeper = LeaseKeeper(
        AllLost(),  # type: ignore[arg-type]
        consumer="c",
        lease=30.0,
        on_fence=lambda s, why: fenced.append(s.delivery.tag),
    )
    done, running = slot("finished-job"), slot("running-job")
    done.settling = True
    keeper.add(done, time.monotonic())
    keeper.add(running, time.monotonic())
    caplog.set_level(logging.DEBUG, logger="vaultq")
    with anyio.move_on_after(0.5):
        await keeper._renew_loop(AllLost())  # type: ignore[arg-type]
    assert fenced == ["running-job"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("finished-job" in w for w in warnings)
    assert any("running-job" in w and "lapsed" in w for w in warnings)


async def test_a_worker_whose_consumer_dies_stops_and_says_it_failed(
    tmp_path: Path, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old failure mode: a consumer ended by a stray CancelledError, the worker kept
    its process but stopped serving. Now a consumer that ends while the worker still
    fetches stops the worker with ``failed`` set (``vaultq worker`` then exits 1, so a
    supervisor restarts it). The fault is injected after the job's outcome is decided."""
    from vaultq.runtime import worker as worker_module
    from vaultq.runtime.worker import Worker

    app = make_app(unique_name, f"sqlite:///{tmp_path}/vaultq.db")

    @app.task(name="t.ok")
    async def ok(job: N) -> int:
        return job.n

    def dies(*_: object) -> None:
        raise asyncio.CancelledError  # not issued by vaultq: a bug's stray cancellation

    monkeypatch.setattr(worker_module, "log_outcome", dies)
    worker = Worker(app, concurrency=1, grace=1.0, block=0.1)
    await ok.enqueue(N(1))
    with anyio.fail_after(30):
        await worker.run()
    assert worker.failed
    await app.aclose()


def test_status_shows_what_was_counted_instead_of_stored(tmp_path: Path) -> None:
    """Garbage is counted, not stored: `vaultq status` shows the counts (text and JSON),
    with counter names escaped (anyone who can write to the broker can name one)."""
    import json
    import subprocess
    import sys

    from support.workers import ROOT, worker_env

    from vaultq.brokers.sqlite import SqliteBroker

    url = f"sqlite:///{tmp_path}/q.db"

    async def make_a_duplicate() -> None:
        broker = SqliteBroker(url, namespace="cli-good")
        await broker.enqueue([EnqueueItem(queue="default", job_id="x", envelope=b"a")])
        await broker.fetch(["default"], 1, consumer="c", lease=60, block=0)
        await broker.enqueue([EnqueueItem(queue="default", job_id="x", envelope=b"b")])
        assert await broker.fetch(["default"], 1, consumer="c", lease=60, block=0) == []
        await broker.close()

    anyio.run(make_a_duplicate)
    env = worker_env({"VAULTQ_BROKER": url})

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vaultq", "status", "cli_apps:good", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    text = status()
    assert text.returncode == 0, text.stderr
    assert "dropped without a dead letter on default: duplicate=1" in text.stdout
    doc = json.loads(status("--json").stdout)
    assert doc["dropped"] == {"default": {"duplicate": 1}}
