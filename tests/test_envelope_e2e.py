"""Envelope claims shown end to end, against both brokers: what a broker writer can do
with sealed bytes (re-frame them) and what a producer can do with a result (read another
task's or another principal's). Where the worker process itself is not the point, the
test kit's ``run_pending`` runs the jobs (the same Executor, no polling)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import pytest
from support.brokers import url_for
from support.workers import make_app, running_worker

import vaultq
from vaultq.brokers.base import EnqueueItem
from vaultq.envelope import MAGIC, MAGIC_V2, JobMeta, seal_job
from vaultq.payload import Codec
from vaultq.testing import run_pending

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    n: int


async def test_reframed_envelopes_never_run(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    keys = vaultq.Keyring.generate()
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request), keyring=keys)
    runs: list[int] = []

    @app.task(name="t.count")
    async def count(job: Order) -> int:
        runs.append(job.n)
        return job.n

    now = time.time()

    def sealed(job_id: str, version: int = 2) -> list[bytes]:
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
            version=version,
        )
        parts: list[bytes] = msgspec.msgpack.decode(data[3:])
        return parts

    # What a broker writer can do without any key: add an element, or re-frame one.
    extra = MAGIC_V2 + msgspec.msgpack.encode([*sealed("a" * 32), b"smuggled"])
    header, nonce, ciphertext, signature = sealed("b" * 32, version=1)
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


async def test_job_id_squatting_cannot_capture_another_tasks_result(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.refund")
    async def refund(job: Order) -> int:
        return job.n

    @app.task(name="t.squat")
    async def squat(job: Order) -> int:
        return -job.n

    # Another producer picks the id the refund caller will look up, for its own task.
    job_id = "squatted-id-1"
    await squat.enqueue(Order(7), job_id=job_id)
    await run_pending(app)
    assert await app.job(job_id, task="t.squat").result(timeout=1) == -7
    with pytest.raises(vaultq.WrongDestination):
        await app.job(job_id, task=refund).result(timeout=1)
    with pytest.raises(vaultq.WrongDestination):
        await app.job(job_id, task=refund).outcome()
    with pytest.raises(vaultq.WrongDestination):  # not "succeeded": it is not refund's
        await app.job(job_id, task=refund).status()
    await app.aclose()


async def test_results_are_read_only_by_their_principal_or_a_policy(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.secret", policy=vaultq.require_authenticated())
    async def secret(job: Order) -> int:
        return job.n * 100

    @app.task(name="t.open")
    async def opened(job: Order) -> int:
        return job.n

    alice = vaultq.Principal("user:alice")
    bob = vaultq.Principal("user:bob")
    staff = vaultq.Principal("user:carol", roles={"staff"})
    handle = await secret.enqueue(Order(4), principal=alice)
    anonymous_job = await opened.enqueue(Order(5))
    await run_pending(app)
    assert await handle.result(timeout=1, reader=alice) == 400
    # Bob learned the job id (it is in the broker and in logs): he may not read it.
    for reader in (bob, None, vaultq.Principal.anonymous()):
        with pytest.raises(vaultq.AuthorizationDenied) as info:
            await app.job(handle.id, task=secret).result(timeout=1, reader=reader)
        assert "alice" not in str(info.value)
        with pytest.raises(vaultq.AuthorizationDenied):
            await app.job(handle.id, task=secret).outcome(reader=reader)
    staff_only = vaultq.require_role("staff")
    with pytest.raises(vaultq.AuthorizationDenied):
        await handle.result(timeout=1, reader=bob, policy=staff_only)
    assert await handle.result(timeout=1, reader=staff, policy=staff_only) == 400
    # A job enqueued without a principal is read without one; a user is not its owner.
    assert await anonymous_job.result(timeout=1, reader=None) == 5
    with pytest.raises(vaultq.AuthorizationDenied):
        await anonymous_job.result(timeout=1, reader=alice)
    # The sync twin checks the same way.
    with pytest.raises(vaultq.AuthorizationDenied):
        await anyio.to_thread.run_sync(lambda: handle.result_sync(timeout=1, reader=bob))
    await app.aclose()


async def test_v1_migration_window_then_refusal(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    # A producer still sealing v1 (its workers were not all upgraded yet) ...
    old_producer = make_app(unique_name, url, keyring=keys, envelope_version=1)
    new_worker = make_app(unique_name, url, keyring=keys)

    for app in (old_producer, new_worker):

        @app.task(name="t.echo")
        async def echo(job: Order) -> int:
            return job.n

    echo_v1 = old_producer.tasks["t.echo"]
    handle = await echo_v1.enqueue(Order(3))
    # ... is served by an upgraded worker, and reads the answer in its own version.
    assert [r.outcome for r in await run_pending(new_worker)] == ["succeeded"]
    assert await handle.result(timeout=1) == 3
    broker = await old_producer.broker()
    stored = await broker.get_result("default", handle.id)
    assert stored is not None and stored[:3] == MAGIC
    # After the window: a worker with accept_envelope_v1=False refuses v1 jobs.
    strict = make_app(unique_name, url, keyring=keys, accept_envelope_v1=False)

    @strict.task(name="t.echo")
    async def echo_strict(job: Order) -> int:
        return job.n

    late = await echo_v1.enqueue(Order(4))
    current = await echo_strict.enqueue(Order(5))
    refused, served = await run_pending(strict)
    assert (refused.job_id, refused.outcome) == (late.id, "rejected")
    assert (served.job_id, served.outcome) == (current.id, "succeeded")
    assert await current.result(timeout=1) == 5
    (dead,) = await broker.dead_letters("default")
    assert dead.job_id == late.id and dead.reason.startswith("rejected:")
    with pytest.raises(vaultq.UnsupportedVersion):
        await strict.job(handle.id, task="t.echo").result(timeout=1)  # a v1 result, too
    for app in (old_producer, new_worker, strict):
        await app.aclose()


class Other(msgspec.Struct, frozen=True):
    name: str


@pytest.mark.parametrize(("job_version", "worker_version"), [(1, 2), (2, 1)])
async def test_rejected_result_answers_in_the_jobs_version(
    broker_url: str, job_version: int, worker_version: int, unique_name: str
) -> None:
    """A worker answers a job in the job's envelope version, REJECTED included: a v1
    producer (a vaultq that reads only v1) must be able to read why its job was refused,
    whatever version the worker itself seals (``envelope_version``)."""
    url = broker_url
    keys = vaultq.Keyring.generate()
    producer = make_app(unique_name, url, keyring=keys, envelope_version=job_version)
    worker = make_app(unique_name, url, keyring=keys, envelope_version=worker_version)

    @producer.task(name="t.typed")
    async def typed(job: Order) -> int:
        return job.n

    # The worker's task takes another payload type: the job opens, its payload does not
    # decode, and the answer is a REJECTED result under the signed job id.
    @worker.task(name="t.typed")
    async def typed_elsewhere(job: Other) -> str:
        return job.name

    handle = await typed.enqueue(Order(1))
    async with running_worker(worker):
        with pytest.raises(vaultq.JobRejected):
            await handle.result(timeout=10)
    stored = await (await producer.broker()).get_result("default", handle.id)
    assert stored is not None
    assert stored[:3] == (MAGIC if job_version == 1 else MAGIC_V2)
    for app in (producer, worker):
        await app.aclose()
