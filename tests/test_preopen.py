"""Ed25519 envelopes of a fetched batch opened on two threads (vaultq/runtime/preopen.py):
every check still applies on that path. Against real brokers (a worker draining a batch
with a forged envelope in it) and with the executor's own open for what the batch
opener leaves (an envelope that expired between the fetch and the run)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq.brokers.base import Bury, EnqueueItem
from vaultq.envelope import JobMeta, OpenedJob, new_job_id, seal_job
from vaultq.runtime import preopen
from vaultq.runtime.execute import Executor
from vaultq.runtime.preopen import BatchOpener, batch_opener
from vaultq.runtime.slots import JobSlot

pytestmark = pytest.mark.anyio


class N(msgspec.Struct, frozen=True):
    n: int


def ed25519_app(name: str, url: str) -> vaultq.App:
    return make_app(name, url, keyring=vaultq.Keyring.generate(signing="ed25519"))


def sealed(app: vaultq.App, n: int, *, expires_in: float = 3600.0) -> tuple[str, bytes]:
    job_id = new_job_id()
    now = time.time()
    envelope = seal_job(
        app.keyring,
        job_id=job_id,
        app=app.name,
        task="t.count",
        queue="default",
        payload=msgspec.json.encode(N(n)),
        principal=None,
        meta=JobMeta(),
        issued_at=now,
        not_before=now,
        expires_at=now + expires_in,
    )
    return job_id, envelope


def test_only_ed25519_signers_on_several_cores_get_a_batch_opener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert batch_opener(make_app("hmac", "memory://")) is None
    opener = batch_opener(ed25519_app("ed", "memory://"))
    assert isinstance(opener, BatchOpener)
    opener.close()
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert batch_opener(ed25519_app("ed1", "memory://")) is None


async def test_a_forged_envelope_in_a_batch_never_runs(
    broker_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of Ed25519 jobs with one whose signature was altered: the good ones run,
    opened on two threads; the forged one is refused (dead-lettered unauthenticated)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    batches: list[int] = []
    real_open = BatchOpener.open

    def spy(self: BatchOpener, slots: list[JobSlot], now: float) -> None:
        real_open(self, slots, now)
        batches.append(sum(1 for s in slots if s.opened is not None))

    monkeypatch.setattr(BatchOpener, "open", spy)
    app = ed25519_app(unique_name, broker_url)
    ran: list[int] = []

    @app.task(name="t.count")
    async def count(job: N) -> None:
        ran.append(job.n)

    items = []
    for n in range(12):
        job_id, envelope = sealed(app, n)
        if n == 5:  # flip the last byte: the signature's
            envelope = envelope[:-1] + bytes([envelope[-1] ^ 1])
        items.append(EnqueueItem(queue="default", job_id=job_id, envelope=envelope))
    broker = await app.broker()
    await broker.enqueue(items)
    async with running_worker(app, concurrency=32):
        with anyio.fail_after(30):
            while len(ran) < 11 or not await broker.dead_letters("default"):
                await anyio.sleep(0.05)
    assert sorted(ran) == [n for n in range(12) if n != 5]
    [dead] = await broker.dead_letters("default")
    assert dead.job_id == items[5].job_id
    assert dead.reason == "rejected:unauthenticated"
    # The batch path was taken, and left the forged one to the executor.
    assert 11 in batches
    await app.aclose()


async def test_a_job_that_expired_after_its_batch_opened_is_expired_not_run(
    tmp_path: Path, unique_name: str
) -> None:
    app = ed25519_app(unique_name, f"sqlite:///{tmp_path}/q.db")

    @app.task(name="t.count")
    async def count(job: N) -> None:
        raise AssertionError("an expired job must not run")

    items = [EnqueueItem("default", *sealed(app, n, expires_in=5.0)) for n in range(4)]
    broker = await app.broker()
    await broker.enqueue(items)
    deliveries = await broker.fetch(["default"], 4, consumer="c", lease=60, block=0)
    slots = [JobSlot(d) for d in deliveries]
    opener = BatchOpener(app, helpers=1)
    try:
        opener.open(slots, app.clock.now())
    finally:
        opener.close()
    assert all(isinstance(s.opened, OpenedJob) for s in slots)
    executor = Executor(app, worker_id="w", max_abandoned_threads=1, thread_tokens=1)
    # Opened at fetch time, run later than expiry + skew: the executor opens it again
    # and answers EXPIRED, as it would without the batch opener.
    late = app.clock.now() + 5.0 + app.clock_skew + 1.0
    assert preopen.usable(slots[0].opened, late, app.clock_skew) is None
    settlement = executor.open(slots[0].delivery, late, slots[0])
    assert isinstance(settlement, Bury) and settlement.reason == "expired"
    # Still in its window: the pre-opened job is the one used.
    kept = slots[1].opened
    assert executor.open(slots[1].delivery, app.clock.now(), slots[1]) is kept
    await app.aclose()
