"""Envelope claims shown end to end, against both brokers: what a broker writer can do
with sealed bytes (re-frame them) and what a producer can do with a result (read another
task's or another principal's)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import pytest
from helpers import broker_url, make_app, running_worker

import vaultq
from vaultq.brokers.base import EnqueueItem
from vaultq.envelope import MAGIC, JobMeta, seal_job
from vaultq.payload import Codec

pytestmark = pytest.mark.anyio

BROKERS = ["sqlite", "redis"]


class Order(msgspec.Struct, frozen=True):
    n: int


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    return broker_url(kind, tmp_path, redis_url)


@pytest.mark.parametrize("kind", BROKERS)
async def test_reframed_envelopes_never_run(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    keys = vaultq.Keyring.generate()
    app = make_app(unique_name, _url(kind, tmp_path, request), keyring=keys)
    runs: list[int] = []

    @app.task(name="t.count")
    async def count(job: Order) -> int:
        runs.append(job.n)
        return job.n

    now = time.time()

    def sealed(job_id: str) -> list[bytes]:
        data = seal_job(
            keys,
            job_id=job_id,
            app=unique_name,
            task="t.count",
            queue="default",
            payload=Codec(Order).encode(Order(1)),
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 600,
        )
        parts: list[bytes] = msgspec.msgpack.decode(data[3:])
        return parts

    # What a broker writer can do without any key: add an element, or re-frame one.
    extra = MAGIC + msgspec.msgpack.encode([*sealed("a" * 32), b"smuggled"])
    header, nonce, ciphertext, signature = sealed("b" * 32)
    bin16 = (
        MAGIC
        + b"\x94"
        + msgspec.msgpack.encode(header)
        + b"\xc5\x00\x0c"
        + nonce
        + msgspec.msgpack.encode(ciphertext)
        + msgspec.msgpack.encode(signature)
    )
    broker = await app.broker()
    await broker.enqueue(
        [
            EnqueueItem(queue="default", job_id="a" * 32, envelope=extra),
            EnqueueItem(queue="default", job_id="b" * 32, envelope=bin16),
        ]
    )
    async with running_worker(app):
        with anyio.fail_after(15):
            while len(await broker.dead_letters("default")) < 2:
                await anyio.sleep(0.05)
        # The honest job still runs: the worker is fine, only the re-framed copies died.
        assert await (await count.enqueue(Order(2))).result(timeout=10) == 2
    dead = await broker.dead_letters("default")
    assert len(dead) == 2
    assert all(d.reason.startswith("rejected:") for d in dead)
    assert runs == [2]
    await app.aclose()
