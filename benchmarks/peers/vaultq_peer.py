"""vaultq's driver, run by the interpreter of vaultq's own venv (``sys.executable`` of
``benchmarks/throughput.py``), with the same phases as the peers' drivers.

The keyring comes from ``$BENCH_KEYS`` (hmac-sha256 or ed25519, made by the parent).
``$BENCH_BATCH_SIGNATURES=1`` (the ``vaultq-ed25519-batch`` row) turns on
``App(batch_signatures=True)``: each ``enqueue_many`` call is signed once (a Merkle root);
``produce`` then queues all its jobs through ``enqueue_many``, so that the drain is of
batch-signed jobs only (one-by-one enqueues are signed one by one either way: their
figures are the ``vaultq-ed25519`` row's).
``worker`` runs ``vaultq.Worker`` in this process at ``--concurrency`` or vaultq's
default, with ``block=1.0`` as ``vaultq worker`` does. For ``--processes N`` the parent
runs the real ``vaultq worker --processes N`` CLI with ``app`` below, which reads
``$BENCH_URL``, ``$BENCH_COUNTER`` and ``$BENCH_SLEEP_MS``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import _common

import vaultq
from vaultq.runtime.worker import Worker


class Noop(msgspec.Struct, frozen=True):
    n: int


BATCH_SIGNATURES = os.environ.get("BENCH_BATCH_SIGNATURES") == "1"


def make_app(url: str) -> tuple[vaultq.App, Any]:
    app = vaultq.App(
        "bench",
        broker=url,
        keyring=vaultq.Keyring.from_json(os.environ["BENCH_KEYS"]),
        batch_signatures=BATCH_SIGNATURES,
    )

    @app.task(name="bench.noop")
    async def noop(job: Noop) -> None:
        await _common.Body.done_async()

    return app, noop


if os.environ.get("BENCH_URL"):  # `vaultq worker vaultq_peer:app` (the --processes runs)
    _common.Body.counter_url = os.environ["BENCH_COUNTER"]
    _common.Body.sleep = float(os.environ.get("BENCH_SLEEP_MS", "0")) / 1000
    app, _ = make_app(os.environ["BENCH_URL"])


async def produce(url: str, n: int) -> dict[str, Any]:
    if BATCH_SIGNATURES:
        return await produce_batches(url, n)
    app, noop = make_app(url)
    t0 = time.perf_counter()
    for i in range(n):
        await noop.enqueue(Noop(i))
    single = _common.rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(n, 2 * n, 1000):
        await noop.enqueue_many(Noop(i) for i in range(start, min(2 * n, start + 1000)))
    bulk = _common.rate(n, time.perf_counter() - t0)
    # 100 coroutines enqueueing at once, each one job at a time (calls coalesce)
    per = max(n // 100, 1)

    async def one_by_one(first: int) -> None:
        for i in range(first, first + per):
            await noop.enqueue(Noop(i))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(100):
            tg.start_soon(one_by_one, 2 * n + k * per)
    c100 = _common.rate(100 * per, time.perf_counter() - t0)
    await app.aclose()
    return {"enqueue": single, "bulk": bulk, "enqueue_c100": c100, "queued": 2 * n + 100 * per}


async def produce_batches(url: str, n: int) -> dict[str, Any]:
    """As many jobs as ``produce`` queues (3n), all through ``enqueue_many``, 1000 a call."""
    app, noop = make_app(url)
    total = 3 * n
    t0 = time.perf_counter()
    for start in range(0, total, 1000):
        await noop.enqueue_many(Noop(i) for i in range(start, min(total, start + 1000)))
    bulk = _common.rate(total, time.perf_counter() - t0)
    await app.aclose()
    return {"bulk": bulk, "queued": total}


def produce_sync(url: str, n: int) -> float:
    """``enqueue_sync`` one by one from a thread with no event loop, as a Django view."""
    app, noop = make_app(url)
    noop.enqueue_sync(Noop(-2))  # the first call starts the app's machinery: not timed
    t0 = time.perf_counter()
    for i in range(n):
        noop.enqueue_sync(Noop(i))
    elapsed = time.perf_counter() - t0
    app.close()
    return _common.rate(n, elapsed)


async def fill(url: str, n: int) -> None:
    app, noop = make_app(url)
    for start in range(0, n, 1000):
        await noop.enqueue_many(Noop(i) for i in range(start, min(n, start + 1000)))
    await app.aclose()
    _common.emit({"queued": n})


async def worker(url: str, concurrency: int) -> None:
    app, _ = make_app(url)
    options = {"concurrency": concurrency} if concurrency else {}
    await Worker(app, block=1.0, **options).run()


async def latency(url: str, samples: int) -> None:
    app, noop = make_app(url)
    handle = await noop.enqueue(Noop(-1))
    await handle.result(timeout=_common.WARMUP_TIMEOUT)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        handle = await noop.enqueue(Noop(i))
        await handle.result(timeout=10)
        out.append(time.perf_counter() - t0)
    await app.aclose()
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    backend = {"use_uvloop": args.loop == "uvloop"}
    if args.mode == "produce":
        figures = anyio.run(produce, args.url, args.n, backend_options=backend)
        if args.sync:
            figures["enqueue_sync"] = produce_sync(args.url, args.n)
            figures["queued"] += args.n + 1
        _common.emit(figures)
    elif args.mode == "fill":
        anyio.run(fill, args.url, args.n, backend_options=backend)
    elif args.mode == "worker":
        anyio.run(worker, args.url, args.concurrency, backend_options=backend)
    else:
        anyio.run(latency, args.url, args.samples, backend_options=backend)


if __name__ == "__main__":
    main()
