"""streaq on the private Redis (Redis streams and consumer groups, through coredis):
``Worker.run_async()`` in this process (what ``streaq`` runs per process) with
``concurrency`` = ``--concurrency``, or streaq's default of 16. JSON serializer (streaq's
default is pickle). streaq stores every result. "bulk" is ``Worker.enqueue_many`` (one
pipeline) in chunks of 1000. The latency client awaits ``Task.result()``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import _common
from streaq import Worker


def setup(url: str, concurrency: int = 0) -> tuple[Any, Any]:
    options = {"concurrency": concurrency} if concurrency else {}
    worker = Worker(
        redis_url=url,
        serializer=json.dumps,
        deserializer=json.loads,
        handle_signals=False,
        **options,
    )

    @worker.task()
    async def noop(n: int) -> None:
        await _common.Body.done_async()

    return worker, noop


async def produce(url: str, n: int) -> None:
    worker, noop = setup(url)
    async with worker:
        t0 = time.perf_counter()
        for i in range(n):
            await noop.enqueue(i)
        single = _common.rate(n, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(n, 2 * n, 1000):
            await worker.enqueue_many(
                [noop.enqueue(i) for i in range(start, min(2 * n, start + 1000))]
            )
        bulk = _common.rate(n, time.perf_counter() - t0)
    _common.emit({"enqueue": single, "bulk": bulk, "queued": 2 * n})


async def fill(url: str, n: int) -> None:
    worker, noop = setup(url)
    async with worker:
        for start in range(0, n, 1000):
            await worker.enqueue_many([noop.enqueue(i) for i in range(start, min(n, start + 1000))])
    _common.emit({"queued": n})


async def run_worker(url: str, concurrency: int) -> None:
    worker, _ = setup(url, concurrency)
    await worker.run_async()


async def latency(url: str, samples: int) -> None:
    worker, noop = setup(url)
    async with worker:
        task = await noop.enqueue(-1)
        await task.result(timeout=int(_common.WARMUP_TIMEOUT))
        out: list[float] = []
        for i in range(samples):
            t0 = time.perf_counter()
            task = await noop.enqueue(i)
            await task.result(timeout=10)
            out.append(time.perf_counter() - t0)
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    if args.mode == "produce":
        asyncio.run(produce(args.url, args.n))
    elif args.mode == "fill":
        asyncio.run(fill(args.url, args.n))
    elif args.mode == "worker":
        asyncio.run(run_worker(args.url, args.concurrency))
    else:
        asyncio.run(latency(args.url, args.samples))


if __name__ == "__main__":
    main()
