"""Dramatiq with the private Redis broker, its default JSON encoder and default middleware.

One worker process: ``dramatiq.Worker`` started in this process (what the CLI runs per
process) with ``worker_threads`` = ``--concurrency``, or dramatiq's default of 8 threads.
(The ``dramatiq`` CLI starts one process per CPU by default; one process is measured
here, like every other system.) Results are stored for every job (``Results``
middleware, Redis backend, ``store_results=True``). The idle consumer polls Redis with
dramatiq's backoff (5 ms doubling up to ``worker_timeout``, 1 s by default), left at its
defaults. No bulk enqueue at the broker: ``group(...).run()`` in chunks of 1000 is timed
as "bulk".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import _common
import dramatiq
from dramatiq import Worker, group
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend


def setup(url: str) -> Any:
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", store_results=True, max_retries=0)
    def noop(n: int) -> None:
        _common.Body.done_sync()

    return noop


def produce(url: str, n: int) -> None:
    noop = setup(url)
    t0 = time.perf_counter()
    for i in range(n):
        noop.send(i)
    single = _common.rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(n, 2 * n, 1000):
        group(noop.message(i) for i in range(start, min(2 * n, start + 1000))).run()
    bulk = _common.rate(n, time.perf_counter() - t0)
    _common.emit({"enqueue": single, "bulk": bulk, "queued": 2 * n})


def fill(url: str, n: int) -> None:
    noop = setup(url)
    for start in range(0, n, 1000):
        group(noop.message(i) for i in range(start, min(n, start + 1000))).run()
    _common.emit({"queued": n})


def worker(url: str, concurrency: int) -> None:
    setup(url)
    options = {"worker_threads": concurrency} if concurrency else {}
    Worker(dramatiq.get_broker(), **options).start()
    threading.Event().wait()  # until the parent ends the process


def latency(url: str, samples: int) -> None:
    noop = setup(url)
    noop.send(-1).get_result(block=True, timeout=int(_common.WARMUP_TIMEOUT * 1000))
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        noop.send(i).get_result(block=True, timeout=10_000)
        out.append(time.perf_counter() - t0)
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    if args.mode == "produce":
        produce(args.url, args.n)
    elif args.mode == "fill":
        fill(args.url, args.n)
    elif args.mode == "worker":
        worker(args.url, args.concurrency)
    else:
        latency(args.url, args.samples)


if __name__ == "__main__":
    main()
