"""SqliteBroker: every protocol semantic against a real file, plus what only SQLite has
(URLs, schema versions, file modes, several OS processes on one file, lock errors)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from vaultq.brokers import broker_from_url
from vaultq.brokers.base import (
    Ack,
    Broker,
    Bury,
    CancelState,
    Delivery,
    EnqueueItem,
    Release,
    Retry,
)
from vaultq.brokers.sqlite import SCHEMA_VERSION, SqliteBroker
from vaultq.errors import BrokerError, BrokerUnavailable, ConfigurationError

REPO = Path(__file__).resolve().parent.parent
C = "worker-1"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/sub/dir/vaultq.db"  # tmp_path is absolute: four slashes


@pytest.fixture
async def broker(db_url: str) -> AsyncIterator[SqliteBroker]:
    b = SqliteBroker(db_url, namespace=f"ns-{uuid.uuid4().hex[:8]}")
    await b.connect()
    yield b
    await b.close()


def jid() -> str:
    return uuid.uuid4().hex


async def put(
    b: SqliteBroker, queue: str = "q", *, job_id: str | None = None, not_before: float | None = None
) -> str:
    job_id = job_id or jid()
    await b.enqueue([EnqueueItem(queue, job_id, b"env:" + job_id.encode(), not_before)])
    return job_id


async def take(
    b: SqliteBroker, queues: list[str] | None = None, count: int = 10, **kw: float
) -> list[Delivery]:
    lease = kw.pop("lease", 30.0)
    block = kw.pop("block", 0.0)
    assert not kw, f"take() passes only lease and block, not {sorted(kw)}"
    return await b.fetch(queues or ["q"], count, consumer=C, lease=lease, block=block)


def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make polling too slow to pass a test, so only the in-process wake-up can."""
    monkeypatch.setattr("vaultq.brokers.sqlite.POLL_MIN", 5.0)
    monkeypatch.setattr("vaultq.brokers.sqlite.POLL_MAX", 5.0)


def ack(d: Delivery, result: bytes | None = b"R", remember: float | None = None) -> Ack:
    return Ack(d, result, 60.0, remember if remember is not None else time.time() + 60)


# -- construction -------------------------------------------------------------------------


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = SqliteBroker("sqlite:///data/v.db", namespace="app")
    assert rel.path == tmp_path / "data" / "v.db"
    assert rel.url == "sqlite:///data/v.db"
    assert rel.namespace == "app"
    assert rel.shared is False
    absolute = SqliteBroker("sqlite:////var/tmp/x.db", namespace="app")
    assert absolute.path == Path("/var/tmp/x.db")
    assert SqliteBroker("sqlite:///:memory:", namespace="app").path is None
    assert isinstance(rel, Broker)
    assert "sqlite:///data/v.db" in repr(rel)
    assert isinstance(broker_from_url("sqlite:///v.db", namespace="a"), SqliteBroker)
    SqliteBroker("sqlite:///v.db?synchronous=normal&busy_timeout=2.5", namespace="a")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/x.db",
        "sqlite:///",
        "postgres:///x.db",
        "sqlite:///x.db?journal=delete",
        "sqlite:///x.db?synchronous=off",
        "sqlite:///x.db?busy_timeout=-1",
        "sqlite:///x.db?busy_timeout=soon",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SqliteBroker(url, namespace="app")


@pytest.mark.anyio
async def test_clone_is_unconnected_with_same_settings(broker: SqliteBroker) -> None:
    twin = broker.clone()
    assert twin is not broker
    assert (twin.url, twin.namespace, twin.path) == (broker.url, broker.namespace, broker.path)
    job = await put(broker)
    try:
        [d] = await take(twin)  # connects lazily and sees the same file
        assert d.job_id == job
    finally:
        await twin.close()


@pytest.mark.anyio
async def test_file_and_directory_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "q.db"
    b = SqliteBroker(f"sqlite:///{path}", namespace="n")
    await b.connect()
    await b.connect()  # idempotent
    try:
        await put(b)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        # SQLite gives the -wal/-shm files the database file's mode.
        for extra in path.parent.glob("q.db-*"):
            assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        await b.close()


