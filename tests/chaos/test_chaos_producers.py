"""Producers ride out blips: an enqueue during a broker restart waits (within the App's
``enqueue_retry`` budget) instead of raising, and writes each job once."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import msgspec
import pytest
from chaos.conftest import RedisProcess
from support.workers import make_app

import vaultq
from vaultq.brokers.redis import RedisBroker

pytestmark = pytest.mark.anyio


class Tick(msgspec.Struct, frozen=True):
    n: int


async def test_enqueue_rides_out_a_redis_restart(
    dedicated_redis: RedisProcess, unique_name: str
) -> None:
    app = make_app(unique_name, dedicated_redis.url, enqueue_retry=5.0)

    @app.task(name="chaos.tick")
    async def tick(job: Tick) -> None:
        return None

    ids: list[str] = []
    restarted = threading.Event()

    def restart() -> None:
        dedicated_redis.stop()
        time.sleep(0.3)  # refused meanwhile
        dedicated_redis.start()
        restarted.set()

    # Warm the connection pool first: after the restart every pooled connection is dead.
    for n in range(20):
        ids.append((await tick.enqueue(Tick(n))).id)
    thread = threading.Thread(target=restart)
    thread.start()
    n = 20
    with anyio.fail_after(60):
        while not restarted.is_set() or n < 60:
            ids.append((await tick.enqueue(Tick(n))).id)  # never BrokerUnavailable
            n += 1
    thread.join()
    client = dedicated_redis.client()
    try:
        broker = app.configured_broker
        assert isinstance(broker, RedisBroker)
        # Any: redis-py types replies bytes | str; this client gets bytes.
        entries: Any = client.xrange(broker.keys("default").stream)
    finally:
        client.close()
    stored = [fields[b"id"].decode() for _, fields in entries]
    assert sorted(stored) == sorted(ids)  # every job once: none lost, none twice
    await app.aclose()


async def test_enqueue_gives_up_after_its_budget(
    dedicated_redis: RedisProcess, unique_name: str
) -> None:
    app = make_app(unique_name, dedicated_redis.url, enqueue_retry=0.5)

    @app.task(name="chaos.tick")
    async def tick(job: Tick) -> None:
        return None

    await tick.enqueue(Tick(0))
    dedicated_redis.stop()
    with pytest.raises(vaultq.BrokerUnavailable, match="gave up after"):
        await tick.enqueue(Tick(1))
    dedicated_redis.start()
    await app.aclose()


async def test_enqueue_rides_out_a_failover(
    dedicated_redis: RedisProcess, unique_name: str
) -> None:
    # While the node is a replica (READONLY) writes are refused; once it is promoted
    # again within the budget, the enqueue goes through, once.
    app = make_app(unique_name, dedicated_redis.url, enqueue_retry=10.0)

    @app.task(name="chaos.tick")
    async def tick(job: Tick) -> None:
        return None

    await tick.enqueue(Tick(0))
    admin = dedicated_redis.client()
    try:
        admin.replicaof("127.0.0.1", "1")  # a master that does not exist: read-only now

        def promote() -> None:
            time.sleep(0.5)
            admin.replicaof("NO", "ONE")

        thread = threading.Thread(target=promote)
        thread.start()
        handle = await tick.enqueue(Tick(1))  # never BrokerUnavailable nor BrokerError
        thread.join()
        broker = app.configured_broker
        assert isinstance(broker, RedisBroker)
        raw: Any = admin.xrange(broker.keys("default").stream)  # bytes replies
        stored = [f[b"id"].decode() for _, f in raw]
        assert stored.count(handle.id) == 1
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
    await app.aclose()
