"""The worker in-process, against both real brokers: run, retry, dead-letter, reject, delay."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
import redis.asyncio
from support.workers import make_app, running_worker

import vaultq
from vaultq.brokers.base import Bury, EnqueueItem
from vaultq.jobs import JobStatus

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: int
    note: str
    card: vaultq.Secret[str]


class Receipt(msgspec.Struct, frozen=True):
    order_id: int
    total_cents: int


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


def new_app(url: str, unique_name: str, **options: Any) -> vaultq.App:
    return make_app(unique_name, url, **options)


async def test_typed_round_trip_and_status(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)
    seen: list[Order] = []

    @app.task(name="orders.charge")
    async def charge(job: Order) -> Receipt:
        seen.append(job)
        return Receipt(order_id=job.order_id, total_cents=len(job.card.reveal()))

    async with running_worker(app):
        handle = await charge.enqueue(
            Order(order_id=7, note="n", card=vaultq.Secret("tok_123")),
            principal=vaultq.Principal("user:1"),
        )
        receipt = await handle.result(timeout=10)
    assert receipt == Receipt(order_id=7, total_cents=7)
    assert type(receipt) is Receipt
    assert isinstance(seen[0].card, vaultq.Secret)
    assert await handle.status() == JobStatus.SUCCEEDED
    # a finished job's result is there even with no time to wait
    assert await handle.result(timeout=0) == receipt
    # a rebuilt handle reads the same result
    again = await app.job(handle.id, task=charge).result(timeout=5)
    assert again == receipt
    assert await app.job(handle.id).result(timeout=5) == {"order_id": 7, "total_cents": 7}
    await app.aclose()


async def test_sync_task_and_enqueue_many(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)
    threads: set[str] = set()

    @app.task(name="orders.total")
    def total(job: Order) -> int:
        threads.add(threading.current_thread().name)
        return job.order_id * 10

    async with running_worker(app, concurrency=8):
        handles = await total.enqueue_many(
            Order(order_id=i, note="", card=vaultq.Secret("x")) for i in range(50)
        )
        results = [await h.result(timeout=20) for h in handles]
    assert results == [i * 10 for i in range(50)]
    assert threading.current_thread().name not in threads
    await app.aclose()


async def test_retries_follow_backoff_then_dead_letter(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)
    attempts: list[tuple[int, float]] = []

    @app.task(name="orders.flaky", retries=2, backoff=0.2, max_backoff=0.2)
    async def flaky(job: Order) -> None:
        attempts.append((vaultq.current_job().attempt, time.monotonic()))
        raise ValueError(f"card {job.card.reveal()} declined")

    async with running_worker(app):
        handle = await flaky.enqueue(Order(order_id=1, note="", card=vaultq.Secret("s3cr3t")))
        with pytest.raises(vaultq.JobFailed) as info:
            await handle.result(timeout=15)
    assert [a for a, _ in attempts] == [1, 2, 3]
    # full jitter: each wait is within [0, cap] plus scheduling slack
    gaps = [b - a for (_, a), (_, b) in zip(attempts, attempts[1:], strict=False)]
    assert all(gap < 0.2 + 1.5 for gap in gaps)
    assert info.value.error_type == "ValueError"
    assert "s3cr3t" not in str(info.value)
    assert info.value.detail == "card s3cr3t declined"
    broker = await app.broker()
    dead = await broker.dead_letters("default")
    assert [(d.job_id, d.reason, d.attempt) for d in dead] == [(handle.id, "failed", 3)]
    assert await handle.status() == JobStatus.FAILED
    await app.aclose()


async def test_tampered_bytes_are_rejected_and_worker_goes_on(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)
    ran: list[int] = []

    @app.task(name="orders.run")
    async def run(job: Order) -> int:
        ran.append(job.order_id)
        return job.order_id

    # Seal a real job, take it out of the queue, flip one byte, and write it back raw.
    victim = await run.enqueue(Order(order_id=1, note="", card=vaultq.Secret("x")))
    broker = await app.broker()
    (stolen,) = await broker.fetch(["default"], 1, consumer="thief", lease=30, block=1)
    await broker.settle(
        [
            Bury(
                delivery=stolen,
                reason="test",
                detail="",
                result=None,
                result_ttl=1,
                remember_until=None,
            )
        ]
    )
    await broker.purge_dead("default")
    envelope = bytearray(stolen.envelope)
    envelope[-5] ^= 0x01
    await broker.enqueue([EnqueueItem(queue="default", job_id=victim.id, envelope=bytes(envelope))])
    # and a copy under another id: the header no longer matches where it was put
    await broker.enqueue([EnqueueItem(queue="default", job_id="0" * 32, envelope=stolen.envelope)])
    async with running_worker(app):
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < 2:
                await anyio.sleep(0.05)
        later = await run.enqueue(Order(order_id=2, note="", card=vaultq.Secret("x")))
        assert await later.result(timeout=10) == 2
    assert ran == [2]
    # Nothing that failed authentication answers for the id it names: no REJECTED result
    # (a producer waiting on that id keeps waiting for the real outcome).
    assert await broker.get_result("default", victim.id) is None
    assert await broker.get_result("default", "0" * 32) is None
    dead = {d.job_id: d.reason for d in await broker.dead_letters("default")}
    assert dead == {victim.id: "rejected:unauthenticated", "0" * 32: "rejected:unauthenticated"}
    await app.aclose()


async def test_delayed_jobs_never_run_early(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)
    started: dict[int, float] = {}

    @app.task(name="orders.later")
    async def later(job: Order) -> None:
        started[job.order_id] = time.time()

    async with running_worker(app):
        t0 = time.time()
        h1 = await later.enqueue(Order(order_id=1, note="", card=vaultq.Secret("x")), delay=1.0)
        h2 = await later.enqueue(Order(order_id=2, note="", card=vaultq.Secret("x")), at=t0 + 0.5)
        await h1.result(timeout=10)
        await h2.result(timeout=10)
    assert started[1] >= t0 + 1.0
    assert started[2] >= t0 + 0.5
    await app.aclose()


@pytest.mark.broker_kinds("sqlite", "redis")  # reads what they store
async def test_nothing_readable_in_the_broker(url: str, unique_name: str, tmp_path: Path) -> None:
    app = new_app(url, unique_name)
    marker, who, out = "PAYLOAD-MARKER-81f2", "PRINCIPAL-MARKER-c3d9", "RESULT-MARKER-77aa"

    @app.task(name="orders.note")
    async def note(job: Order) -> str:
        return out + job.note[:0]

    @app.task(name="orders.fail", retries=0)
    async def fail(job: Order) -> str:
        raise RuntimeError(job.note)

    async with running_worker(app):
        h = await note.enqueue(
            Order(order_id=1, note=marker, card=vaultq.Secret(marker)),
            principal=vaultq.Principal(who, attrs={"email": who}),
        )
        assert await h.result(timeout=10) == out
        f = await fail.enqueue(Order(order_id=2, note=marker, card=vaultq.Secret("x")))
        with pytest.raises(vaultq.JobFailed):
            await f.result(timeout=10)
        pending = await note.enqueue(
            Order(order_id=3, note=marker, card=vaultq.Secret(marker)), delay=60
        )
        assert pending.id
    blob = _dump_broker(url)
    for needle in (marker, who, out):
        assert needle.encode() not in blob
    await app.aclose()


def _dump_broker(url: str) -> bytes:
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return "\n".join(con.iterdump()).encode() + b"".join(
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                for table in [
                    r[0] for r in con.execute("select name from sqlite_master where type='table'")
                ]
                for row in con.execute(f"select * from {table}")  # noqa: S608 - test code
                for v in row
            )
        finally:
            con.close()
    # Any: redis-py types replies bytes | str; this client (no decode_responses) gets bytes.
    client: Any = redis.Redis.from_url(url)
    parts: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            parts.append(key)
            kind = client.type(key)
            if kind == b"string":
                parts.append(client.get(key) or b"")
            elif kind == b"stream":
                for _, fields in client.xrange(key):
                    parts.extend(k + v for k, v in fields.items())
            elif kind == b"zset":
                parts.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
            elif kind == b"set":
                parts.extend(client.smembers(key))
            elif kind == b"hash":
                parts.extend(k + v for k, v in client.hgetall(key).items())
            elif kind == b"list":
                parts.extend(client.lrange(key, 0, -1))
    finally:
        client.close()
    return b"\n".join(parts)


async def test_worker_survives_garbage_results_and_blocking(url: str, unique_name: str) -> None:
    app = new_app(url, unique_name)

    @app.task(name="orders.garbage", retries=0)
    async def garbage(job: Order) -> int:
        return "not an int"  # type: ignore[return-value]

    @app.task(name="orders.ok")
    async def ok(job: Order) -> int:
        return job.order_id

    async with running_worker(app):
        g = await garbage.enqueue(Order(order_id=1, note="", card=vaultq.Secret("x")))
        with pytest.raises(vaultq.JobFailed) as info:
            await g.result(timeout=10)
        assert info.value.error_type == "vaultq.PayloadError"
        assert await (await ok.enqueue(Order(2, "", vaultq.Secret("x")))).result(timeout=10) == 2
    await app.aclose()


def test_enqueue_sync_without_and_with_a_running_loop(tmp_path: Path, unique_name: str) -> None:
    app = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name)

    @app.task(name="orders.sync")
    async def sync_job(job: Order) -> int:
        return job.order_id + 1

    handles = [sync_job.enqueue_sync(Order(i, "", vaultq.Secret("x"))) for i in range(3)]

    async def inside_a_loop() -> str:
        # a sync call made from code that runs inside an event loop (e.g. an async view)
        return sync_job.enqueue_sync(Order(9, "", vaultq.Secret("x"))).id

    handles.append(app.job(anyio.run(inside_a_loop)))

    async def work() -> list[int]:
        async with running_worker(app):
            return [await app.job(h.id).result(timeout=10) for h in handles]

    assert anyio.run(work) == [1, 2, 3, 10]
    assert handles[0].result_sync(timeout=5) == 1
    assert handles[0].status_sync() == JobStatus.SUCCEEDED
    app.close()


async def test_result_timeout_on_an_unfinished_job(tmp_path: Path, unique_name: str) -> None:
    app = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name)

    @app.task(name="orders.never")
    async def never(job: Order) -> None:
        return None

    handle = await never.enqueue(Order(1, "", vaultq.Secret("x")))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=handle.id):
        await handle.result(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 3
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0)
    assert await handle.status() == JobStatus.PENDING
    await app.aclose()


async def test_enqueue_refuses_wrong_payload_type(tmp_path: Path, unique_name: str) -> None:
    app = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name)

    @app.task(name="orders.typed")
    async def typed(job: Order) -> None:
        return None

    with pytest.raises(vaultq.PayloadError, match="Order payload"):
        await typed.enqueue(Receipt(order_id=1, total_cents=2))  # type: ignore[arg-type]
    with pytest.raises(vaultq.ConfigurationError, match="max_timeout"):
        await typed.enqueue(Order(1, "", vaultq.Secret("x")), timeout=10_000)
    await app.aclose()


async def test_redis_needs_explicit_keys(
    redis_url: str, unique_name: str, monkeypatch: Any
) -> None:
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    app = vaultq.App(unique_name, broker=redis_url)

    @app.task(name="t.x")
    async def x(job: Order) -> None:
        return None

    with pytest.raises(vaultq.ConfigurationError, match="vaultq keys generate"):
        await x.enqueue(Order(1, "", vaultq.Secret("x")))


async def test_embedded_broker_generates_private_keyfile(
    tmp_path: Path, unique_name: str, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("VAULTQ_KEYS", raising=False)
    app = vaultq.App(unique_name, broker=f"sqlite:///{tmp_path}/jobs.db")

    @app.task(name="t.y")
    async def y(job: Order) -> int:
        return 1

    with caplog.at_level(logging.WARNING, logger="vaultq"):
        await y.enqueue(Order(1, "", vaultq.Secret("x")))
    keyfile = tmp_path / "jobs.keys"
    assert keyfile.stat().st_mode & 0o777 == 0o600
    assert "generated a new keyring" in caplog.text
    # a second app on the same database reuses the same keys
    again = vaultq.App(unique_name, broker=f"sqlite:///{tmp_path}/jobs.db")
    assert again.keyring.signer_id == app.keyring.signer_id
    await app.aclose()


async def test_worker_rides_out_a_redis_restart(tmp_path: Path, unique_name: str) -> None:
    """Redis goes away while the worker runs and comes back: the worker keeps serving."""
    import shutil
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("redis-server")
    assert binary is not None
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        return proc

    server = start()
    app = new_app(f"redis://127.0.0.1:{port}/0", unique_name)

    @app.task(name="orders.echo")
    async def echo(job: Order) -> int:
        return job.order_id

    try:
        async with running_worker(app) as worker:
            assert (
                await (await echo.enqueue(Order(1, "", vaultq.Secret("x")))).result(timeout=10) == 1
            )
            server.terminate()
            server.wait()
            await anyio.sleep(1.0)  # the worker's fetches fail meanwhile
            server = start()
            handle = None
            for _ in range(50):  # the producer's own pool reconnects too
                try:
                    handle = await echo.enqueue(Order(2, "", vaultq.Secret("x")))
                    break
                except vaultq.BrokerUnavailable:
                    await anyio.sleep(0.1)
            assert handle is not None
            assert await handle.result(timeout=20) == 2
            with anyio.fail_after(5):
                while worker.processed < 2:  # the settler counts right after its write returns
                    await anyio.sleep(0.01)
    finally:
        server.terminate()
        server.wait()
        await app.aclose()


async def test_bytes_written_straight_into_the_redis_stream(
    redis_url: str, unique_name: str
) -> None:
    """An attacker with redis-py: XADD a forged entry and a bit-flipped copy of a real one."""
    app = new_app(redis_url, unique_name)
    ran: list[int] = []

    @app.task(name="orders.raw")
    async def raw(job: Order) -> int:
        ran.append(job.order_id)
        return job.order_id

    real = await raw.enqueue(Order(order_id=1, note="", card=vaultq.Secret("x")))
    stream = f"vaultq:{{{unique_name}:default}}:stream"
    client: Any = redis.asyncio.Redis.from_url(redis_url)  # bytes replies (see above)
    try:
        ((_, entries),) = await client.xread({stream: "0-0"}, count=1)
        envelope = bytearray(entries[0][1][b"env"])
        envelope[40] ^= 0x80
        await client.xadd(stream, {"id": "f" * 32, "env": bytes(envelope), "att": "1", "at": "0"})
        await client.xadd(stream, {"id": "e" * 32, "env": b"\x93garbage", "att": "1", "at": "0"})
    finally:
        await client.aclose()
    broker = await app.broker()
    async with running_worker(app):
        assert await real.result(timeout=10) == 1
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < 2:
                await anyio.sleep(0.05)
        after = await raw.enqueue(Order(order_id=2, note="", card=vaultq.Secret("x")))
        assert await after.result(timeout=10) == 2
    assert ran == [1, 2]
    reasons = {d.job_id: d.reason for d in await broker.dead_letters("default")}
    assert reasons == {"e" * 32: "rejected:unauthenticated", "f" * 32: "rejected:unauthenticated"}
    for bad in ("f" * 32, "e" * 32):  # junk never answers for the id it names
        assert await broker.get_result("default", bad) is None
    await app.aclose()


def test_enqueue_sync_reuses_connections(redis_url: str, unique_name: str) -> None:
    """Sync producers (views, threads) share the app's loop and its Redis pool."""
    app = new_app(redis_url, unique_name)

    @app.task(name="orders.pooled")
    async def pooled(job: Order) -> None:
        return None

    client = redis.Redis.from_url(redis_url)
    try:
        before = len(client.client_list())
        pooled.enqueue_sync(Order(0, "", vaultq.Secret("x")))
        after_first = len(client.client_list())
        errors: list[BaseException] = []

        def produce(start: int) -> None:
            try:
                for i in range(start, start + 25):
                    pooled.enqueue_sync(Order(i, "", vaultq.Secret("x")))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        after_all = len(client.client_list())
    finally:
        client.close()
    assert after_first - before <= 2
    # 100 more enqueues from 4 threads: a handful of pooled connections, not 100
    assert after_all - after_first <= 4
    app.close()


