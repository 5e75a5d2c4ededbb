"""arq on the private Redis: asyncio worker with ``max_jobs`` = vaultq's concurrency.

JSON job/result serializer (arq's default is pickle). Results are kept (arq's default,
``keep_result=3600``), so every job writes a result key, as vaultq does. arq has no
blocking read: its worker and ``Job.result`` poll, 0.5 s by default, which would make the
drain wait on the poll timer and put ~0.5 s on every latency sample; both are set to
``POLL`` here. arq has no bulk enqueue: the second N are enqueued one by one, untimed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import _common
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

POLL = 0.005


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


async def noop(ctx: dict[str, Any], n: int) -> None:
    return None


def make_worker(url: str, concurrency: int, **hooks: Any) -> Worker:
    return Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=concurrency,
        poll_delay=POLL,
        job_serializer=dumps,
        job_deserializer=json.loads,
        handle_signals=False,
        log_results=False,
        **hooks,
    )


async def produce(url: str, n: int) -> None:
    pool = await create_pool(
        RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=json.loads
    )
    t0 = time.perf_counter()
    for i in range(n):
        await pool.enqueue_job("noop", i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        await pool.enqueue_job("noop", i)
    await pool.aclose()
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


async def drain(url: str, n: int, concurrency: int) -> None:
    done = _common.Completion(n)

    async def on_startup(ctx: dict[str, Any]) -> None:
        done.start()

    async def after_job_end(ctx: dict[str, Any]) -> None:
        done.hit()

    worker = make_worker(url, concurrency, on_startup=on_startup, after_job_end=after_job_end)
    await worker.async_run()


async def serve(url: str, concurrency: int) -> None:
    async def on_startup(ctx: dict[str, Any]) -> None:
        _common.ready()

    await make_worker(url, concurrency, on_startup=on_startup).async_run()


async def latency(url: str, samples: int) -> None:
    pool = await create_pool(
        RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=json.loads
    )
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        job = await pool.enqueue_job("noop", i)
        assert job is not None
        await job.result(timeout=10, poll_delay=POLL)
        out.append(time.perf_counter() - t0)
    await pool.aclose()
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    if args.mode == "produce":
        asyncio.run(produce(args.url, args.n))
    elif args.mode == "drain":
        asyncio.run(drain(args.url, args.n, args.concurrency))
    elif args.mode == "serve":
        asyncio.run(serve(args.url, args.concurrency))
    else:
        asyncio.run(latency(args.url, args.samples))


if __name__ == "__main__":
    main()