@pytest.mark.anyio
async def test_memory_broker_and_clones_share_one_database() -> None:
    b = SqliteBroker("sqlite:///:memory:", namespace="n")
    twin = b.clone()
    await b.connect()
    try:
        job = await put(b)
        [d] = await take(twin)
        assert d.job_id == job
        await twin.settle([ack(d)])
        assert await b.wait_result("q", job, 1.0) == b"R"
        await twin.close()
        assert (await b.stats("q")).ready == 0  # the first close does not drop the data
    finally:
        await b.close()
    fresh = SqliteBroker("sqlite:///:memory:", namespace="n")
    assert await take(fresh) == []
    await fresh.close()


# -- schema -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_schema_version_recorded_and_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    conn = sqlite3.connect(path)  # an existing file with someone else's table
    conn.execute("CREATE TABLE other (x)")
    conn.execute("INSERT INTO other VALUES (42)")
    conn.commit()
    conn.close()
    url = f"sqlite:///{path}"
    b = SqliteBroker(url, namespace="n")
    job = await put(b)
    await b.close()
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM vaultq_meta WHERE key='schema_version'").fetchone()
    assert int(version[0]) == SCHEMA_VERSION
    assert conn.execute("SELECT x FROM other").fetchall() == [(42,)]
    conn.close()
    again = SqliteBroker(url, namespace="n")
    try:
        [d] = await take(again)
        assert d.job_id == job
    finally:
        await again.close()


@pytest.mark.anyio
async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    b = SqliteBroker(f"sqlite:///{path}", namespace="n")
    await b.connect()
    await b.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE vaultq_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(BrokerError, match="upgrade vaultq"):
        await SqliteBroker(f"sqlite:///{path}", namespace="n").connect()


@pytest.mark.anyio
async def test_unwritable_location_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    b = SqliteBroker(f"sqlite:///{blocker}/q.db", namespace="n")
    with pytest.raises(BrokerUnavailable, match="writable"):
        await b.connect()


@pytest.mark.anyio
async def test_lock_held_too_long_maps_to_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    b = SqliteBroker(f"sqlite:///{path}?busy_timeout=0.2", namespace="n")
    await b.connect()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. a stuck process or an open sqlite3 shell
    try:
        with pytest.raises(BrokerUnavailable, match="busy_timeout"):
            await put(b)
    finally:
        other.execute("ROLLBACK")
        other.close()
    await put(b)  # and it recovers
    await b.close()


@pytest.mark.anyio
async def test_waiting_for_the_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    b = SqliteBroker(f"sqlite:///{path}", namespace="n")
    await b.connect()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        tg.start_soon(put, b)  # waits in a worker thread for the lock
        await anyio.sleep(0.4)
        other.execute("COMMIT")
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    other.close()
    assert ticks > 20
    assert (await b.stats("q")).ready == 1
    await b.close()


# -- enqueue / fetch ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_delivery_fields_and_opaque_bytes(broker: SqliteBroker) -> None:
    envelope = bytes(range(256)) * 4  # not text: stored and returned byte for byte
    before = time.time()
    await broker.enqueue([EnqueueItem("q", "job-1", envelope)])
    [d] = await take(broker)
    assert (d.queue, d.job_id, d.envelope, d.attempt) == ("q", "job-1", envelope, 1)
    assert not (d.redelivered or d.completed or d.cancel_requested)
    assert before <= d.enqueued_at <= time.time()
    assert d.tag.replace(".", "").isdigit()


@pytest.mark.anyio
async def test_fifo_count_and_queue_priority(broker: SqliteBroker) -> None:
    low = [await put(broker, "low") for _ in range(3)]
    high = [await put(broker, "high") for _ in range(2)]
    got = await take(broker, ["high", "low"], count=3)
    assert [d.job_id for d in got] == [*high, low[0]]
    got = await take(broker, ["high", "low"], count=10)
    assert [d.job_id for d in got] == low[1:]
    assert await take(broker, ["high", "low"]) == []