async def test_size_limits_are_enforced_at_both_ends(tmp_path: Path, unique_name: str) -> None:
    app = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name, max_envelope_size=4096)

    @app.task(name="orders.big", retries=0)
    async def big(job: Order) -> str:
        return "x" * job.order_id

    with pytest.raises(vaultq.PayloadError, match="max_envelope_size"):
        await big.enqueue(Order(1, "y" * 5000, vaultq.Secret("x")))
    async with running_worker(app):
        assert (
            await (await big.enqueue(Order(10, "", vaultq.Secret("x")))).result(timeout=10)
            == "x" * 10
        )
        with pytest.raises(vaultq.JobFailed) as info:
            await (await big.enqueue(Order(5000, "", vaultq.Secret("x")))).result(timeout=10)
    assert info.value.error_type == "vaultq.PayloadError"
    assert "too large" in info.value.detail
    await app.aclose()


async def test_custom_job_ids_are_validated(tmp_path: Path, unique_name: str) -> None:
    app = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name)

    @app.task(name="orders.ided")
    async def ided(job: Order) -> int:
        return job.order_id

    for bad in ("", "../etc", "x" * 129, "-lead", "sp ace", "new\nline", "trailing-newline\n"):
        with pytest.raises(vaultq.ConfigurationError, match="job_id"):
            await ided.enqueue(Order(1, "", vaultq.Secret("x")), job_id=bad)
    async with running_worker(app):
        handle = await ided.enqueue(Order(3, "", vaultq.Secret("x")), job_id="order-3:refund")
        assert handle.id == "order-3:refund"
        assert await handle.result(timeout=10) == 3
        # the same id again is refused at enqueue (DuplicateJob); the first result stands
        with pytest.raises(vaultq.DuplicateJob):
            await ided.enqueue(Order(4, "", vaultq.Secret("x")), job_id="order-3:refund")
        assert await handle.result(timeout=1) == 3
    broker = await app.broker()
    assert await broker.dead_letters("default") == []
    await app.aclose()
