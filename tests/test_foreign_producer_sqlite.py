"""The SQLite wire layout in docs/sqlite.md (*Enqueueing from another language*) is
enough: a job sealed with the envelope functions and written with one plain SQL INSERT
(no vaultq broker call) runs in a real worker, and its result is read back with the
documented SELECT and opened."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import running_worker

import vaultq
from vaultq.envelope import JobMeta, new_job_id, open_result, seal_job


class Num(msgspec.Struct, frozen=True):
    n: int


def _insert(path: Path, row: tuple[object, ...]) -> None:
    with sqlite3.connect(path, timeout=10) as db:
        db.execute(
            "INSERT INTO vaultq_jobs (namespace, queue, job_id, envelope, not_before, enqueued_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            row,
        )
    db.close()


def _result(path: Path, job_id: str) -> bytes | None:
    db = sqlite3.connect(path, timeout=10)
    try:
        row = db.execute(
            "SELECT data FROM vaultq_results "
            "WHERE namespace = ? AND queue = ? AND job_id = ? AND expires_at > ?",
            ("foreign", "default", job_id, time.time()),
        ).fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


@pytest.mark.anyio
async def test_job_inserted_with_plain_sql_runs_and_its_result_is_read_with_sql(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    keyring = vaultq.Keyring.generate()
    app = vaultq.App("foreign", broker=f"sqlite:///{path}", keyring=keyring)

    @app.task(name="double")
    def double(job: Num) -> int:
        return job.n * 2

    now = time.time()
    job_id = new_job_id(now)
    envelope = seal_job(
        keyring,
        job_id=job_id,
        app="foreign",
        task=double.name,
        queue="default",
        payload=b'{"n":21}',
        principal=None,
        meta=JobMeta(),
        issued_at=now,
        not_before=now,
        expires_at=now + 3600,
    )
    async with running_worker(app):  # the worker's broker creates the schema
        await anyio.to_thread.run_sync(
            _insert, path, ("foreign", "default", job_id, envelope, now, now)
        )
        data = None
        with anyio.fail_after(30):
            while data is None:
                await anyio.sleep(0.05)
                data = await anyio.to_thread.run_sync(_result, path, job_id)
    body = open_result(data, keyring, app="foreign", job_id=job_id, task=double.name)
    assert body.status == "succeeded"
    assert body.value is not None and msgspec.json.decode(body.value) == 42


# (attempt, enqueued_at) a foreign writer may put in the columns that vaultq never
# delivers (docs/sqlite.md): SQLite keeps any type in any column.
MALFORMED_COLUMNS: list[tuple[object, object]] = [
    ("x1", 1700000000.0),  # text ("1" would be stored as the INTEGER 1: affinity)
    (0, 1700000000.0),
    (-7, 1700000000.0),
    (1.5, 1700000000.0),
    (1_000_000_000, 1700000000.0),
    (2**62, 1700000000.0),
    (1, "later"),
    (1, -1.0),
    (1, float("inf")),
    (1, 1e13),
]


@pytest.mark.anyio
async def test_rows_with_malformed_attempt_or_enqueued_at_are_dead_lettered_not_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    keyring = vaultq.Keyring.generate()
    app = vaultq.App("foreign", broker=f"sqlite:///{path}", keyring=keyring)
    ran: list[int] = []

    @app.task(name="record")
    def record(job: Num) -> int:
        ran.append(job.n)
        return job.n

    now = time.time()
    cases = [*MALFORMED_COLUMNS, (1, now), (5, 0)]
    rows = []
    for n, (attempt, at) in enumerate(cases):
        job_id = new_job_id(now)
        envelope = seal_job(
            keyring,
            job_id=job_id,
            app="foreign",
            task=record.name,
            queue="default",
            payload=msgspec.json.encode(Num(n=n)),
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 3600,
        )
        rows.append((job_id, envelope, attempt, at))

    def insert() -> None:
        with sqlite3.connect(path, timeout=10) as db:
            for job_id, envelope, attempt, at in rows:
                db.execute(
                    "INSERT INTO vaultq_jobs (namespace, queue, job_id, envelope, attempt,"
                    " not_before, enqueued_at) VALUES ('foreign', 'default', ?, ?, ?, ?, ?)",
                    (job_id, envelope, attempt, now, at),
                )
        db.close()

    broker = await app.broker()  # creates the schema
    await anyio.to_thread.run_sync(insert)
    async with running_worker(app):
        with anyio.fail_after(30):
            while len(ran) < 2 or len(await broker.dead_letters("default")) < len(
                MALFORMED_COLUMNS
            ):
                await anyio.sleep(0.05)
    assert sorted(ran) == [len(MALFORMED_COLUMNS), len(MALFORMED_COLUMNS) + 1]
    dead = await broker.dead_letters("default")
    assert {d.job_id for d in dead} == {r[0] for r in rows[: len(MALFORMED_COLUMNS)]}
    for letter in dead:
        assert letter.reason == "rejected:unauthenticated"
        assert "attempt or enqueued_at" in letter.detail
        assert letter.attempt == 0
        assert await broker.retry_dead("default", letter.tag) is None
    await app.aclose()
