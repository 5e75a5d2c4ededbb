"""A worker's default concurrency (config.default_concurrency, docs/worker.md): 100 jobs at
once when every task of the app is async, 10 when any task is sync (each sync job holds a
thread); an explicit concurrency always wins. The figures behind the choice are in
docs/benchmarks.md ("Default concurrency")."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq import config
from vaultq.runtime.worker import Worker

pytestmark = pytest.mark.anyio

AT_ONCE = 40  # more than the old default of 10, so the jobs below could not all meet


class Item(msgspec.Struct, frozen=True):
    n: int


async def test_async_only_app_runs_more_than_ten_jobs_at_once_by_default(
    broker_url: str, unique_name: str
) -> None:
    app = make_app(unique_name, broker_url)
    running = peak = 0
    all_in = anyio.Event()

    @app.task(name="io.wait")
    async def wait(job: Item) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == AT_ONCE:
            all_in.set()
        with anyio.fail_after(30):  # with 10 slots the 11th job never starts: fail, not hang
            await all_in.wait()
        running -= 1
        return job.n

    async with running_worker(app, concurrency=None) as worker:
        assert worker.concurrency == config.DEFAULT_ASYNC_CONCURRENCY == 100
        handles = await wait.enqueue_many(Item(i) for i in range(AT_ONCE))
        results = [await h.result(timeout=40) for h in handles]
    assert results == list(range(AT_ONCE))
    assert peak == AT_ONCE
    await app.aclose()


def test_any_sync_task_keeps_ten_and_an_explicit_concurrency_wins() -> None:
    app = vaultq.App("conc", broker="memory://", keyring=vaultq.Keyring.generate())
    assert Worker(app).concurrency == config.DEFAULT_CONCURRENCY == 10  # no task yet

    @app.task(name="a")
    async def a(job: Item) -> None:
        return None

    assert Worker(app).concurrency == 100

    @app.task(name="s")
    def s(job: Item) -> None:
        return None

    assert Worker(app).concurrency == 10
    assert Worker(app, concurrency=7).concurrency == 7
    with pytest.raises(vaultq.VaultqError, match="concurrency >= 1"):
        Worker(app, concurrency=0)
