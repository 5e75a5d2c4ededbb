"""One clock for scheduling: a worker or producer whose clock is off neither hot-loops
nor parks jobs silently (docs/reliability.md). Skew is injected with the ``app.clock``
test hook, never by patching ``time`` for everyone."""

from __future__ import annotations

import logging

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

pytestmark = pytest.mark.anyio


class Ping(msgspec.Struct, frozen=True):
    n: int


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


async def test_a_worker_whose_clock_is_behind_runs_jobs_at_once_and_says_so(
    url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    producer = make_app(unique_name, url)
    worker_app = make_app(unique_name, url, keyring=producer.keyring)
    worker_app.clock.offset = -120.0  # this worker's host is two minutes behind

    @producer.task(name="clock.ping")
    async def ping(job: Ping) -> int:
        return job.n

    worker_app.task(name="clock.ping")(ping.fn)
    caplog.set_level(logging.WARNING, logger="vaultq.worker")
    async with running_worker(worker_app, concurrency=2) as worker:
        handle = await ping.enqueue(Ping(7))
        assert await handle.result(timeout=20) == 7
    # Once, not tens of thousands of hand-backs: the worker judged "not yet valid" on
    # the broker's clock.
    assert worker.processed == 1
    assert any("120" in r.getMessage() and "behind" in r.getMessage() for r in caplog.records)
    await producer.aclose()
    await worker_app.aclose()


async def test_a_producer_ahead_by_more_than_the_skew_is_deferred_not_hot_looped(
    url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    producer = make_app(unique_name, url, clock_skew=1.0)
    producer.clock.offset = 3.0  # its jobs claim to be issued 3 s in the future
    worker_app = make_app(unique_name, url, keyring=producer.keyring, clock_skew=1.0)

    @producer.task(name="clock.ping")
    async def ping(job: Ping) -> int:
        return job.n

    worker_app.task(name="clock.ping")(ping.fn)
    caplog.set_level(logging.WARNING)
    async with running_worker(worker_app, concurrency=2) as worker:
        handle = await ping.enqueue(Ping(3))
        with anyio.fail_after(30):
            assert await handle.result(timeout=25) == 3
    # Handed back until valid (2 s) plus a backoff: a few deliveries, never a hot loop.
    assert 2 <= worker.processed <= 4
    messages = [r.getMessage() for r in caplog.records]
    assert any("producer's clock is 3.0 s ahead of the broker's" in m for m in messages)
    assert any("not valid for another" in m for m in messages)
    await producer.aclose()
    await worker_app.aclose()


async def test_delays_are_kept_on_the_brokers_clock(url: str, unique_name: str) -> None:
    # A producer 60 s behind asks for a 1 s delay: the broker must see "in 1 s" on its
    # own clock, not "61 s ago" (run at once) nor "in 61 s".
    producer = make_app(unique_name, url, clock_skew=120.0)
    producer.clock.offset = -60.0
    worker_app = make_app(unique_name, url, keyring=producer.keyring, clock_skew=120.0)

    @producer.task(name="clock.ping")
    async def ping(job: Ping) -> int:
        return job.n

    worker_app.task(name="clock.ping")(ping.fn)
    async with running_worker(worker_app, concurrency=2):
        broker = await producer.broker()
        handle = await ping.enqueue(Ping(1), delay=1.5)
        await anyio.sleep(0.5)
        stats = await broker.stats("default")
        assert stats.delayed == 1  # not run early
        with anyio.fail_after(20):
            assert await handle.result(timeout=15) == 1  # nor parked for a minute
    await producer.aclose()
    await worker_app.aclose()


async def test_vaultq_check_tells_a_host_whose_clock_is_off(
    redis_url: str, unique_name: str
) -> None:
    from vaultq.checks import clock_findings

    app = make_app(unique_name, redis_url, clock_skew=60.0)
    assert await clock_findings(app) == []
    app.clock.offset = 45.0
    (warning,) = await clock_findings(app)
    assert (warning.level, warning.code) == ("warning", "VQ204")
    assert "45.0 s ahead of the broker's" in warning.message
    app.clock.offset = -90.0
    (error,) = await clock_findings(app)
    assert (error.level, error.code) == ("error", "VQ204")
    assert "90.0 s behind the broker's" in error.message
    await app.aclose()


async def test_a_broker_without_a_clock_is_taken_to_share_ours() -> None:
    # A third-party broker written before Broker.time() existed must not stop workers.
    from vaultq.clock import Clock

    class OldBroker:
        pass

    clock = Clock()
    assert await clock.measure(OldBroker()) == 0.0  # type: ignore[arg-type]
    assert not clock.due()
