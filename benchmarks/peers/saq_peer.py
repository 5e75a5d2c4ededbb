"""SAQ on the private Redis: ``saq.Worker`` in this process (what ``saq`` runs per
process) with ``concurrency`` = ``--concurrency``, or SAQ's default of 10. SAQ's default
JSON serializer; SAQ keeps every finished job (with its result) in Redis. ``Queue.map``
waits for the results, so it is not a bulk enqueue: the second N are enqueued one by one,
untimed. The latency client uses ``Queue.apply`` (enqueue, then wait for the job to finish)
with ``poll_interval=0.005``: its default of 0.5 s would be most of what is measured.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import _common
from saq import Queue, Worker

POLL = 0.005  # Queue.apply polls the job status every 0.5 s by default


async def noop(ctx: dict[str, Any], *, n: int) -> None:
    await _common.Body.done_async()


async def produce(url: str, n: int) -> None:
    queue = Queue.from_url(url)
    await queue.connect()
    t0 = time.perf_counter()
    for i in range(n):
        await queue.enqueue("noop", n=i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        await queue.enqueue("noop", n=i)
    await queue.disconnect()
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


async def fill(url: str, n: int) -> None:
    queue = Queue.from_url(url)
    await queue.connect()
    for i in range(n):
        await queue.enqueue("noop", n=i)
    await queue.disconnect()
    _common.emit({"queued": n})


async def worker(url: str, concurrency: int) -> None:
    options = {"concurrency": concurrency} if concurrency else {}
    await Worker(Queue.from_url(url), functions=[noop], **options).start()


async def latency(url: str, samples: int) -> None:
    queue = Queue.from_url(url)
    await queue.connect()
    await queue.apply("noop", timeout=_common.WARMUP_TIMEOUT, poll_interval=POLL, n=-1)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        await queue.apply("noop", timeout=10, poll_interval=POLL, n=i)
        out.append(time.perf_counter() - t0)
    await queue.disconnect()
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