@pytest.mark.anyio
async def test_batch_enqueue_and_empty_inputs(broker: SqliteBroker) -> None:
    await broker.enqueue([])
    await broker.enqueue([EnqueueItem("q", f"j{i}", b"e") for i in range(50)])
    assert (await broker.stats("q")).ready == 50
    assert await take(broker, count=0) == []
    assert await broker.fetch([], 5, consumer=C, lease=1, block=0) == []
    assert len(await take(broker, count=100)) == 50


@pytest.mark.anyio
async def test_enqueue_never_drops_duplicates_or_existing(broker: SqliteBroker) -> None:
    await put(broker, job_id="same")
    await put(broker, job_id="same")
    assert (await broker.stats("q")).ready == 2


@pytest.mark.anyio
async def test_namespaces_are_isolated(db_url: str) -> None:
    a = SqliteBroker(db_url, namespace="a")
    b = SqliteBroker(db_url, namespace="b")
    try:
        job = await put(a)
        assert await take(b) == []
        assert (await b.stats("q")).ready == 0
        [d] = await take(a)
        await a.settle([Bury(d, "failed", "x", b"R", 60, time.time() + 60)])
        assert await b.get_result("q", job) is None
        assert await b.dead_letters("q") == []
        assert await b.cancel("q", job, ttl=60) is CancelState.REQUESTED
        assert await a.cancelled("q", [job]) == set()
    finally:
        await a.close()
        await b.close()


@pytest.mark.anyio
async def test_delayed_job_waits_for_not_before(broker: SqliteBroker) -> None:
    job = await put(broker, not_before=time.time() + 0.4)
    assert await take(broker) == []
    stats = await broker.stats("q")
    assert (stats.ready, stats.delayed) == (0, 1)
    start = time.monotonic()
    [d] = await take(broker, block=5.0)  # blocks, and wakes when the job becomes due
    waited = time.monotonic() - start
    assert d.job_id == job
    assert 0.2 < waited < 1.0


@pytest.mark.anyio
async def test_past_not_before_is_ready(broker: SqliteBroker) -> None:
    job = await put(broker, not_before=time.time() - 100)
    assert [d.job_id for d in await take(broker)] == [job]


@pytest.mark.anyio
async def test_block_times_out_empty(broker: SqliteBroker) -> None:
    start = time.monotonic()
    assert await take(broker, block=0.3) == []
    assert 0.25 < time.monotonic() - start < 1.0


