"""taskiq with taskiq-redis: ``RedisStreamBroker`` (a consumer group with acks, the
taskiq-redis broker that does not lose a job whose worker dies, like vaultq's streams)
and ``RedisAsyncResultBackend``, so every result is stored. taskiq's own JSON formatter.

One worker process: taskiq's ``Receiver`` run in this process the way ``taskiq worker``
runs it in each of its processes (the CLI starts 2 by default; one is measured here, like
every other system), with ``max_async_tasks`` = ``--concurrency``, or the CLI's default of
100 async slots, and ``ack_type`` left at "when saved". ``kiq`` has no bulk form: the
second N are enqueued one by one, untimed. The latency client waits with
``wait_result(check_interval=0.005)`` (taskiq polls the result backend; its default
interval is 0.2 s).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _common
from taskiq import TaskiqEvents
from taskiq.receiver import Receiver
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

CLI_DEFAULT_SLOTS = 100  # taskiq worker --max-async-tasks default
POLL = 0.005


def setup(url: str, worker: bool = False) -> tuple[Any, Any]:
    broker: Any = RedisStreamBroker(url).with_result_backend(RedisAsyncResultBackend(url))
    broker.is_worker_process = worker  # set before tasks register, as the CLI does

    @broker.task(task_name="noop")
    async def noop(n: int) -> None:
        await _common.Body.done_async()

    return broker, noop


async def produce(url: str, n: int) -> None:
    broker, noop = setup(url)
    await broker.startup()
    t0 = time.perf_counter()
    for i in range(n):
        await noop.kiq(i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        await noop.kiq(i)
    await broker.shutdown()
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


async def fill(url: str, n: int) -> None:
    broker, noop = setup(url)
    await broker.startup()
    for i in range(n):
        await noop.kiq(i)
    await broker.shutdown()
    _common.emit({"queued": n})


async def worker(url: str, concurrency: int) -> None:
    broker, _ = setup(url, worker=True)

    @broker.on_event(TaskiqEvents.WORKER_STARTUP)
    async def _started(state: Any) -> None:
        return None

    with ThreadPoolExecutor() as pool:
        receiver = Receiver(
            broker=broker, executor=pool, max_async_tasks=concurrency or CLI_DEFAULT_SLOTS
        )
        await receiver.listen(asyncio.Event())


async def latency(url: str, samples: int) -> None:
    broker, noop = setup(url)
    await broker.startup()
    task = await noop.kiq(-1)
    await task.wait_result(check_interval=POLL, timeout=_common.WARMUP_TIMEOUT)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        task = await noop.kiq(i)
        await task.wait_result(check_interval=POLL, timeout=10)
        out.append(time.perf_counter() - t0)
    await broker.shutdown()
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
