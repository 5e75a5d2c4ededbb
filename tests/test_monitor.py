"""Worker heartbeats and the job event stream, on real Redis and SQLite
(``vaultq/brokers/monitor.py``, ``redis_monitor.py``, ``sqlite_monitor.py``,
``vaultq/runtime/presence.py``, ``vaultq/monitor.py``)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable

import anyio
import msgspec
import pytest
import redis
from support.workers import make_app, running_worker

import vaultq
import vaultq.monitor
from vaultq.brokers import broker_from_url
from vaultq.brokers.monitor import JobEvent, Monitoring, WorkerBeat, monitoring

# The broker kinds implementing vaultq.brokers.monitor.Monitoring.
pytestmark = [pytest.mark.anyio, pytest.mark.broker_kinds("sqlite", "redis")]


@pytest.fixture
def make_monitor(broker_url: str, unique_name: str) -> Callable[[str], Monitoring]:
    def make(suffix: str) -> Monitoring:
        made = monitoring(broker_from_url(broker_url, namespace=unique_name + suffix))
        assert made is not None
        return made

    return make


@pytest.fixture
async def monitor(
    make_monitor: Callable[[str], Monitoring], anyio_backend: str
) -> AsyncIterator[Monitoring]:
    made = make_monitor("")
    try:
        yield made
    finally:
        await made.close()  # type: ignore[attr-defined]


def _beat(name: str, *, every: float = 5.0, done: int = 0) -> WorkerBeat:
    return WorkerBeat(
        worker=name,
        host="h1",
        pid=123,
        app="a",
        queues=("default",),
        concurrency=4,
        in_flight=1,
        done=done,
        started_at=time.time(),
        version="0",
        every=every,
    )


async def test_both_brokers_record_workers_and_events() -> None:
    from vaultq.brokers.redis import RedisBroker
    from vaultq.brokers.sqlite import SqliteBroker

    assert monitoring(RedisBroker("redis://localhost", namespace="x")) is not None
    assert monitoring(SqliteBroker("sqlite:///:memory:", namespace="x")) is not None
    assert monitoring(object()) is None


async def test_beats_replace_each_other_and_are_stamped_by_the_broker(
    monitor: Monitoring,
) -> None:
    before = time.time()
    await monitor.beat(_beat("w1", done=1))
    at = await monitor.beat(_beat("w1", done=7))
    await monitor.beat(_beat("w2"))
    now, beats = await monitor.workers()
    assert [b.worker for b in beats] == ["w1", "w2"]
    assert beats[0].done == 7 and beats[0].at == pytest.approx(at)
    assert before - 1 <= beats[0].at <= now + 0.001
    assert all(b.alive(now) for b in beats)
    await monitor.forget_worker("w1")
    assert [b.worker for b in (await monitor.workers())[1]] == ["w2"]


async def test_a_silent_worker_is_flagged_then_forgotten(monitor: Monitoring) -> None:
    await monitor.beat(_beat("quiet", every=0.1), forget=60)
    now, beats = await monitor.workers(forget=60)
    assert beats[0].alive(now)
    assert not beats[0].alive(now + 1.5)  # three missed periods plus a second
    await anyio.sleep(0.6)
    await monitor.beat(_beat("other"), forget=0.5)  # a beat prunes the silent ones
    _, beats = await monitor.workers(forget=0.5)
    assert [b.worker for b in beats] == ["other"]


async def test_namespaces_do_not_see_each_others_workers_or_events(
    make_monitor: Callable[[str], Monitoring], anyio_backend: str
) -> None:
    a, b = make_monitor("a"), make_monitor("b")
    try:
        await a.beat(_beat("wa"))
        await a.add_events([JobEvent("started", "j1", "q")])
        assert (await b.workers())[1] == []
        assert await b.read_events() == []
        assert await b.last_event_id() == ""
    finally:
        await a.close()  # type: ignore[attr-defined]
        await b.close()  # type: ignore[attr-defined]


async def test_events_keep_order_positions_and_a_bounded_length(monitor: Monitoring) -> None:
    assert await monitor.read_events() == []
    events = [JobEvent("started", f"j{i}", "q", task="t", attempt=1) for i in range(30)]
    await monitor.add_events(events[:10], maxlen=20)
    await monitor.add_events(events[10:], maxlen=20)
    newest = await monitor.read_events(limit=5)
    assert [e.job_id for e in newest] == [f"j{i}" for i in range(25, 30)]
    assert newest[-1].id == await monitor.last_event_id()
    # "after" continues in order from a position
    nxt = await monitor.read_events(after=newest[0].id, limit=2)
    assert [e.job_id for e in nxt] == ["j26", "j27"]
    assert await monitor.read_events(after=newest[-1].id) == []
    # Bounded: far fewer than 30 kept (Redis trims approximately, whole nodes at a time;
    # the bound shows with more events).
    await monitor.add_events([JobEvent("started", f"k{i}", "q") for i in range(3000)], maxlen=100)
    kept = await monitor.read_events(after="", limit=10_000)
    assert kept[-1].job_id == "k2999"
    assert len(kept) <= 300, len(kept)


async def test_a_blocking_read_wakes_for_a_new_event(
    make_monitor: Callable[[str], Monitoring], anyio_backend: str
) -> None:
    reader, writer = make_monitor(""), make_monitor("")
    try:
        start = await reader.last_event_id()
        got: list[JobEvent] = []

        async def read() -> None:
            got.extend(await reader.read_events(after=start, block=5.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.sleep(0.3)
            t0 = time.monotonic()
            await writer.add_events([JobEvent("succeeded", "j1", "q")])
        assert [e.job_id for e in got] == ["j1"]
        assert time.monotonic() - t0 < 1.5
    finally:
        await reader.close()  # type: ignore[attr-defined]
        await writer.close()  # type: ignore[attr-defined]


async def test_junk_in_the_stream_is_skipped(redis_url: str, unique_name: str) -> None:
    from vaultq.brokers.redis import RedisBroker

    broker = RedisBroker(redis_url, namespace=unique_name)
    try:
        keys = broker.monitor_keys
        raw = redis.Redis.from_url(redis_url)
        raw.xadd(keys.events, {"e": b"not json"})
        raw.xadd(keys.events, {"x": b"{}"})
        raw.hset(keys.workers, "bad", b"[1,2]")
        raw.zadd(keys.seen, {"bad": time.time()})
        raw.close()
        await broker.add_events([JobEvent("started", "good", "q")])
        assert [e.job_id for e in await broker.read_events()] == ["good"]
        assert (await broker.workers())[1] == []
    finally:
        await broker.close()


# -- a real worker --------------------------------------------------------------------------


class Item(msgspec.Struct, frozen=True):
    n: int


async def test_a_running_worker_registers_counts_and_leaves(
    broker_url: str, unique_name: str
) -> None:
    app = make_app(unique_name, broker_url)

    @app.task(name="work", policy=vaultq.allow_all)
    async def work(job: Item) -> int:
        return job.n

    async with running_worker(app, health_interval=0.2) as worker:
        handle = await work.enqueue(Item(3))
        assert await handle.result(timeout=10) == 3
        deadline = time.monotonic() + 5
        while True:
            found = await vaultq.monitor.workers(app)
            if found and found[0].beat.done >= 1:
                break
            assert time.monotonic() < deadline, found
            await anyio.sleep(0.1)
        [status] = found
        assert status.alive and status.beat.worker == worker.name
        beat = status.beat
        assert (beat.host, beat.pid, beat.app) == (socket.gethostname(), os.getpid(), app.name)
        assert beat.concurrency == 4 and beat.every == 0.2 and beat.version
        assert beat.queues == ("default",)
    # a clean stop removes the beat
    assert await vaultq.monitor.workers(app) == []
    await app.aclose()
