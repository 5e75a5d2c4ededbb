"""What the in-memory broker adds to the contract suite (which it passes, see
``tests/test_broker_contract.py``): URLs and named stores, the app's keys, and the test
hooks of its store (recording, the clock's advance, clearing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import msgspec
import pytest

import vaultq
from vaultq.brokers import broker_from_url
from vaultq.brokers.base import Ack, CancelState, EnqueueItem
from vaultq.brokers.memory import MemoryBroker, store_of

pytestmark = pytest.mark.anyio


class Ping(msgspec.Struct, frozen=True):
    n: int


def test_memory_urls_build_memory_brokers(unique_name: str) -> None:
    fresh = broker_from_url("memory://", namespace="a")
    other = broker_from_url("memory://", namespace="a")
    assert isinstance(fresh, MemoryBroker) and isinstance(other, MemoryBroker)
    assert fresh.store is not other.store  # memory:// is a store of its own
    assert fresh.url.startswith("memory://anon-") and fresh.url != other.url
    named = broker_from_url(f"memory://{unique_name}", namespace="a")
    again = broker_from_url(f"memory://{unique_name}", namespace="b")
    assert isinstance(named, MemoryBroker) and isinstance(again, MemoryBroker)
    assert named.store is again.store  # one store per name in this process
    assert named.url == f"memory://{unique_name}"
    assert store_of(named.url) is named.store
    assert store_of(fresh.url) is fresh.store  # its generated name reaches it too
    assert not named.shared


@pytest.mark.parametrize(
    "url", ["memory:///x", "memory://bad name", "memory://x?record=1", "memory://-x"]
)
def test_malformed_memory_urls_say_what_to_write(url: str) -> None:
    with pytest.raises(vaultq.ConfigurationError, match="memory://"):
        broker_from_url(url, namespace="a")


async def test_two_apps_share_a_named_store(unique_name: str) -> None:
    keys = vaultq.Keyring.generate()
    producer = vaultq.App("shop", broker=f"memory://{unique_name}", keyring=keys)
    worker_side = vaultq.App("shop", broker=f"memory://{unique_name}", keyring=keys)
    for app in (producer, worker_side):

        @app.task(name="ping")
        async def ping(job: Ping) -> int:
            return job.n

    task = producer.get_task("ping")
    assert task is not None
    await task.enqueue(Ping(7))
    broker = await worker_side.broker()
    assert (await broker.stats("default")).ready == 1


async def test_an_app_on_memory_writes_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without keys, the embedded broker writes ./vaultq.keys; the memory broker keeps
    nothing after the process, so its keys are generated in memory instead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    app = vaultq.App("nokeys", broker="memory://")

    @app.task(name="ping")
    async def ping(job: Ping) -> int:
        return job.n

    await ping.enqueue(Ping(1))
    assert app.keyring.can_sign
    assert app.keyring_source == "generated for the memory broker"
    assert os.listdir(tmp_path) == []


async def test_recording_keeps_every_enqueue_until_cleared(unique_name: str) -> None:
    broker = MemoryBroker(f"memory://{unique_name}", namespace="ns")
    store = broker.store
    await broker.enqueue([EnqueueItem("q", "before", b"e0")])
    assert store.recorded() == []  # not recording yet: nothing kept
    store.start_recording()
    due = time.time() + 60
    await broker.enqueue([EnqueueItem("q", "a", b"e1"), EnqueueItem("q", "b", b"e2", due)])
    assert await broker.enqueue_unique(EnqueueItem("q", "c", b"e3"), ttl=60)
    assert not await broker.enqueue_unique(EnqueueItem("q", "c", b"other"), ttl=60)
    other_ns = broker_from_url(broker.url, namespace="elsewhere")
    await other_ns.enqueue([EnqueueItem("q", "d", b"e4")])
    records = store.recorded("ns")
    assert [(r.job_id, r.envelope, r.unique) for r in records] == [
        ("a", b"e1", False),
        ("b", b"e2", False),
        ("c", b"e3", True),
    ]
    assert records[0].not_before is None and records[1].not_before == due
    assert [r.job_id for r in store.recorded()] == ["a", "b", "c", "d"]
    # Fetching and settling do not change what was enqueued.
    await broker.fetch(["q"], 10, consumer="w", lease=5, block=0)
    assert len(store.recorded("ns")) == 3
    store.clear()
    assert store.recorded() == []
    assert (await broker.stats("q")).ready == 0  # the jobs went too
    await broker.enqueue([EnqueueItem("q", "e", b"e5")])
    assert [r.job_id for r in store.recorded()] == ["e"]  # still recording


async def test_advance_makes_delayed_jobs_due_without_sleeping() -> None:
    broker = MemoryBroker(namespace="ns")
    await broker.enqueue([EnqueueItem("q", "later", b"e", time.time() + 3600)])
    assert await broker.fetch(["q"], 1, consumer="w", lease=5, block=0) == []
    before = await broker.time()
    broker.store.advance(3601)
    assert await broker.time() - before >= 3600
    (d,) = await broker.fetch(["q"], 1, consumer="w", lease=5, block=0)
    assert d.job_id == "later"
    with pytest.raises(vaultq.ConfigurationError):
        broker.store.advance(-1)


async def test_a_blocked_fetch_sees_an_enqueue_from_another_thread() -> None:
    """The app's sync facade enqueues from its own event loop thread: a fetch blocked in
    the test's loop still returns promptly (it looks again every few ms)."""
    broker = MemoryBroker(namespace="ns")
    twin = broker.clone()

    def enqueue_elsewhere() -> None:
        time.sleep(0.2)
        anyio.run(twin.enqueue, [EnqueueItem("q", "x", b"e")])

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, enqueue_elsewhere)
        got = await broker.fetch(["q"], 1, consumer="w", lease=5, block=5.0)
    assert [d.job_id for d in got] == ["x"]
    assert time.monotonic() - start < 1.0


async def test_expired_results_ids_and_markers_are_deleted_not_just_ignored() -> None:
    """A long-running process on memory:// must not keep every finished id forever:
    fetch deletes what expired (every 30 s of the store's clock)."""
    broker = MemoryBroker(namespace="ns")
    await broker.enqueue([EnqueueItem("q", f"j{i}", b"e") for i in range(50)])
    done = await broker.fetch(["q"], 50, consumer="w", lease=5, block=0)
    now = await broker.time()
    await broker.settle([Ack(d, result=b"r", result_ttl=60, remember_until=now + 60) for d in done])
    assert await broker.cancel("q", "other", ttl=60) is CancelState.REQUESTED
    space = broker.store.space("ns")
    assert (len(space.results), len(space.finished), len(space.cancels)) == (50, 50, 1)
    broker.store.advance(120)
    assert await broker.fetch(["q"], 1, consumer="w", lease=5, block=0) == []
    assert (len(space.results), len(space.finished), len(space.cancels)) == (0, 0, 0)