@pytest.mark.anyio
async def test_block_wakes_on_enqueue_same_instance(
    broker: SqliteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_polls(monkeypatch)
    got: list[Delivery] = []

    async def consumer() -> None:
        got.extend(await take(broker, block=10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.sleep(0.5)  # the consumer is now in its slowest poll interval
        start = time.monotonic()
        await put(broker)
    assert len(got) == 1
    assert time.monotonic() - start < 0.5  # polls are 5 s apart: the event woke it


@pytest.mark.anyio
async def test_block_sees_other_connections(broker: SqliteBroker) -> None:
    producer = broker.clone()
    got: list[Delivery] = []

    async def consumer() -> None:
        got.extend(await take(broker, block=10.0))

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.sleep(0.3)
        await put(producer)
    assert len(got) == 1
    assert time.monotonic() - start < 1.0  # the backoff stays at most 200 ms
    await producer.close()


@pytest.mark.anyio
async def test_cancelled_fetch_leaves_broker_usable(broker: SqliteBroker) -> None:
    with anyio.move_on_after(0.1):
        await take(broker, block=10.0)
    await put(broker)
    assert len(await take(broker)) == 1


# -- leases and claims --------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_lease_redelivers_same_attempt(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker, lease=0.2)
    assert await take(broker) == []
    assert await broker.is_running("q", job)
    stats = await broker.stats("q")
    assert (stats.ready, stats.running) == (0, 1)
    await anyio.sleep(0.3)
    assert not await broker.is_running("q", job)
    assert (await broker.stats("q")).ready == 1
    [again] = await broker.fetch(["q"], 5, consumer="worker-2", lease=30, block=0)
    assert again.job_id == job
    assert again.redelivered and not d.redelivered
    assert again.attempt == d.attempt == 1
    assert again.tag != d.tag  # a new lease, so the old delivery is recognisably stale


@pytest.mark.anyio
async def test_extend_keeps_the_lease(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker, lease=0.3)
    for _ in range(3):
        await anyio.sleep(0.15)
        await broker.extend([d], consumer=C, lease=0.3)
    assert await take(broker) == []
    assert await broker.is_running("q", job)
    await broker.extend([], consumer=C, lease=1)


@pytest.mark.anyio
async def test_stale_delivery_cannot_extend_or_requeue(broker: SqliteBroker) -> None:
    job = await put(broker)
    [stale] = await take(broker, lease=0.2)
    await anyio.sleep(0.3)
    [current] = await broker.fetch(["q"], 5, consumer="worker-2", lease=30, block=0)
    assert current.redelivered and current.tag != stale.tag
    assert await broker.extend([stale], consumer=C, lease=30) == {stale.tag}
    await broker.settle([Release(stale, 0.0), Retry(stale, 0.0)])
    assert await take(broker) == []  # still leased to worker-2, claim intact
    assert await broker.is_running("q", job)
    await broker.extend([current], consumer="worker-2", lease=30)
    await broker.settle([ack(current)])
    assert not await broker.is_running("q", job)
    assert (await broker.stats("q")).running == 0


@pytest.mark.anyio
async def test_extend_never_takes_back_a_lapsed_lease(broker: SqliteBroker) -> None:
    # Fencing: once the lease ran out (host clock), the delivery has lost it for good,
    # even when nobody fetched the row since; the job is delivered again instead.
    job = await put(broker)
    [d] = await take(broker, lease=0.1)
    await anyio.sleep(0.2)
    assert await broker.extend([d], consumer=C, lease=30) == {d.tag}
    [again] = await take(broker)
    assert again.job_id == job and again.redelivered


@pytest.mark.anyio
async def test_stale_ack_is_refused(broker: SqliteBroker) -> None:
    job = await put(broker)
    [stale] = await take(broker, lease=0.1)
    await anyio.sleep(0.2)
    [current] = await take(broker)
    await broker.settle([ack(stale, b"first")])  # fenced: writes nothing
    assert await broker.get_result("q", job) is None
    assert (await broker.stats("q")).running == 1
    await broker.settle([ack(current, b"second")])
    assert await broker.get_result("q", job) == b"second"
    assert await broker.dead_letters("q") == []


@pytest.mark.anyio
async def test_duplicate_job_id_is_removed_while_claimed(broker: SqliteBroker) -> None:
    await put(broker, job_id="dup")
    [original] = await take(broker, lease=0.4)
    await put(broker, job_id="dup")  # written again while the original runs
    other = await put(broker)
    got = await take(broker)
    assert [d.job_id for d in got] == [other]  # the duplicate never runs beside it
    assert await broker.counters("q") == {"duplicate": 1}  # counted, not stored
    stats = await broker.stats("q")
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)
    await broker.settle([ack(original)])
    assert not await broker.is_running("q", "dup")
    assert await take(broker, block=0.6) == []


@pytest.mark.anyio
async def test_two_copies_never_leased_in_one_fetch(broker: SqliteBroker) -> None:
    await put(broker, job_id="dup")
    await put(broker, job_id="dup")
    first = await take(broker, count=10)
    assert [d.job_id for d in first] == ["dup"]
    await broker.settle([Release(first[0], time.time())])
    second = await take(broker, count=10)
    assert [d.job_id for d in second] == ["dup"]


@pytest.mark.anyio
async def test_duplicate_takes_over_after_original_lease_expires(broker: SqliteBroker) -> None:
    await put(broker, job_id="dup")
    [original] = await take(broker, lease=0.2)
    await put(broker, job_id="dup")
    await anyio.sleep(0.3)
    [next_one] = await take(broker, count=10)  # one of the two rows, never both
    assert next_one.job_id == "dup"
    assert await broker.is_running("q", "dup")
    assert await take(broker, count=10) == []
    # The duplicate row was due first; the original row now waits behind its claim.
    assert next_one.tag != original.tag
    # The stale original settles late: it must not drop the other row's claim.
    await broker.settle([Retry(original, time.time() + 60)])
    assert await broker.is_running("q", "dup")


# -- settle -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ack_stores_result_remembers_and_removes(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([ack(d, b"sealed-result")])
    assert await broker.get_result("q", job) == b"sealed-result"
    assert not await broker.is_running("q", job)
    stats = await broker.stats("q")
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (0, 0, 0, 0)
    assert await broker.cancel("q", job, ttl=60) is CancelState.FINISHED
    await put(broker, job_id=job)  # a replayed copy
    [replay] = await take(broker)
    assert replay.completed


@pytest.mark.anyio
async def test_ack_without_result(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([ack(d, None)])
    assert await broker.get_result("q", job) is None
    assert await broker.cancel("q", job, ttl=60) is CancelState.FINISHED


@pytest.mark.anyio
async def test_result_ttl_and_memory_expire(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([Ack(d, b"R", 0.2, time.time() + 0.2)])
    assert await broker.get_result("q", job) == b"R"
    await anyio.sleep(0.3)
    assert await broker.get_result("q", job) is None
    await put(broker, job_id=job)
    [again] = await take(broker)
    assert not again.completed


@pytest.mark.anyio
async def test_memory_is_never_shortened(broker: SqliteBroker) -> None:
    await put(broker, job_id="x")
    [d] = await take(broker)
    await broker.settle([ack(d, None, remember=time.time() + 3600)])
    await put(broker, job_id="x")
    [d2] = await take(broker)
    await broker.settle([ack(d2, None, remember=time.time() + 0.1)])
    await anyio.sleep(0.2)
    await put(broker, job_id="x")
    [d3] = await take(broker)
    assert d3.completed


@pytest.mark.anyio
async def test_retry_increments_attempt_after_backoff(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([Retry(d, time.time() + 0.3)])
    assert not await broker.is_running("q", job)
    stats = await broker.stats("q")
    assert (stats.delayed, stats.running) == (1, 0)
    assert await take(broker) == []
    [d2] = await take(broker, block=2.0)
    assert (d2.job_id, d2.attempt, d2.redelivered, d2.envelope) == (job, 2, False, d.envelope)
    await broker.settle([Retry(d2, time.time())])
    [d3] = await take(broker)
    assert d3.attempt == 3


@pytest.mark.anyio
async def test_release_keeps_attempt(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([Retry(d, time.time())])
    [d2] = await take(broker)
    await broker.settle([Release(d2, time.time())])
    [d3] = await take(broker)
    assert (d3.job_id, d3.attempt, d3.redelivered) == (job, 2, False)


@pytest.mark.anyio
async def test_settle_wakes_blocked_fetch(
    broker: SqliteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_polls(monkeypatch)
    await put(broker)
    [d] = await take(broker)
    got: list[Delivery] = []

    async def consumer() -> None:
        got.extend(await take(broker, block=10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.sleep(0.5)
        start = time.monotonic()
        await broker.settle([Release(d, 0.0)])
    assert len(got) == 1
    assert time.monotonic() - start < 0.5  # polls are 5 s apart: the event woke it


@pytest.mark.anyio
async def test_bury_dead_letters_newest_first(broker: SqliteBroker) -> None:
    jobs = [await put(broker) for _ in range(3)]
    ds = await take(broker)
    await broker.settle([Retry(ds[0], time.time())])
    [retried] = await take(broker)
    await broker.settle(
        [
            Bury(retried, "failed", "ValueError after 2 attempts", None, 60, time.time() + 60),
            Bury(ds[1], "rejected:bad_signature", "signature mismatch", None, 60, None),
            Bury(ds[2], "denied", "policy require_role said no", b"outcome", 60, time.time() + 60),
        ]
    )
    dead = await broker.dead_letters("q")
    assert [x.job_id for x in dead] == [jobs[2], jobs[1], jobs[0]]
    assert [(x.reason, x.detail, x.attempt) for x in dead] == [
        ("denied", "policy require_role said no", 1),
        ("rejected:bad_signature", "signature mismatch", 1),
        ("failed", "ValueError after 2 attempts", 2),
    ]
    assert all(x.queue == "q" and x.at > 0 and x.tag for x in dead)
    assert [x.job_id for x in await broker.dead_letters("q", limit=1)] == [jobs[2]]
    assert await broker.get_result("q", jobs[2]) == b"outcome"
    assert await broker.get_result("q", jobs[1]) is None
    assert (await broker.stats("q")).dead == 3
    assert await take(broker) == []
    # remember_until=None: an unauthenticated id means nothing, so it is not remembered.
    await put(broker, job_id=jobs[1])
    await put(broker, job_id=jobs[0])
    flags = {d.job_id: d.completed for d in await take(broker)}
    assert flags == {jobs[1]: False, jobs[0]: True}
    assert await broker.purge_dead("q") == 3
    assert await broker.dead_letters("q") == []
    assert await broker.purge_dead("q") == 0


@pytest.mark.anyio
async def test_settling_twice_does_not_bury_twice(broker: SqliteBroker) -> None:
    await put(broker)
    [d] = await take(broker)
    bury = Bury(d, "failed", "boom", None, 60, time.time() + 60)
    await broker.settle([bury])
    await broker.settle([bury])
    assert len(await broker.dead_letters("q")) == 1


@pytest.mark.anyio
async def test_settle_batch_is_all_or_nothing(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    forged = Delivery(queue="q", job_id="x", envelope=b"", attempt=1, tag="not-a-row")
    with pytest.raises(BrokerError):
        await broker.settle([ack(d), ack(forged)])
    assert await broker.get_result("q", job) is None
    assert await broker.is_running("q", job)


@pytest.mark.anyio
async def test_failed_transaction_rolls_back(broker: SqliteBroker, db_url: str) -> None:
    job = await put(broker)
    [d] = await take(broker)
    path = broker.path
    assert path is not None
    conn = sqlite3.connect(path)  # make the dead-letter insert fail mid-settlement
    conn.execute(
        "CREATE TRIGGER no_dead BEFORE INSERT ON vaultq_dead BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(BrokerError) as info:
        await broker.settle([Bury(d, "failed", "x", b"R", 60, time.time() + 60)])
    assert not isinstance(info.value, BrokerUnavailable)
    assert await broker.get_result("q", job) is None  # the result write rolled back too
    assert await broker.is_running("q", job)
    assert (await broker.stats("q")).running == 1


# -- results ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_result_wakes_on_same_instance_settle(
    broker: SqliteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_polls(monkeypatch)
    job = await put(broker)
    [d] = await take(broker)
    got: list[bytes | None] = []

    async def waiter() -> None:
        got.append(await broker.wait_result("q", job, 10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(waiter)
        await anyio.sleep(0.5)
        start = time.monotonic()
        await broker.settle([ack(d, b"done")])
    assert got == [b"done", b"done"]
    assert time.monotonic() - start < 0.5  # polls are 5 s apart: the event woke it


@pytest.mark.anyio
async def test_wait_result_across_connections(broker: SqliteBroker) -> None:
    worker = broker.clone()
    job = await put(broker)
    [d] = await take(worker)
    other = await put(broker)
    [d_other] = await take(worker)
    got: list[bytes | None] = []

    async def waiter(job_id: str) -> None:
        got.append(await broker.wait_result("q", job_id, 10.0))

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, job)
        tg.start_soon(waiter, other)
        await anyio.sleep(0.3)
        await worker.settle([ack(d_other, b"B")])
        await anyio.sleep(0.3)
        await worker.settle([ack(d, b"A")])
    assert sorted(got) == [b"A", b"B"]  # type: ignore[type-var]
    assert time.monotonic() - start < 1.5
    await worker.close()


@pytest.mark.anyio
async def test_wait_result_timeout(broker: SqliteBroker) -> None:
    start = time.monotonic()
    assert await broker.wait_result("q", "missing", 0.3) is None
    assert 0.25 < time.monotonic() - start < 1.0
    assert await broker.wait_result("q", "missing", 0) is None
    assert broker._result_waiters == {}  # no leak of waiter events


# -- cancellation -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_marker_reported_and_expires(broker: SqliteBroker) -> None:
    queued = await put(broker)
    running = await put(broker)
    [d_running] = await take(broker, count=1)
    assert d_running.job_id == queued
    assert await broker.cancel("q", queued, ttl=0.5) is CancelState.REQUESTED
    assert await broker.cancel("q", running, ttl=60) is CancelState.REQUESTED
    [d2] = await take(broker)
    assert d2.job_id == running and d2.cancel_requested
    assert await broker.cancelled("q", [queued, running, "other"]) == {queued, running}
    assert await broker.cancelled("q", []) == set()
    await anyio.sleep(0.6)
    assert await broker.cancelled("q", [queued, running]) == {running}


# -- housekeeping -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cleanup_deletes_expired_rows(broker: SqliteBroker) -> None:
    job = await put(broker)
    [d] = await take(broker)
    await broker.settle([Ack(d, b"R", 0.05, time.time() + 0.05)])
    await broker.cancel("q", "c", ttl=0.05)
    await anyio.sleep(0.1)
    broker._last_cleanup = 0.0  # due now
    await take(broker)
    assert broker.path is not None
    conn = sqlite3.connect(broker.path)
    for table in ("vaultq_results", "vaultq_finished", "vaultq_cancels", "vaultq_claims"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    conn.close()
    assert job


# -- several OS processes -----------------------------------------------------------------

CONSUMER = textwrap.dedent(
    """
    import json, pathlib, sys, time, anyio
    from vaultq.brokers.base import Ack
    from vaultq.brokers.sqlite import SqliteBroker

    async def main(url, name, rendezvous):
        b = SqliteBroker(url, namespace="mp")
        await b.connect()
        # Start together: a fixed wall-clock start is missed when one interpreter is
        # slow to boot on a loaded machine, and then the other takes every job.
        here = pathlib.Path(rendezvous)
        (here / f"{name}.ready").touch()
        deadline = time.time() + 60
        while len(list(here.glob("*.ready"))) < 2 and time.time() < deadline:
            await anyio.sleep(0.005)
        seen = []
        idle = 0
        while idle < 3:
            ds = await b.fetch(["q"], 7, consumer=name, lease=60, block=0.3)
            idle = 0 if ds else idle + 1
            seen += [d.job_id for d in ds]
            await b.settle([Ack(d, None, 60, time.time() + 60) for d in ds])
            # SQLite's lock is not fair: without a pause between batches, one process
            # on a loaded machine can drain the queue while the other waits to write
            await anyio.sleep(0.005)
        await b.close()
        print(json.dumps(seen))

    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
    """
)


@pytest.mark.anyio
async def test_two_processes_never_get_the_same_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/mp.db"
    b = SqliteBroker(url, namespace="mp")
    jobs = [f"job-{i:03d}" for i in range(500)]
    await b.enqueue([EnqueueItem("q", j, b"e") for j in jobs])
    await b.close()
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONSUMER, url, f"p{i}", str(rendezvous)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    first, second = outputs
    assert first and second, "both processes should have taken part"
    assert not set(first) & set(second)
    assert sorted(first + second) == jobs  # each job delivered exactly once
