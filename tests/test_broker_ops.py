"""The brokers' operator tools (``job_info``, ``cancel_queued``, ``retry_dead``), the same
checks against every broker kind (``broker_kind``), the third-party one included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from vaultq.brokers import broker_from_url
from vaultq.brokers.base import Ack, Broker, Bury, Delivery, EnqueueItem

pytestmark = [pytest.mark.anyio, pytest.mark.third_party_broker]

Q = "ops"
LEASE = 30.0


@pytest.fixture
def make_broker(broker_url: str, unique_name: str) -> Callable[[], Broker]:
    return lambda: broker_from_url(broker_url, namespace=unique_name)


@pytest.fixture
async def broker(make_broker: Callable[[], Broker], anyio_backend: str) -> AsyncIterator[Broker]:
    made = make_broker()
    await made.connect()
    try:
        yield made
    finally:
        await made.close()


async def _fetch_one(broker: Broker) -> Delivery:
    (delivery,) = await broker.fetch([Q], 1, consumer="w1", lease=LEASE, block=1.0)
    return delivery


async def test_job_info_follows_a_job_through_its_states(broker: Broker) -> None:
    assert (await broker.job_info(Q, "j1")).state == "absent"
    later = time.time() + 600
    await broker.enqueue([EnqueueItem(Q, "j1", b"env-1"), EnqueueItem(Q, "j2", b"env-2", later)])
    queued = await broker.job_info(Q, "j1")
    assert (queued.state, queued.attempt, queued.envelope) == ("queued", 1, b"env-1")
    assert queued.tag and queued.enqueued_at > 0
    delayed = await broker.job_info(Q, "j2")
    assert delayed.state == "delayed" and abs(delayed.not_before - later) < 1
    assert delayed.envelope == b"env-2"

    delivery = await _fetch_one(broker)
    assert (await broker.job_info(Q, "j1")).state == "running"
    await broker.settle(
        [Ack(delivery=delivery, result=b"r", result_ttl=60, remember_until=time.time() + 600)]
    )
    done = await broker.job_info(Q, "j1")
    assert (done.state, done.finished, done.dead) == ("absent", True, None)


async def test_job_info_reports_the_dead_letter(broker: Broker) -> None:
    await broker.enqueue([EnqueueItem(Q, "d1", b"env")])
    delivery = await _fetch_one(broker)
    bury = Bury(
        delivery=delivery,
        reason="failed",
        detail="failed: ValueError",
        result=None,
        result_ttl=60,
        remember_until=time.time() + 600,
    )
    await broker.settle([bury])
    info = await broker.job_info(Q, "d1")
    assert info.state == "absent" and info.dead is not None
    assert (info.dead.reason, info.dead.attempt) == ("failed", 1)


async def test_cancel_queued_dead_letters_a_waiting_job_at_once(broker: Broker) -> None:
    later = time.time() + 600
    await broker.enqueue([EnqueueItem(Q, "c1", b"env-1"), EnqueueItem(Q, "c2", b"env-2", later)])
    for job_id in ("c1", "c2"):
        info = await broker.job_info(Q, job_id)
        assert await broker.cancel_queued(
            info, result=b"sealed", result_ttl=60, remember_until=time.time() + 600
        )
        # The same (now stale) info cannot cancel twice.
        assert not await broker.cancel_queued(
            info, result=b"sealed", result_ttl=60, remember_until=time.time() + 600
        )
        after = await broker.job_info(Q, job_id)
        assert after.state == "absent" and after.finished
        assert after.dead is not None and after.dead.reason == "cancelled"
        assert await broker.get_result(Q, job_id) == b"sealed"
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (0, 0, 0, 2)


async def test_cancel_queued_leaves_a_running_job_to_its_marker(broker: Broker) -> None:
    await broker.enqueue([EnqueueItem(Q, "r1", b"env")])
    info = await broker.job_info(Q, "r1")
    await _fetch_one(broker)  # a worker takes it between the look and the cancel
    assert not await broker.cancel_queued(
        info, result=b"sealed", result_ttl=60, remember_until=time.time() + 600
    )
    assert (await broker.job_info(Q, "r1")).state == "running"
    assert await broker.get_result(Q, "r1") is None


async def test_retry_dead_requeues_failed_jobs_only(broker: Broker) -> None:
    await broker.enqueue([EnqueueItem(Q, "f1", b"env-f"), EnqueueItem(Q, "x1", b"env-x")])
    for _ in range(2):
        delivery = await _fetch_one(broker)
        reason = "failed" if delivery.job_id == "f1" else "rejected:bad_signature"
        await broker.settle(
            [
                Bury(
                    delivery=delivery,
                    reason=reason,
                    detail=reason,
                    result=b"old-outcome",
                    result_ttl=60,
                    remember_until=time.time() + 600 if reason == "failed" else None,
                )
            ]
        )
    letters = {d.job_id: d for d in await broker.dead_letters(Q)}
    assert await broker.retry_dead(Q, letters["x1"].tag) is None  # refused: rejected
    assert await broker.retry_dead(Q, "999999") is None  # no such letter
    moved = await broker.retry_dead(Q, letters["f1"].tag)
    assert moved is not None and (moved.job_id, moved.reason) == ("f1", "failed")
    # Its replay memory and old outcome are gone; it is a fresh first attempt.
    info = await broker.job_info(Q, "f1")
    assert (info.state, info.finished, info.attempt) == ("queued", False, 1)
    assert await broker.get_result(Q, "f1") is None
    again = await _fetch_one(broker)
    assert (again.job_id, again.attempt, again.completed, again.envelope) == (
        "f1",
        1,
        False,
        b"env-f",
    )
    assert [d.job_id for d in await broker.dead_letters(Q)] == ["x1"]
    assert await broker.retry_dead(Q, letters["f1"].tag) is None  # moved once only
