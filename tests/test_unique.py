"""Unique jobs: ``enqueue(unique_key=...)`` and ``@app.task(unique=...)`` on real brokers
(Redis, SQLite, memory), and 50 concurrent enqueues from several processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import (
    ROOT,
    make_app,
    running_worker,
    start_worker_process,
    wait_until_serving,
    worker_env,
)

import vaultq
from vaultq.middleware import EnqueueInfo, Middleware

pytestmark = pytest.mark.anyio


class Invoice(msgspec.Struct, frozen=True):
    invoice_id: int
    note: str = ""


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


def new_app(url: str, name: str) -> tuple[vaultq.App, vaultq.Task[Invoice, int]]:
    app = make_app(name, url)

    @app.task(name="send", unique=lambda p: f"invoice:{p.invoice_id}")
    async def send(p: Invoice) -> int:
        return p.invoice_id

    return app, send


async def queued(app: vaultq.App, queue: str = "default") -> list[str]:
    broker = await app.broker()
    return [e.job_id for e in await broker.queued(queue)]


async def test_a_second_enqueue_returns_the_live_job(url: str, unique_name: str) -> None:
    app = make_app(unique_name, url)

    @app.task(name="pay")
    async def pay(p: Invoice) -> int:
        return p.invoice_id

    first = await pay.enqueue(Invoice(1), unique_key="invoice:1")
    again = await pay.enqueue(Invoice(1, "retry"), unique_key="invoice:1")
    assert again.id == first.id
    other = await pay.enqueue(Invoice(2), unique_key="invoice:2")
    plain = await pay.enqueue(Invoice(1))  # no key: not unique
    with pytest.raises(vaultq.DuplicateJob) as raised:
        await pay.enqueue(Invoice(1), unique_key="invoice:1", on_duplicate="raise")
    assert raised.value.job_id == first.id
    assert sorted(await queued(app)) == sorted([first.id, other.id, plain.id])
    # the key is free again once the job settles
    async with running_worker(app):
        assert await first.result(timeout=20) == 1
    after = await pay.enqueue(Invoice(1), unique_key="invoice:1")
    assert after.id != first.id
    await app.aclose()


async def test_the_task_derives_the_key_and_enqueue_many_honours_it(
    url: str, unique_name: str
) -> None:
    app, send = new_app(url, unique_name)
    handles = await send.enqueue_many([Invoice(7), Invoice(8), Invoice(7, "dup")])
    assert handles[2].id == handles[0].id != handles[1].id
    assert sorted(await queued(app)) == sorted([handles[0].id, handles[1].id])
    assert (await send.enqueue(Invoice(8))).id == handles[1].id

    # two tasks may use the same key independently
    @app.task(name="other", unique=lambda p: f"invoice:{p.invoice_id}")
    async def other(p: Invoice) -> int:
        return 0

    assert (await other.enqueue(Invoice(7))).id != handles[0].id
    await app.aclose()


async def test_unique_for_bounds_how_long_a_key_is_held(url: str, unique_name: str) -> None:
    app, send = new_app(url, unique_name)
    first = await send.enqueue(Invoice(3), unique_for=0.3)
    assert (await send.enqueue(Invoice(3))).id == first.id
    await anyio.sleep(0.5)
    second = await send.enqueue(Invoice(3))  # the first is still queued, the key lapsed
    assert second.id != first.id
    assert sorted(await queued(app)) == sorted([first.id, second.id])
    await app.aclose()


async def test_a_delayed_job_holds_its_key(url: str, unique_name: str) -> None:
    app, send = new_app(url, unique_name)
    first = await send.enqueue(Invoice(4), delay=60)
    assert (await send.enqueue(Invoice(4))).id == first.id
    await app.aclose()


async def test_enqueue_hooks_hear_of_a_duplicate(url: str, unique_name: str) -> None:
    heard: list[tuple[str, str | None]] = []

    class Listen(Middleware):
        def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
            heard.append((job.job_id, error))

    app, send = new_app(url, unique_name)
    app.add_middleware(Listen())
    first = await send.enqueue(Invoice(5))
    second = await send.enqueue(Invoice(5))
    assert second.id == first.id
    assert heard[0] == (first.id, None)
    assert heard[1][0] != first.id and heard[1][1] == "DuplicateJob"
    await app.aclose()


def test_bad_unique_options_are_refused(tmp_path: Path, unique_name: str) -> None:
    app, send = new_app(f"sqlite:///{tmp_path}/vaultq.db", unique_name)
    with pytest.raises(vaultq.ConfigurationError, match="unique_for"):
        send.enqueue_sync(Invoice(1), unique_for=0)
    with pytest.raises(vaultq.ConfigurationError, match="on_duplicate"):
        send.enqueue_sync(Invoice(1), on_duplicate="ignore")  # type: ignore[arg-type]
    with pytest.raises(vaultq.ConfigurationError, match="unique key is a non-empty string"):
        send.enqueue_sync(Invoice(1), unique_key="")
    with pytest.raises(vaultq.TaskDefinitionError, match="unique= must be a function"):
        app.task(name="bad", unique="invoice")(lambda p: None)  # type: ignore[call-overload]
    app.close()


# -- across processes ---------------------------------------------------------------------

PRODUCER = textwrap.dedent(
    """
    import anyio, json, sys
    import unique_app

    async def main():
        ids = []
        async def one(n):
            h = await unique_app.send.enqueue(unique_app.Invoice(42, f"{sys.argv[1]}-{n}"))
            ids.append(h.id)
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(one, n)
        print(json.dumps(ids))

    anyio.run(main)
    """
)


def produce(env: dict[str, str], count: int) -> set[str]:
    """``count`` processes, each 10 concurrent enqueues of invoice 42; the ids they got."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(i)],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(count)
    ]
    ids: set[str] = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        ids |= set(json.loads(out))
    return ids


@pytest.mark.slow
@pytest.mark.other_processes
def test_50_concurrent_enqueues_from_5_processes_make_one_job_released_by_settle_and_lease(
    broker_url: str, tmp_path: Path, unique_name: str
) -> None:
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "UNIQUE_APP": unique_name,
            "UNIQUE_LOG": str(tmp_path / "runs.log"),
        }
    )
    (first,) = produce(env, 5)  # 50 enqueues, one job
    # A worker runs it (2 s); SIGKILL mid-run: the key stays held while the job waits out
    # its lease, then another worker runs it to the end and the key is free again.
    worker = start_worker_process("unique_app", env, "--lease", "2")
    wait_until_serving([worker])
    deadline = time.monotonic() + 30
    while not (tmp_path / "runs.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert produce(env, 2) == {first}  # still running (as far as the broker knows)
    second_worker = start_worker_process("unique_app", env, "--lease", "2")
    try:
        deadline = time.monotonic() + 60
        while (tmp_path / "runs.log").read_text().count("done") < 1:
            assert time.monotonic() < deadline, (tmp_path / "runs.log").read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # the settlement is written right after the task returns
        again = produce(env, 2)
        assert len(again) == 1 and again != {first}
    finally:
        second_worker.terminate()
        second_worker.wait(timeout=30)
