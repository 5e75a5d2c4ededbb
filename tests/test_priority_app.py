"""Priorities from the producer's side: ``enqueue(priority=...)``, ``enqueue_many``,
the sync calls, a task's default, and the errors (a bad value, a broker that does not
declare priorities). The jobs are read back from the broker in fetch order."""

from __future__ import annotations

import msgspec
import pytest

import vaultq
from vaultq import Priority
from vaultq.brokers.base import BrokerCapabilities
from vaultq.brokers.memory import MemoryBroker
from vaultq.errors import InvalidArgument

pytestmark = pytest.mark.anyio


class Ping(msgspec.Struct, frozen=True):
    n: int


class FifoOnlyBroker(MemoryBroker):
    """A broker that does not declare priorities (as a third-party broker written before
    them): the app must refuse a level it would ignore."""

    @property
    def capabilities(self) -> BrokerCapabilities:
        return BrokerCapabilities(shared=False, durable=False)


def make_app(broker: object) -> vaultq.App:
    return vaultq.App("shop", broker=broker, keyring=vaultq.Keyring.generate())  # type: ignore[arg-type]


async def fetch_order(app: vaultq.App, n: int) -> list[str]:
    broker = await app.broker()
    got = await broker.fetch(["default"], n, consumer="c", lease=30, block=0)
    return [d.job_id for d in got]


async def test_enqueue_priority_and_task_default_decide_the_fetch_order(unique_name: str) -> None:
    app = make_app(f"memory://{unique_name}")

    @app.task(name="plain")
    async def plain(job: Ping) -> int:
        return job.n

    @app.task(name="urgent", priority="high")
    async def urgent(job: Ping) -> int:
        return job.n

    assert urgent.priority is Priority.HIGH and plain.priority is Priority.NORMAL
    normal = await plain.enqueue(Ping(1))
    lows = await plain.enqueue_many([Ping(2), Ping(3)], priority="low")
    by_default = await urgent.enqueue(Ping(4))
    demoted = await urgent.enqueue(Ping(5), priority=Priority.NORMAL)
    high = await plain.enqueue(Ping(6), priority=1)
    order = await fetch_order(app, 10)
    assert order == [
        by_default.id,
        high.id,
        normal.id,
        demoted.id,
        *(h.id for h in lows),
    ]


def test_sync_calls_take_priority(unique_name: str) -> None:
    app = make_app(f"memory://{unique_name}")

    @app.task(name="plain")
    def plain(job: Ping) -> int:
        return job.n

    try:
        first = plain.enqueue_sync(Ping(1))
        lows = plain.enqueue_many_sync([Ping(2)], priority="low")
        high = plain.enqueue_sync(Ping(3), priority="high")
        order = app.run_sync(fetch_order, app, 10)
        assert order == [high.id, first.id, lows[0].id]
    finally:
        app.close()


async def test_a_bad_priority_says_what_to_write(unique_name: str) -> None:
    app = make_app(f"memory://{unique_name}")

    @app.task(name="plain")
    async def plain(job: Ping) -> int:
        return job.n

    with pytest.raises(InvalidArgument, match="'low', 'normal' or 'high'"):
        await plain.enqueue(Ping(1), priority=5)
    with pytest.raises(InvalidArgument, match="'low', 'normal' or 'high'"):
        await plain.enqueue_many([Ping(1)], priority="urgent")
    assert await fetch_order(app, 10) == []  # nothing was written
    with pytest.raises(vaultq.TaskDefinitionError, match="task 'bad'.*'low', 'normal' or 'high'"):

        @app.task(name="bad", priority=10)
        async def bad(job: Ping) -> int:
            return job.n


async def test_a_broker_without_priorities_refuses_a_level_it_would_ignore() -> None:
    app = make_app(FifoOnlyBroker(namespace="shop"))

    @app.task(name="plain")
    async def plain(job: Ping) -> int:
        return job.n

    @app.task(name="urgent", priority=Priority.HIGH)
    async def urgent(job: Ping) -> int:
        return job.n

    with pytest.raises(vaultq.ConfigurationError, match="does not declare them"):
        await plain.enqueue(Ping(1), priority="high")
    with pytest.raises(vaultq.ConfigurationError, match="task 'urgent': priority 'high'"):
        await urgent.enqueue(Ping(1))
    assert await fetch_order(app, 10) == []
    # Normal jobs (and an explicit normal) go through as before.
    a = await plain.enqueue(Ping(1), priority="normal")
    b = await urgent.enqueue(Ping(2), priority="normal")
    assert await fetch_order(app, 10) == [a.id, b.id]
