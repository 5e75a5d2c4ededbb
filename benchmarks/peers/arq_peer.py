"""arq on the private Redis: asyncio worker with ``max_jobs`` = ``--concurrency`` (arq's
default, 10, with ``--concurrency 0``).

JSON job/result serializer (arq's default is pickle). Results are kept (arq's default,
``keep_result=3600``), so every job writes a result key, as vaultq does. arq has no
blocking read: its worker and ``Job.result`` poll, 0.5 s by default. At a given
concurrency both are set to ``POLL`` (5 ms), since the 0.5 s timer would otherwise be
most of what is measured; in defaults mode the worker keeps arq's 0.5 s. arq has no bulk
enqueue: the second N are enqueued one by one, untimed.
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
    await _common.Body.done_async()


async def pool(url: str) -> Any:
    return await create_pool(
        RedisSettings.from_dsn(url), job_serializer=dumps, job_deserializer=json.loads
    )


async def produce(url: str, n: int) -> None:
    redis = await pool(url)
    t0 = time.perf_counter()
    for i in range(n):
        await redis.enqueue_job("noop", i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        await redis.enqueue_job("noop", i)
    await redis.aclose()
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


async def fill(url: str, n: int) -> None:
    redis = await pool(url)
    for i in range(n):
        await redis.enqueue_job("noop", i)
    await redis.aclose()
    _common.emit({"queued": n})


async def worker(url: str, concurrency: int) -> None:
    options: dict[str, Any] = {"max_jobs": concurrency, "poll_delay": POLL} if concurrency else {}
    await Worker(
        functions=[noop],
        redis_settings=RedisSettings.from_dsn(url),
        job_serializer=dumps,
        job_deserializer=json.loads,
        handle_signals=False,
        log_results=False,
        **options,
    ).async_run()


async def latency(url: str, samples: int) -> None:
    redis = await pool(url)
    job = await redis.enqueue_job("noop", -1)
    assert job is not None
    await job.result(timeout=_common.WARMUP_TIMEOUT, poll_delay=POLL)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        job = await redis.enqueue_job("noop", i)
        assert job is not None
        await job.result(timeout=10, poll_delay=POLL)
        out.append(time.perf_counter() - t0)
    await redis.aclose()
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    if args.mode == "produce":
        asyncio.run(produce(args.url, args.n))
    elif args.mode == "fill":
        asyncio.run(fill(args.url, args.n))
    elif args.mode == "worker":
        asyncio.run(worker(args.url, args.concurrency))
    else:
        asyncio.run(latency(args.url, args.samples))


if __name__ == "__main__":
    main()
