"""The broker conformance suite: every semantic of ``vaultq/brokers/base.py``, run
against every broker kind (``broker_kind``: Redis on the session's private server, the
embedded SQLite broker, and a broker installed as a third-party package that registers
through the ``vaultq.brokers`` entry point)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest

from vaultq.brokers import broker_from_url
from vaultq.brokers.base import (
    Ack,
    Broker,
    Bury,
    CancelState,
    Delivery,
    Drop,
    EnqueueItem,
    QueueStats,
    Release,
    Retry,
)
from vaultq.brokers.chords import ChordStore, chord_store

pytestmark = [pytest.mark.anyio, pytest.mark.third_party_broker]

LEASE = 0.5
Q = "jobs"


@pytest.fixture
def make_broker(broker_url: str, unique_name: str) -> Callable[[str], Broker]:
    """Builds an unconnected broker of the parametrised kind through the registry (the
    third-party kind through its entry point); the argument is a suffix for this test's
    namespace (one store, several namespaces)."""
    return lambda suffix: broker_from_url(broker_url, namespace=unique_name + suffix)


@pytest.fixture
async def broker(make_broker: Callable[[str], Broker], anyio_backend: str) -> AsyncIterator[Broker]:
    made = make_broker("")
    await made.connect()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def other(broker: Broker) -> AsyncIterator[Broker]:
    """A second connection to the same broker (another worker process)."""
    second = broker.clone()
    await second.connect()
    try:
        yield second
    finally:
        await second.close()


def item(
    job_id: str, envelope: bytes = b"env", *, queue: str = Q, at: float | None = None
) -> EnqueueItem:
    return EnqueueItem(queue=queue, job_id=job_id, envelope=envelope, not_before=at)


async def fetch(
    b: Broker,
    count: int = 10,
    *,
    consumer: str = "c1",
    queues: Sequence[str] = (Q,),
    block: float = 0.0,
    lease: float = LEASE,
) -> list[Delivery]:
    return await b.fetch(list(queues), count, consumer=consumer, lease=lease, block=block)


async def fetch_until(
    b: Broker, n: int, *, consumer: str = "c1", timeout: float = 5.0, lease: float = LEASE
) -> list[Delivery]:
    got: list[Delivery] = []
    with anyio.fail_after(timeout):
        while len(got) < n:
            got += await fetch(b, n - len(got), consumer=consumer, block=0.5, lease=lease)
    return got


def ack(d: Delivery, result: bytes | None = b"ok", remember: float = 3600.0) -> Ack:
    return Ack(d, result=result, result_ttl=60.0, remember_until=time.time() + remember)


# -- enqueue and fetch -------------------------------------------------------------------


async def test_round_trip_keeps_bytes_and_fields(broker: Broker) -> None:
    envelope = bytes(range(256)) * 3
    before = time.time()
    await broker.enqueue([item("job-1", envelope)])
    (d,) = await fetch(broker)
    assert (d.queue, d.job_id, d.envelope, d.attempt) == (Q, "job-1", envelope, 1)
    assert not d.redelivered and not d.completed and not d.cancel_requested
    assert before - 1 <= d.enqueued_at <= time.time() + 1
    assert d.tag
    assert await fetch(broker) == []


async def test_fetch_respects_count(broker: Broker) -> None:
    await broker.enqueue([item(f"j{i}") for i in range(5)])
    first = await fetch(broker, 2)
    second = await fetch(broker, 2)
    third = await fetch(broker, 2)
    assert [len(first), len(second), len(third)] == [2, 2, 1]
    ids = [d.job_id for d in first + second + third]
    assert sorted(ids) == [f"j{i}" for i in range(5)]
    assert await fetch(broker, 0) == []


async def test_enqueue_batch_over_queues(broker: Broker) -> None:
    await broker.enqueue([item("a", queue="one"), item("b", queue="two")])
    assert [d.job_id for d in await fetch(broker, queues=["one"])] == ["a"]
    assert [d.job_id for d in await fetch(broker, queues=["two"])] == ["b"]


async def test_not_before_delays_delivery(broker: Broker) -> None:
    await broker.enqueue([item("later", at=time.time() + 0.8)])
    assert await fetch(broker) == []
    assert (await broker.stats(Q)).delayed == 1
    start = time.monotonic()
    got = await fetch(broker, block=3.0)
    waited = time.monotonic() - start
    assert [d.job_id for d in got] == ["later"]
    assert 0.4 < waited < 2.5
    assert got[0].attempt == 1


async def test_not_before_in_the_past_is_ready(broker: Broker) -> None:
    await broker.enqueue([item("now", at=time.time() - 5)])
    assert [d.job_id for d in await fetch(broker)] == ["now"]


async def test_fetch_blocks_then_returns_empty(broker: Broker) -> None:
    start = time.monotonic()
    assert await fetch(broker, block=0.6) == []
    assert 0.5 <= time.monotonic() - start < 2.0


async def test_blocked_fetch_wakes_on_enqueue(broker: Broker, other: Broker) -> None:
    got: list[Delivery] = []
    start = time.monotonic()

    async def waiter() -> None:
        got.extend(await fetch(broker, block=5.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.3)
        await other.enqueue([item("wake")])
    assert [d.job_id for d in got] == ["wake"]
    assert time.monotonic() - start < 2.0


async def test_multiple_queues_earlier_first(broker: Broker) -> None:
    await broker.enqueue([item(f"low{i}", queue="low") for i in range(3)])
    await broker.enqueue([item(f"high{i}", queue="high") for i in range(2)])
    got = await fetch(broker, 3, queues=["high", "low"])
    assert [d.queue for d in got] == ["high", "high", "low"]
    assert {d.job_id for d in got[:2]} == {"high0", "high1"}
    rest = await fetch(broker, 10, queues=["high", "low"])
    assert sorted(d.job_id for d in got[2:] + rest) == ["low0", "low1", "low2"]


# -- leases ------------------------------------------------------------------------------


async def test_expired_lease_is_redelivered_to_another_consumer(
    broker: Broker, other: Broker
) -> None:
    await broker.enqueue([item("crash", b"payload")])
    (first,) = await fetch(broker, consumer="dead-worker")
    assert await fetch(other, consumer="c2") == []
    await anyio.sleep(LEASE + 0.2)
    (again,) = await fetch_until(other, 1, consumer="c2")
    assert again.job_id == "crash"
    assert again.envelope == b"payload"
    assert again.redelivered
    assert again.attempt == 1  # a crash is not a retry
    await other.settle([ack(again)])
    assert await other.get_result(Q, "crash") == b"ok"


async def test_extend_keeps_the_lease(broker: Broker, other: Broker) -> None:
    await broker.enqueue([item("long")])
    (d,) = await fetch(broker, consumer="c1")
    for _ in range(4):
        await anyio.sleep(LEASE * 0.6)
        await broker.extend([d], consumer="c1", lease=LEASE)
        assert await fetch(other, consumer="c2") == []
        assert await broker.is_running(Q, "long")
    await anyio.sleep(LEASE + 0.2)
    (again,) = await fetch_until(other, 1, consumer="c2")
    assert again.job_id == "long" and again.redelivered


async def test_duplicate_job_id_not_delivered_while_claimed(broker: Broker, other: Broker) -> None:
    """A second entry for a job id claimed by a live lease is removed and counted (it may
    never run beside the first, and after it would be a replay), the first keeps its
    lease and settles normally."""
    await broker.enqueue([item("dup", b"first")])
    (d,) = await fetch(broker, consumer="c1")
    await broker.enqueue([item("dup", b"second")])
    assert await fetch(broker, consumer="c1") == []
    assert await fetch(other, consumer="c2") == []
    assert (await broker.counters(Q)).get("duplicate") == 1
    await broker.settle([ack(d)])
    assert await fetch(other, consumer="c2", block=LEASE * 3) == []
    assert (await broker.stats(Q)).ready == 0
    assert await broker.get_result(Q, "dup") == b"ok"


async def test_many_entries_sharing_one_id_are_removed_in_one_pass(broker: Broker) -> None:
    """2,000 entries with one job id used to sit in the pending list and be walked again
    every lease, clogging reclaim: now one fetch pass removes them all (counted) and the
    jobs behind them are delivered at once."""
    await broker.enqueue([item("same", b"junk-%d" % i) for i in range(2000)])
    await broker.enqueue([item("after-1"), item("after-2")])
    got: list[Delivery] = []
    with anyio.fail_after(30):
        while not {"after-1", "after-2"} <= {d.job_id for d in got}:
            # a long lease: on a loaded machine the loop may outlast LEASE, and the
            # unsettled "same" would be reclaimed and counted twice
            got += await fetch(broker, 10, block=0.0, lease=30)
    assert [d.job_id for d in got].count("same") == 1
    assert (await broker.counters(Q)).get("duplicate") == 1999
    assert (await broker.stats(Q)).ready == 0


async def test_reclaim_of_a_dead_consumer_is_not_clogged_by_junk(
    broker: Broker, other: Broker
) -> None:
    """Issue 10, item 3: 2,000 junk entries sharing one job id used to sit in the pending
    list and be walked a few per fetch, so a killed worker's jobs waited many leases.
    After one lease they are delivered again within a few fetch calls."""
    await broker.enqueue([item("junk", b"j%d" % i) for i in range(2000)])
    await broker.enqueue([item(f"real-{i}") for i in range(4)])
    read: list[Delivery] = []
    with anyio.fail_after(60):  # the worker that will be killed reads everything
        while not {f"real-{i}" for i in range(4)} <= {d.job_id for d in read}:
            read += await fetch(broker, 100, consumer="killed", block=0.1)
    await anyio.sleep(LEASE + 0.1)  # it died: no extend, no settle
    again: list[Delivery] = []
    for _ in range(3):
        again += await fetch(other, 10, consumer="c2", block=0.5)
    assert {f"real-{i}" for i in range(4)} <= {d.job_id for d in again}
    assert all(d.redelivered for d in again)


async def test_enqueue_unique_refuses_an_existing_id(broker: Broker) -> None:
    assert await broker.enqueue_unique(item("u1", b"a"), ttl=60)
    assert await broker.enqueue_unique(item("u1", b"a"), ttl=60)  # the same write again
    assert not await broker.enqueue_unique(item("u1", b"b"), ttl=60)  # queued
    (d,) = await fetch(broker)
    assert not await broker.enqueue_unique(item("u1", b"c"), ttl=60)  # running
    await broker.settle([ack(d)])
    assert not await broker.enqueue_unique(item("u1", b"d"), ttl=60)  # finished
    assert await fetch(broker) == []
    # delayed counts as existing too
    assert await broker.enqueue_unique(item("u2", at=time.time() + 60), ttl=120)
    assert not await broker.enqueue_unique(item("u2", b"other"), ttl=120)
    assert (await broker.stats(Q)).delayed == 1


async def test_enqueue_unique_is_atomic_under_concurrency(broker: Broker, other: Broker) -> None:
    results: list[bool] = []

    async def one(b: Broker, n: int) -> None:
        results.append(await b.enqueue_unique(item("race", b"%d" % n), ttl=60))

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, broker if n % 2 else other, n)
    assert results.count(True) == 1
    assert len(await fetch(broker)) == 1


async def test_enqueue_unique_sees_retries_in_backoff_and_dead_letters(broker: Broker) -> None:
    """A retry waiting out its backoff and a dead-lettered job (remembered as finished)
    still hold their id: a unique job is not written again behind them."""
    assert await broker.enqueue_unique(item("u3"), ttl=60)
    (d,) = await fetch(broker)
    await broker.settle([Retry(d, not_before=time.time() + 0.3)])
    assert not await broker.enqueue_unique(item("u3", b"again"), ttl=60)  # in backoff
    (retried,) = await fetch_until(broker, 1)
    assert retried.attempt == 2
    await broker.settle(
        [
            Bury(
                retried,
                "failed",
                "boom",
                result=b"x",
                result_ttl=60,
                remember_until=time.time() + 60,
            )
        ]
    )
    assert not await broker.enqueue_unique(item("u3", b"again"), ttl=60)  # dead, remembered
    assert await fetch(broker) == []


async def test_enqueue_unique_elects_one_tick_among_racing_schedulers(
    broker: Broker, other: Broker
) -> None:
    """The periodic-job pattern: several scheduler replicas race to enqueue the same
    ticks, each under a job id derived from (schedule, tick); every tick is written
    exactly once, whoever wins it."""
    ticks = [f"every-minute:{minute}" for minute in range(30)]
    won: Counter[str] = Counter()

    async def scheduler(b: Broker, salt: bytes) -> None:
        for tick in ticks:
            if await b.enqueue_unique(item(tick, salt + tick.encode()), ttl=60):
                won[tick] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler, broker, b"a")
        tg.start_soon(scheduler, other, b"b")
        tg.start_soon(scheduler, broker, b"c")
    assert won == Counter(ticks)
    got = await fetch_until(broker, len(ticks))
    assert sorted(d.job_id for d in got) == sorted(ticks)
    assert await fetch(broker) == []


async def test_is_running_follows_the_claim(broker: Broker) -> None:
    await broker.enqueue([item("r")])
    assert not await broker.is_running(Q, "r")
    (d,) = await fetch(broker)
    assert await broker.is_running(Q, "r")
    await broker.settle([ack(d)])
    assert not await broker.is_running(Q, "r")


# -- settle ------------------------------------------------------------------------------


async def test_ack_stores_result_and_remembers_id(broker: Broker) -> None:
    await broker.enqueue([item("done")])
    (d,) = await fetch(broker)
    await broker.settle([ack(d, b"\x00sealed-result\xff")])
    assert await broker.get_result(Q, "done") == b"\x00sealed-result\xff"
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (0, 0, 0, 0)
    assert await fetch(broker) == []
    await broker.enqueue([item("done", b"copy")])  # a replay of the same id
    (replay,) = await fetch(broker)
    assert replay.completed


async def test_ack_without_result(broker: Broker) -> None:
    await broker.enqueue([item("nores")])
    (d,) = await fetch(broker)
    await broker.settle([ack(d, None)])
    assert await broker.get_result(Q, "nores") is None
    await broker.enqueue([item("nores", b"copy")])
    (replay,) = await fetch(broker)
    assert replay.completed


async def test_retry_increments_attempt_and_delays(broker: Broker) -> None:
    await broker.enqueue([item("flaky", b"same")])
    (d,) = await fetch(broker)
    await broker.settle([Retry(d, not_before=time.time() + 0.8)])
    assert not await broker.is_running(Q, "flaky")
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running) == (0, 1, 0)
    assert await fetch(broker) == []
    (again,) = await fetch_until(broker, 1)
    assert (again.job_id, again.attempt, again.envelope) == ("flaky", 2, b"same")
    assert not again.completed
    await broker.settle([Retry(again, not_before=time.time())])
    (third,) = await fetch_until(broker, 1)
    assert third.attempt == 3


async def test_release_keeps_attempt(broker: Broker) -> None:
    await broker.enqueue([item("handed-back")])
    (d,) = await fetch(broker)
    await broker.settle([Release(d, not_before=time.time() + 0.5)])
    assert await fetch(broker) == []
    (again,) = await fetch_until(broker, 1)
    assert again.attempt == 1
    assert again.job_id == "handed-back"


async def test_bury_dead_letters_and_never_delivers_again(broker: Broker) -> None:
    await broker.enqueue([item("bad", b"sealed")])
    (d,) = await fetch(broker)
    before = time.time()
    await broker.settle(
        [
            Bury(
                d,
                reason="rejected:bad_signature",
                detail="signature check failed",
                result=b"outcome",
                result_ttl=60.0,
                remember_until=time.time() + 3600,
            )
        ]
    )
    (letter,) = await broker.dead_letters(Q)
    assert (letter.queue, letter.job_id, letter.reason, letter.detail, letter.attempt) == (
        Q,
        "bad",
        "rejected:bad_signature",
        "signature check failed",
        1,
    )
    assert before - 1 <= letter.at <= time.time() + 1
    assert letter.tag
    assert await broker.get_result(Q, "bad") == b"outcome"
    assert not await broker.is_running(Q, "bad")
    await anyio.sleep(LEASE + 0.1)
    assert await fetch(broker, block=0.3) == []
    stats = await broker.stats(Q)
    assert (stats.ready, stats.running, stats.dead) == (0, 0, 1)
    await broker.enqueue([item("bad")])
    (replay,) = await fetch(broker)
    assert replay.completed


async def test_bury_without_memory_or_result(broker: Broker) -> None:
    await broker.enqueue([item("forged")])
    (d,) = await fetch(broker)
    await broker.settle(
        [Bury(d, "rejected:malformed", "bad", result=None, result_ttl=60, remember_until=None)]
    )
    assert await broker.get_result(Q, "forged") is None
    await broker.enqueue([item("forged", b"copy")])
    (again,) = await fetch(broker)
    assert not again.completed


def _twin(broker: Broker, suffix: str, **options: Any) -> Broker:
    """A broker of the same kind and store with other options (new namespace)."""
    # Every broker class takes (url, namespace=, **options); the protocol does not say so.
    cls: Any = type(broker)
    made: Broker = cls(broker.url, namespace=broker.namespace + suffix, **options)
    return made


async def test_outcomes_are_write_once(broker: Broker) -> None:
    """The first stored outcome of a job id is final: a later Ack or Bury (a copy of the
    job re-inserted after its expiry, a stale settle) never replaces it."""
    await broker.enqueue([item("once"), item("once-late")])
    first, copy = await fetch(broker)
    await broker.settle([ack(first, b"SUCCEEDED")])
    await broker.settle(
        [Bury(copy, "expired", "expired", result=b"EXPIRED", result_ttl=60, remember_until=0.0)]
    )
    await broker.enqueue([item("once")])
    (again,) = await fetch(broker)
    assert again.completed
    await broker.settle([ack(again, b"SECOND")])
    assert await broker.get_result(Q, "once") == b"SUCCEEDED"


async def test_no_outcome_for_a_finished_id_whose_result_expired(broker: Broker) -> None:
    await broker.enqueue([item("gone")])
    (d,) = await fetch(broker)
    await broker.settle([Ack(d, result=b"first", result_ttl=0.2, remember_until=time.time() + 60)])
    await anyio.sleep(0.4)
    assert await broker.get_result(Q, "gone") is None
    await broker.enqueue([item("gone")])
    (again,) = await fetch(broker)
    assert again.completed
    await broker.settle([ack(again, b"second")])
    assert await broker.get_result(Q, "gone") is None


async def test_finished_memory_outlives_the_result(broker: Broker) -> None:
    """``remember_until`` in the past (the envelope expired) must not leave a stored
    result unguarded: the id is remembered at least as long as the result lives."""
    await broker.enqueue([item("guarded")])
    (d,) = await fetch(broker)
    await broker.settle([Ack(d, result=b"r", result_ttl=60, remember_until=time.time() - 10)])
    await broker.enqueue([item("guarded")])
    (again,) = await fetch(broker)
    assert again.completed


async def test_drop_counts_without_storing(broker: Broker) -> None:
    await broker.enqueue([item("copy", b"x" * 1000)])
    (d,) = await fetch(broker)
    await broker.settle([Drop(d, reason="replayed")])
    await broker.settle([Drop(d, reason="replayed")])  # a retried batch counts once
    assert (await broker.counters(Q)) == {"replayed": 1}
    assert await broker.dead_letters(Q) == []
    assert await broker.get_result(Q, "copy") is None
    assert (await broker.stats(Q)).ready == 0
    await broker.enqueue([item("copy")])
    (again,) = await fetch(broker)
    assert not again.completed  # no memory written either


async def test_dead_letter_stubs_keep_no_envelope(broker: Broker) -> None:
    await broker.enqueue([item("junk", b"j" * 5000), item("kept", b"k" * 50)])
    junk, kept = await fetch(broker)
    await broker.settle(
        [
            Bury(junk, "rejected:unauthenticated", "x", None, 60, None, keep_envelope=False),
            Bury(kept, "failed", "y", None, 60, None),
        ]
    )
    letters = {x.job_id: x for x in await broker.dead_letters(Q)}
    assert (letters["junk"].stub, letters["junk"].size) == (True, 5000)
    assert (letters["kept"].stub, letters["kept"].size) == (False, 50)


async def test_oversized_entries_become_stubs_at_fetch(broker: Broker) -> None:
    await broker.enqueue([item("big", b"B" * 10_000), item("small", b"s" * 10)])
    got = await broker.fetch([Q], 10, consumer="c1", lease=LEASE, block=0.0, max_size=1000)
    assert [d.job_id for d in got] == ["small"]
    (letter,) = await broker.dead_letters(Q)
    assert (letter.job_id, letter.reason, letter.size, letter.stub) == (
        "big",
        "rejected:unauthenticated",
        10_000,
        True,
    )
    assert not await broker.is_running(Q, "big")


async def test_dead_letters_are_capped_by_count_and_age(broker: Broker) -> None:
    capped = _twin(broker, "cap", dead_letter_max=5, dead_letter_age=1.0)
    await capped.connect()
    try:
        await capped.enqueue([item(f"c{i}") for i in range(12)])
        for d in await fetch(capped, 12):
            await capped.settle([Bury(d, "failed", d.job_id, None, 60, None)])
        letters = await capped.dead_letters(Q, limit=100)
        assert [x.job_id for x in letters] == ["c11", "c10", "c9", "c8", "c7"]
        await anyio.sleep(1.2)
        await capped.enqueue([item("late")])
        (d,) = await fetch(capped)
        await capped.settle([Bury(d, "failed", "late", None, 60, None)])
        assert [x.job_id for x in await capped.dead_letters(Q)] == ["late"]
    finally:
        await capped.close()


async def test_dead_letters_newest_first_and_purge(broker: Broker) -> None:
    await broker.enqueue([item(f"d{i}") for i in range(3)])
    for _ in range(3):
        (d,) = await fetch(broker, 1)
        await broker.settle([Bury(d, "failed", d.job_id, None, 60, None)])
        await anyio.sleep(0.01)
    letters = await broker.dead_letters(Q)
    assert [x.detail for x in letters] == ["d2", "d1", "d0"]
    assert [x.job_id for x in await broker.dead_letters(Q, limit=2)] == ["d2", "d1"]
    assert await broker.purge_dead(Q) == 3
    assert await broker.dead_letters(Q) == []
    assert (await broker.stats(Q)).dead == 0
    assert await broker.purge_dead(Q) == 0


async def test_queued_lists_ready_delayed_and_leased_entries_without_touching_them(
    broker: Broker,
) -> None:
    now = time.time()
    await broker.enqueue([item("q0", b"env-0"), item("q1", b"env-1")])
    await broker.enqueue([item("q2", b"env-2", at=now + 3600)])  # delayed
    (leased,) = await fetch(broker, 1)
    entries = await broker.queued(Q)
    assert sorted((e.job_id, e.envelope) for e in entries) == [
        ("q0", b"env-0"),
        ("q1", b"env-1"),
        ("q2", b"env-2"),
    ]
    assert all(e.queue == Q for e in entries)
    assert len(await broker.queued(Q, limit=2)) == 2
    assert await broker.queued(Q, limit=0) == []
    stats = await broker.stats(Q)
    assert (stats.ready + stats.running, stats.delayed) == (2, 1)  # nothing moved
    (other,) = await fetch(broker, 1)
    assert {leased.job_id, other.job_id} == {"q0", "q1"}


async def test_settle_batch(broker: Broker) -> None:
    await broker.enqueue([item(f"b{i}") for i in range(4)])
    ds = sorted(await fetch(broker, 4), key=lambda d: d.job_id)
    now = time.time()
    await broker.settle(
        [
            ack(ds[0]),
            Retry(ds[1], now + 30),
            Release(ds[2], now + 30),
            Bury(ds[3], "failed", "x", None, 60, now + 60),
        ]
    )
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (0, 2, 0, 1)
    assert await broker.get_result(Q, "b0") == b"ok"


async def test_settle_batch_mixes_every_kind_and_fences_each_on_its_own(
    broker: Broker, other: Broker
) -> None:
    # One batch: acks (with and without a result), a retry, a release, a dead letter, a
    # drop, and two settlements whose leases ran out (one taken over by another worker,
    # one not). Each is applied or refused on its own; the refused ones change nothing.
    await broker.enqueue([item("stale-taken"), item("stale-lapsed")])
    stale = {d.job_id: d for d in await fetch(broker, consumer="slow")}
    names = ["ack", "ack-none", "retry", "release", "bury", "drop"]
    await broker.enqueue([item(name) for name in names])
    live = {d.job_id: d for d in await fetch(broker, 10, consumer="c1", lease=30)}
    assert sorted(live) == sorted(names)
    await anyio.sleep(LEASE + 0.2)  # the two short leases run out, the others hold
    (taken,) = await fetch_until(other, 1, consumer="c2")  # reclaims one lapsed lease
    assert taken.job_id in stale and taken.redelivered
    assert await other.extend([taken], consumer="c2", lease=30) == set()
    lapsed = next(d for d in stale.values() if d.job_id != taken.job_id)
    now = time.time()
    await broker.settle(
        [
            ack(live["ack"], b"ok"),
            ack(stale[taken.job_id], b"late"),
            Retry(live["retry"], now + 30),
            ack(live["ack-none"], None),
            Release(live["release"], now + 30),
            Bury(live["bury"], "failed", "boom", b"dead-result", 60, now + 60),
            Retry(lapsed, now),
            Drop(live["drop"], reason="replayed"),
        ]
    )
    assert await broker.get_result(Q, "ack") == b"ok"
    assert await broker.get_result(Q, "ack-none") is None
    assert await broker.get_result(Q, "bury") == b"dead-result"
    assert await broker.get_result(Q, taken.job_id) is None  # the late ack was refused
    assert [(x.job_id, x.reason, x.attempt) for x in await broker.dead_letters(Q)] == [
        ("bury", "failed", 1)
    ]
    assert await broker.counters(Q) == {"replayed": 1}
    stats = await broker.stats(Q)
    # retry and release wait; the taken-over job runs on c2; the lapsed one is pending.
    assert (stats.delayed, stats.dead) == (2, 1)
    # The refused retry did not put the lapsed job back as attempt 2: it is delivered
    # again, as attempt 1, to whoever reclaims it.
    (again,) = await fetch_until(other, 1, consumer="c2")
    assert (again.job_id, again.attempt, again.redelivered) == (lapsed.job_id, 1, True)
    await other.settle([ack(taken, b"fresh"), ack(again, b"fresh")])
    assert await broker.get_result(Q, taken.job_id) == b"fresh"
    # Finished ids are remembered: a copy of each is delivered marked completed.
    await broker.enqueue([item("ack", b"copy"), item("ack-none", b"copy")])
    copies = await fetch(broker, 5)
    assert sorted(d.job_id for d in copies) == ["ack", "ack-none"]
    assert all(d.completed for d in copies)


async def test_two_settlements_of_one_delivery_in_a_batch_settle_it_once(
    broker: Broker,
) -> None:
    # The first settlement releases the claim; the second finds it gone, as it would
    # if it came in a batch of its own.
    await broker.enqueue([item("twice"), item("other")])
    ds = {d.job_id: d for d in await fetch(broker, 5)}
    now = time.time()
    await broker.settle(
        [ack(ds["twice"], b"first"), Retry(ds["twice"], now), ack(ds["other"], b"2nd")]
    )
    assert await broker.get_result(Q, "twice") == b"first"
    assert await broker.get_result(Q, "other") == b"2nd"
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running) == (0, 0, 0)
    assert await fetch(broker) == []


async def test_large_batches_fetch_and_settle_whole(broker: Broker) -> None:
    # More deliveries than one Redis command slice (1,000) in one fetch and one settle.
    n = 1200
    await broker.enqueue([item(f"j{i}") for i in range(n)])
    await broker.cancel(Q, "j7", ttl=60)
    got = await fetch_until(broker, n, lease=30)
    assert len({d.job_id for d in got}) == n
    assert [d.job_id for d in got if d.cancel_requested] == ["j7"]
    await broker.settle([ack(d, d.job_id.encode()) for d in got])
    stats = await broker.stats(Q)
    assert (stats.ready, stats.running, stats.delayed) == (0, 0, 0)
    assert await broker.get_result(Q, "j1199") == b"j1199"
    await broker.enqueue([item("j0", b"copy"), item("j1199", b"copy")])
    assert all(d.completed for d in await fetch(broker, 5))


async def test_settle_batch_over_queues(broker: Broker) -> None:
    # One settle call may hold deliveries of several queues (on a cluster: several
    # slots): each queue's part is settled with its own keys.
    await broker.enqueue([item("q1", queue=Q), item("q2", queue="other-q")])
    got = await fetch(broker, 5, queues=(Q, "other-q"))
    assert sorted(d.job_id for d in got) == ["q1", "q2"]
    await broker.settle([ack(d, d.job_id.encode()) for d in got])
    assert await broker.get_result(Q, "q1") == b"q1"
    assert await broker.get_result("other-q", "q2") == b"q2"
    assert (await broker.stats("other-q")).running == 0


async def test_late_settle_of_a_lost_lease_changes_nothing(broker: Broker, other: Broker) -> None:
    await broker.enqueue([item("lost")])
    (stale,) = await fetch(broker, consumer="slow")
    await anyio.sleep(LEASE + 0.2)
    (fresh,) = await fetch_until(other, 1, consumer="c2")
    await other.settle([ack(fresh, b"fresh")])
    # The slow worker wakes up and settles its stale delivery.
    await broker.settle([Retry(stale, time.time())])
    assert await fetch(other, consumer="c2", block=0.3) == []
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running) == (0, 0, 0)
    assert await broker.get_result(Q, "lost") == b"fresh"


async def test_extend_reports_lost_leases_and_never_revives_them(
    broker: Broker, other: Broker
) -> None:
    await broker.enqueue([item("keep"), item("lapse")])
    ds = {d.job_id: d for d in await fetch(broker, consumer="c1")}
    assert await broker.extend(list(ds.values()), consumer="c1", lease=LEASE) == set()
    await anyio.sleep(LEASE + 0.2)
    # Both leases ran out on the broker's clock; nobody took either job yet. A lapsed
    # lease is never taken back: reviving it could let two copies run.
    lost = await broker.extend(list(ds.values()), consumer="c1", lease=LEASE)
    assert lost == {ds["keep"].tag, ds["lapse"].tag}
    again = await fetch_until(other, 2, consumer="c2")
    assert sorted(d.job_id for d in again) == ["keep", "lapse"]
    assert all(d.redelivered for d in again)
    # The new holder's tags are live, the old ones stay lost.
    assert await other.extend(again, consumer="c2", lease=LEASE) == set()
    assert await broker.extend([ds["keep"]], consumer="c1", lease=LEASE) == {ds["keep"].tag}


async def test_settle_of_a_lapsed_lease_is_fenced(broker: Broker, other: Broker) -> None:
    # The lease ran out and nobody took the job over yet: the late ack, retry or dead
    # letter of the old delivery changes nothing; the job is delivered again.
    for verdict in ("ack", "retry", "bury"):
        await broker.enqueue([item(verdict)])
        (stale,) = await fetch(broker, consumer="slow")
        await anyio.sleep(LEASE + 0.2)
        if verdict == "ack":
            await broker.settle([ack(stale, b"late")])
        elif verdict == "retry":
            await broker.settle([Retry(stale, time.time())])
        else:
            await broker.settle([Bury(stale, "failed", "x", b"late", 60, time.time() + 60)])
        assert await broker.get_result(Q, verdict) is None
        (fresh,) = await fetch_until(other, 1, consumer="c2")
        assert fresh.job_id == verdict and fresh.redelivered and fresh.attempt == 1
        await other.settle([ack(fresh, b"fresh")])
        assert await other.get_result(Q, verdict) == b"fresh"
    assert await broker.dead_letters(Q) == []


async def test_broker_clock(broker: Broker) -> None:
    # Both test brokers run on this host: their clock is this host's.
    assert abs(await broker.time() - time.time()) < 5


# -- results -----------------------------------------------------------------------------


async def test_wait_result_blocks_until_settled(broker: Broker, other: Broker) -> None:
    await broker.enqueue([item("w")])
    (d,) = await fetch(broker)
    got: list[bytes | None] = []
    start = time.monotonic()

    async def waiter() -> None:
        got.append(await other.wait_result(Q, "w", timeout=5.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        tg.start_soon(waiter)
        await anyio.sleep(0.3)
        assert got == []
        await broker.settle([ack(d, b"answer")])
    assert got == [b"answer", b"answer"]
    assert time.monotonic() - start < 2.0
    # Present results come back at once.
    start = time.monotonic()
    assert await broker.wait_result(Q, "w", timeout=5.0) == b"answer"
    assert time.monotonic() - start < 0.5


async def test_wait_result_times_out_with_none(broker: Broker) -> None:
    start = time.monotonic()
    assert await broker.wait_result(Q, "never", timeout=0.4) is None
    assert 0.3 <= time.monotonic() - start < 1.5
    assert await broker.get_result(Q, "never") is None


async def test_result_expires(broker: Broker) -> None:
    await broker.enqueue([item("short")])
    (d,) = await fetch(broker)
    await broker.settle([Ack(d, b"r", result_ttl=0.3, remember_until=time.time() + 60)])
    assert await broker.get_result(Q, "short") == b"r"
    await anyio.sleep(0.5)
    assert await broker.get_result(Q, "short") is None


# -- cancellation ------------------------------------------------------------------------


async def test_cancel_queued_job(broker: Broker) -> None:
    await broker.enqueue([item("c")])
    assert await broker.cancel(Q, "c", ttl=60) is CancelState.REQUESTED
    (d,) = await fetch(broker)
    assert d.cancel_requested


async def test_cancel_running_job(broker: Broker) -> None:
    await broker.enqueue([item("run"), item("other")])
    ds = await fetch(broker)
    assert not any(d.cancel_requested for d in ds)
    assert await broker.cancelled(Q, ["run", "other"]) == set()
    assert await broker.cancel(Q, "run", ttl=60) is CancelState.REQUESTED
    assert await broker.cancelled(Q, ["run", "other", "unknown"]) == {"run"}
    assert await broker.cancelled(Q, []) == set()


async def test_cancel_after_finish(broker: Broker) -> None:
    await broker.enqueue([item("fin"), item("fin2")])
    ds = {d.job_id: d for d in await fetch(broker)}
    await broker.settle([ack(ds["fin"]), ack(ds["fin2"], None)])
    assert await broker.cancel(Q, "fin", ttl=60) is CancelState.FINISHED
    assert await broker.cancel(Q, "fin2", ttl=60) is CancelState.FINISHED
    assert await broker.cancelled(Q, ["fin", "fin2"]) == set()


async def test_cancel_marker_expires(broker: Broker) -> None:
    assert await broker.cancel(Q, "soon", ttl=0.3) is CancelState.REQUESTED
    assert await broker.cancelled(Q, ["soon"]) == {"soon"}
    await anyio.sleep(0.5)
    assert await broker.cancelled(Q, ["soon"]) == set()


# -- stats and misc ----------------------------------------------------------------------


async def test_stats_counts(broker: Broker) -> None:
    assert await broker.stats(Q) == QueueStats(Q, 0, 0, 0, 0)
    now = time.time()
    await broker.enqueue([item(f"s{i}") for i in range(4)] + [item("later", at=now + 60)])
    stats = await broker.stats(Q)
    assert (stats.queue, stats.ready, stats.delayed, stats.running, stats.dead) == (
        Q,
        4,
        1,
        0,
        0,
    )
    ds = await fetch(broker, 2)
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (2, 1, 2, 0)
    await broker.settle([Bury(ds[0], "failed", "", None, 60, None), ack(ds[1])])
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (2, 1, 0, 1)


async def test_namespaces_are_isolated(
    broker: Broker, make_broker: Callable[[str], Broker]
) -> None:
    await broker.enqueue([item("mine")])
    foreign = make_broker("-other")
    await foreign.connect()
    try:
        assert await fetch(foreign) == []
        assert (await foreign.stats(Q)).ready == 0
        await foreign.enqueue([item("theirs")])
    finally:
        await foreign.close()
    assert [d.job_id for d in await fetch(broker)] == ["mine"]


async def test_broker_properties(broker: Broker) -> None:
    assert isinstance(broker, Broker)
    assert broker.namespace
    assert isinstance(broker.url, str) and broker.url
    clone = broker.clone()
    assert clone is not broker
    assert clone.namespace == broker.namespace and clone.url == broker.url
    await broker.connect()  # idempotent


async def test_concurrent_promoters_never_double_deliver(broker: Broker) -> None:
    n, workers = 200, 4
    due = time.time() + 0.3
    await broker.enqueue([item(f"p{i:03d}", at=due) for i in range(n)])
    seen: Counter[str] = Counter()
    clones = [broker.clone() for _ in range(workers)]
    for c in clones:
        await c.connect()

    async def work(b: Broker, name: str) -> None:
        while sum(seen.values()) < n:
            got = await b.fetch([Q], 25, consumer=name, lease=10.0, block=0.2)
            for d in got:
                seen[d.job_id] += 1
            if got:
                await b.settle([ack(d) for d in got])

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i, c in enumerate(clones):
                    tg.start_soon(work, c, f"w{i}")
    finally:
        for c in clones:
            await c.close()
    assert len(seen) == n
    assert set(seen.values()) == {1}
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running) == (0, 0, 0)


# -- schedules (TickStore) ----------------------------------------------------------------


async def test_claim_tick_moves_the_mark_and_writes_the_job_once(broker: Broker) -> None:
    from vaultq.brokers.base import TickStore

    assert isinstance(broker, TickStore)
    assert await broker.schedule_marks(Q) == []
    assert await broker.mark_schedule(Q, "s", 100, only_if_absent=True) == 100
    assert await broker.mark_schedule(Q, "s", 50, only_if_absent=True) == 100  # set already
    assert await broker.claim_tick(item("tick:s:110"), schedule="s", tick=110, ttl=60)
    # the same tick again, or an older one: the mark is there, nothing is written
    assert not await broker.claim_tick(item("tick:s:110", b"x"), schedule="s", tick=110, ttl=60)
    assert not await broker.claim_tick(item("tick:s:105"), schedule="s", tick=105, ttl=60)
    (mark,) = await broker.schedule_marks(Q)
    assert (mark.name, mark.mark, mark.fired) == ("s", 110, 110)
    # the mark never moves back; passing over ticks moves it without a job
    assert await broker.mark_schedule(Q, "s", 90) == 110
    assert await broker.mark_schedule(Q, "s", 130) == 130
    assert not await broker.claim_tick(item("tick:s:120"), schedule="s", tick=120, ttl=60)
    assert [d.job_id for d in await fetch(broker)] == ["tick:s:110"]


async def test_claim_tick_writes_no_second_job_for_an_existing_id(broker: Broker) -> None:
    from vaultq.brokers.base import TickStore

    # A schedule whose mark was lost or renamed cannot enqueue a tick whose job is queued,
    # running or remembered as finished: the id guards it too. The mark still moves.
    assert isinstance(broker, TickStore)
    assert await broker.enqueue_unique(item("tick:s:200"), ttl=60)
    assert not await broker.claim_tick(item("tick:s:200"), schedule="s", tick=200, ttl=60)
    (d,) = await fetch(broker)
    await broker.settle([ack(d)])
    assert not await broker.claim_tick(item("tick:s:200"), schedule="s2", tick=200, ttl=60)
    marks = {m.name: (m.mark, m.fired) for m in await broker.schedule_marks(Q)}
    assert marks == {"s": (200, None), "s2": (200, None)}
    assert await fetch(broker) == []


async def test_claim_tick_is_atomic_under_concurrency(broker: Broker, other: Broker) -> None:
    written: list[str] = []

    async def one(b: Broker, tick: int, n: int) -> None:
        if await b.claim_tick(  # type: ignore[attr-defined]
            item(f"tick:s:{tick}", b"%d" % n), schedule="s", tick=tick, ttl=60
        ):
            written.append(f"tick:s:{tick}")

    async with anyio.create_task_group() as tg:
        for tick in (1000, 1001, 1002):
            for n in range(10):
                tg.start_soon(one, broker if n % 2 else other, tick, n)
    # Each tick at most once; a racer that came late for an older tick lost it to the mark.
    assert len(written) == len(set(written)) >= 1
    assert sorted(d.job_id for d in await fetch(broker)) == sorted(written)


# -- unique keys (UniqueKeys) ------------------------------------------------------------


async def test_enqueue_keyed_holds_the_key_while_the_job_lives(broker: Broker) -> None:
    from vaultq.brokers.base import UniqueKeys

    assert isinstance(broker, UniqueKeys)
    assert await broker.enqueue_keyed(item("k1", b"a"), key="K", key_ttl=60, ttl=60) == "k1"
    # the same write again (a lost reply) reports its own id; another job finds the holder
    assert await broker.enqueue_keyed(item("k1", b"a"), key="K", key_ttl=60, ttl=60) == "k1"
    assert await broker.enqueue_keyed(item("k2"), key="K", key_ttl=60, ttl=60) == "k1"
    (d,) = await fetch(broker)
    assert await broker.enqueue_keyed(item("k3"), key="K", key_ttl=60, ttl=60) == "k1"
    await broker.settle([ack(d)])  # settled: the key is free
    assert await broker.enqueue_keyed(item("k4"), key="K", key_ttl=60, ttl=60) == "k4"
    # an id that exists (here: finished) is refused whatever the key
    assert await broker.enqueue_keyed(item("k1", b"b"), key="other", key_ttl=60, ttl=60) == ""
    assert [x.job_id for x in await fetch(broker)] == ["k4"]


async def test_enqueue_keyed_lock_lapses_after_key_ttl(broker: Broker) -> None:
    from vaultq.brokers.base import UniqueKeys

    assert isinstance(broker, UniqueKeys)
    assert await broker.enqueue_keyed(item("t1"), key="K", key_ttl=0.2, ttl=60) == "t1"
    await anyio.sleep(0.4)
    assert await broker.enqueue_keyed(item("t2"), key="K", key_ttl=60, ttl=60) == "t2"
    assert await broker.enqueue_keyed(item("t3"), key="K", key_ttl=60, ttl=60) == "t2"


async def test_enqueue_keyed_is_atomic_under_concurrency(broker: Broker, other: Broker) -> None:
    holders: list[str] = []

    async def one(b: Broker, n: int) -> None:
        holders.append(
            await b.enqueue_keyed(  # type: ignore[attr-defined]
                item(f"race{n}", b"%d" % n), key="K", key_ttl=60, ttl=60
            )
        )

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, broker if n % 2 else other, n)
    assert len(set(holders)) == 1
    assert [d.job_id for d in await fetch(broker)] == [holders[0]]


# -- tombstones (Tombstones) ------------------------------------------------------------


async def test_tombstone_finishes_an_unwritten_id_and_refuses_an_existing_one(
    broker: Broker,
) -> None:
    from vaultq.brokers.base import Tombstones

    assert isinstance(broker, Tombstones)
    later = time.time() + 3600

    async def tomb(job_id: str, data: bytes = b"cancelled") -> bool:
        return await broker.tombstone(Q, job_id, result=data, result_ttl=60, remember_until=later)

    assert await tomb("t1")
    assert await broker.get_result(Q, "t1") == b"cancelled"
    assert not await broker.enqueue_unique(item("t1"), ttl=60)  # the tombstone holds the id
    assert not await tomb("t1", b"second")  # write-once
    assert await broker.get_result(Q, "t1") == b"cancelled"
    # An id that exists is left alone: queued, delayed, running, finished.
    assert await broker.enqueue_unique(item("t2"), ttl=60)
    assert not await tomb("t2")
    assert await broker.enqueue_unique(item("t3", at=time.time() + 60), ttl=120)
    assert not await tomb("t3")
    (d,) = await fetch(broker)
    assert d.job_id == "t2"
    assert not await tomb("t2")
    await broker.settle([ack(d, b"done")])
    assert not await tomb("t2")
    assert await broker.get_result(Q, "t2") == b"done"
    assert await broker.wait_result(Q, "t1", 0.5) == b"cancelled"


async def test_tombstone_and_enqueue_unique_racing_for_one_id_have_one_winner(
    broker: Broker, other: Broker
) -> None:
    for n in range(10):
        job_id = f"race{n}"
        won: list[str] = []

        async def write(b: Broker) -> None:
            if await b.enqueue_unique(item(job_id), ttl=60):
                won.append("job")

        async def tomb(b: Broker) -> None:
            if await b.tombstone(  # type: ignore[attr-defined]
                Q, job_id, result=b"x", result_ttl=60, remember_until=time.time() + 60
            ):
                won.append("tombstone")

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, broker if n % 2 else other)
            tg.start_soon(tomb, other if n % 2 else broker)
        assert len(won) == 1, won
        queued = [d.job_id for d in await fetch(broker)]
        assert queued == ([job_id] if won == ["job"] else [])
        if queued:
            assert await broker.get_result(Q, job_id) is None


# -- limits (Limits) ---------------------------------------------------------------------


async def test_check_limits_counts_slots_by_live_claims(broker: Broker) -> None:
    from vaultq.brokers.base import Limits

    assert isinstance(broker, Limits)
    await broker.enqueue([item("c1"), item("c2"), item("c3")])
    d1, _d2, _d3 = await fetch(broker)  # each job id now has a live claim

    async def check(job_id: str) -> float:
        return await broker.check_limits(Q, job_id, concurrency=("K", 2), rate=None, keep=60)

    assert await check("c1") == 0
    assert await check("c2") == 0
    assert await check("c3") == -1  # both slots held
    assert await check("c1") == 0  # a holder keeps its slot
    await broker.settle([ack(d1)])  # settled: its claim, and so its slot, is gone
    assert await check("c3") == 0
    assert await check("c1") == -1


async def test_check_limits_rate_reserves_turns(broker: Broker) -> None:
    async def check(job_id: str) -> float:
        return await broker.check_limits(  # type: ignore[attr-defined]
            Q, job_id, concurrency=None, rate=("R", 0.2), keep=60
        )

    assert await check("r1") == 0
    w2 = await check("r2")
    w3 = await check("r3")
    assert 0.1 < w2 <= 0.2 and 0.3 < w3 <= 0.4
    assert 0 < await check("r2") <= w2  # coming back early: the same turn, not a new one
    assert 0.5 < await check("r4") <= 0.6
    await anyio.sleep(w2 + 0.05)
    assert await check("r2") == 0  # its turn came: it starts without taking another
    assert await check("r2") > 0.2  # a second start is a new turn


# -- chords (ChordStore) ------------------------------------------------------------------


async def test_chord_arrive_is_idempotent_per_member_and_says_when_all_arrived(
    broker: Broker, make_broker: Callable[[str], Broker]
) -> None:
    assert isinstance(broker, ChordStore)
    store = chord_store(broker)
    until = await broker.time() + 60

    async def arrive(member: int, result: bytes, chord: str = "wf1") -> bool:
        return await store.chord_arrive(Q, chord, member, result, total=3, until=until)

    assert await arrive(0, b"r0") is False
    assert await arrive(0, b"r0-again") is False  # a re-run changes nothing
    assert await arrive(2, b"r2") is False
    assert await arrive(1, b"r1") is True  # the last arrival completes it
    assert await arrive(1, b"r1-again") is True  # ...and a re-run of any member sees it
    assert await store.chord_results(Q, "wf1") == {0: b"r0", 1: b"r1", 2: b"r2"}
    # Another chord, another queue and another namespace are apart.
    assert await arrive(0, b"x", chord="wf2") is False
    assert await store.chord_results("elsewhere", "wf1") == {}
    second = make_broker("-other-ns")
    await second.connect()
    try:
        assert await chord_store(second).chord_results(Q, "wf1") == {}
    finally:
        await second.close()
    with pytest.raises(ValueError, match="out of range"):
        await arrive(3, b"r3")


async def test_chord_state_expires_with_the_workflow(broker: Broker) -> None:
    store = chord_store(broker)
    until = await broker.time() + 0.4
    assert await store.chord_arrive(Q, "wfx", 0, b"r0", total=2, until=until) is False
    assert await store.chord_results(Q, "wfx") == {0: b"r0"}
    await anyio.sleep(0.7)
    assert await store.chord_results(Q, "wfx") == {}


async def test_racing_last_members_complete_a_chord_exactly_once(
    broker: Broker, other: Broker
) -> None:
    """The last two members finish at the same moment on two connections (two workers):
    exactly one of them learns that the chord is complete, every time; and 40 members
    arriving at once elect exactly one completer too."""
    store, store2 = chord_store(broker), chord_store(other)
    until = await broker.time() + 60
    for round_ in range(15):
        chord = f"race{round_}"
        for member in range(3):
            await store.chord_arrive(Q, chord, member, b"r", total=5, until=until)
        seen: list[bool] = []

        async def last(b: ChordStore, member: int, chord: str = chord) -> None:
            seen.append(await b.chord_arrive(Q, chord, member, b"r", total=5, until=until))

        async with anyio.create_task_group() as tg:
            tg.start_soon(last, store, 3)
            tg.start_soon(last, store2, 4)
        assert sorted(seen) == [False, True], round_
    done: list[bool] = []

    async def arrive(b: ChordStore, i: int) -> None:
        done.append(await b.chord_arrive(Q, "crowd", i, b"r%d" % i, total=40, until=until))

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(arrive, store if i % 2 else store2, i)
    assert done.count(True) == 1 and len(done) == 40
    assert len(await store.chord_results(Q, "crowd")) == 40


# -- priorities (brokers declaring capabilities.priorities; vaultq/priority.py) ----------


def leveled(job_id: str, level: int, *, at: float | None = None) -> EnqueueItem:
    return EnqueueItem(
        queue=Q, job_id=job_id, envelope=b"env-" + job_id.encode(), not_before=at, priority=level
    )


async def test_every_builtin_kind_declares_priorities(broker: Broker) -> None:
    assert broker.capabilities.priorities


async def test_a_high_job_behind_a_thousand_low_ones_is_in_the_next_fetch(broker: Broker) -> None:
    await broker.enqueue([leveled(f"low{i}", -1) for i in range(1000)])
    await broker.enqueue([leveled("urgent", 1)])
    (first,) = await fetch(broker, 1)
    assert first.job_id == "urgent"
    assert first.envelope == b"env-urgent"
    (then,) = await fetch(broker, 1)
    assert then.job_id == "low0"  # FIFO within a level


async def test_levels_are_fetched_highest_first_fifo_within_each(broker: Broker) -> None:
    await broker.enqueue(
        [leveled("n1", 0), leveled("l1", -1), leveled("h1", 1), leveled("n2", 0), leveled("h2", 1)]
    )
    got = await fetch(broker, 10)
    assert [d.job_id for d in got] == ["h1", "h2", "n1", "n2", "l1"]
    await broker.settle([ack(d) for d in got])


async def test_lower_levels_progress_under_a_steady_high_load(broker: Broker) -> None:
    # The anti-starvation rule, observed through the broker: one-job fetches with the
    # high level never empty; the 10th delivering fetch boosts normal (empty here, so it
    # serves high), the 20th boosts low: the low job is exactly the 20th delivery.
    await broker.enqueue([leveled("low", -1)])
    await broker.enqueue([leveled(f"h{i}", 1) for i in range(25)])
    order: list[str] = []
    for _ in range(21):
        (d,) = await fetch(broker, 1)
        order.append(d.job_id)
        await broker.settle([ack(d)])
    assert order.index("low") == 19
    assert order[:19] == [f"h{i}" for i in range(19)]


async def test_a_job_keeps_its_level_through_retry_and_lease_reclaim(
    broker: Broker, other: Broker
) -> None:
    await broker.enqueue([leveled("h", 1)])
    (d,) = await fetch(broker, 1)
    await broker.enqueue([leveled(f"n{i}", 0) for i in range(3)])
    await broker.settle([Retry(d, not_before=time.time() - 1)])
    (again,) = await fetch(broker, 1)
    assert (again.job_id, again.attempt) == ("h", 2)
    # Its lease runs out unsettled: reclaimed by another consumer, still ahead of normal.
    await anyio.sleep(LEASE + 0.2)
    (reclaimed,) = await fetch(other, 1, consumer="c2")
    assert (reclaimed.job_id, reclaimed.redelivered) == ("h", True)
    await other.settle([ack(reclaimed)])
    # A delayed high job, once due, also goes first.
    await broker.enqueue([leveled("later", 1, at=time.time() + 0.3)])
    await anyio.sleep(0.5)
    (due,) = await fetch(broker, 1)
    assert due.job_id == "later"


async def test_operator_tools_see_every_level(broker: Broker) -> None:
    now = time.time()
    await broker.enqueue(
        [leveled("h", 1), leveled("n", 0), leveled("l", -1), leveled("hd", 1, at=now + 60)]
    )
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running) == (3, 1, 0)
    assert {e.job_id for e in await broker.queued(Q)} == {"h", "n", "l", "hd"}
    for job_id, state in (("h", "queued"), ("l", "queued"), ("hd", "delayed")):
        info = await broker.job_info(Q, job_id)
        assert (info.state, info.envelope) == (state, b"env-" + job_id.encode())
    info = await broker.job_info(Q, "l")
    assert await broker.cancel_queued(info, result=None, result_ttl=60, remember_until=now + 60)
    assert (await broker.job_info(Q, "l")).state == "absent"
    got = await fetch(broker, 10)
    assert [d.job_id for d in got] == ["h", "n"]
    stats = await broker.stats(Q)
    assert (stats.ready, stats.delayed, stats.running, stats.dead) == (0, 1, 2, 1)


async def test_a_dead_letter_goes_back_at_its_level(broker: Broker) -> None:
    await broker.enqueue([leveled("h", 1)])
    (d,) = await fetch(broker, 1)
    await broker.settle(
        [Bury(d, reason="failed", detail="boom", result=None, result_ttl=60, remember_until=None)]
    )
    (letter,) = await broker.dead_letters(Q)
    await broker.enqueue([leveled(f"n{i}", 0) for i in range(3)])
    assert await broker.retry_dead(Q, letter.tag) is not None
    (first,) = await fetch(broker, 1)
    assert (first.job_id, first.attempt) == ("h", 1)
