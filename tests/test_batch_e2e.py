"""Batch signatures end to end (docs/envelope.md, *Batch signatures*): a producer with
``batch_signatures=True`` enqueues with ``enqueue_many``; real worker processes holding
only the public keys (split trust) run every member of a batch, and refuse and audit a
member whose audit path was tampered with while its batch mates run. Redis and SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest
from batch_app import Item
from support.brokers import url_for
from support.workers import make_app, wait_until_serving, worker_env, worker_processes

import vaultq
from vaultq.brokers.base import EnqueueItem
from vaultq.envelope import MAGIC_V2, JobMeta, new_job_id, seal_job_parts
from vaultq.envelope_batch import seal_batch


def _tamper_sibling(envelope: bytes) -> bytes:
    """The same envelope with one bit of its audit path's first sibling flipped."""
    header, nonce, ciphertext, signature, proof = msgspec.msgpack.decode(envelope[3:])
    bad = bytearray(proof)
    bad[8] ^= 0x01
    return MAGIC_V2 + msgspec.msgpack.encode([header, nonce, ciphertext, signature, bytes(bad)])


def _wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis), "sqlite"])
def test_batch_members_run_and_a_tampered_member_is_refused_and_audited(
    kind: str, tmp_path: Path, unique_name: str, request: pytest.FixtureRequest
) -> None:
    import batch_app

    keys = vaultq.Keyring.generate(signing="ed25519")
    log = tmp_path / "runs.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": url_for(kind, tmp_path, request),
            "VAULTQ_KEYS": keys.public().to_json(),  # workers can verify, never sign
            "BATCH_APP": unique_name,
            "BATCH_LOG": str(log),
        }
    )
    app = make_app(unique_name, env["VAULTQ_BROKER"], keys, batch_signatures=True)
    record = app.task(name="batch.record")(batch_app.record.fn)

    # One batch sealed by hand, so one member can be tampered with before it is written.
    now = time.time()
    ids = [new_job_id(now) for _ in range(6)]
    parts = [
        seal_job_parts(
            keys,
            job_id=job_id,
            app=unique_name,
            task="batch.record",
            queue="default",
            payload=msgspec.json.encode(Item(100 + i)),
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 600,
        )
        for i, job_id in enumerate(ids)
    ]
    envelopes = seal_batch(keys, parts)
    envelopes[3] = _tamper_sibling(envelopes[3])
    broker = app.run_sync(app.broker)
    app.run_sync(
        broker.enqueue,
        [EnqueueItem(queue="default", job_id=i, envelope=e) for i, e in zip(ids, envelopes)],
    )

    with worker_processes("batch_app", env, 2, "--concurrency", "8") as procs:
        wait_until_serving(procs)
        # The producer's own path: enqueue_many seals one batch, one signature.
        handles = record.enqueue_many_sync([Item(n) for n in range(40)])
        assert [h.result_sync(timeout=60) for h in handles] == list(range(40))
        for i, job_id in enumerate(ids):
            if i != 3:
                assert app.job(job_id, task=record).result_sync(timeout=60) == 100 + i

        def buried() -> bool:
            return len(app.run_sync(broker.dead_letters, "default")) == 1

        _wait_for(buried)
        worker_logs = b"".join(p.log_path.read_bytes() for p in procs)  # type: ignore[attr-defined]
    # The dead letter says only "unauthenticated" (no probing); the audit line says why.
    dead = app.run_sync(broker.dead_letters, "default")
    assert [(d.job_id, d.reason) for d in dead] == [(ids[3], "rejected:unauthenticated")]
    assert f"job {ids[3]} rejected on queue default: bad_signature".encode() in worker_logs
    ran = sorted(int(line.split()[0]) for line in log.read_text().splitlines())
    assert ran == sorted([*range(40), 100, 101, 102, 104, 105])
    app.close()
