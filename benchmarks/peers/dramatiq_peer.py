"""Dramatiq with the private Redis broker, its default JSON encoder and default middleware.

One worker process (``dramatiq.Worker`` started in this process, the same thing the CLI
runs per process) with ``worker_threads`` = vaultq's concurrency. Results are stored
for every job (``Results`` middleware, Redis backend, ``store_results=True``). The idle
consumer polls Redis with dramatiq's backoff (5 ms doubling up to ``worker_timeout``,
1 s by default), left at its defaults. No bulk enqueue at the broker:
``group(...).run()`` in chunks of 1000 is timed as "bulk".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import _common
import dramatiq
from dramatiq import Worker, group
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend


class Hooks(Middleware):
    def __init__(self, on_boot: Any = None, on_ack: Any = None) -> None:
        self.on_boot = on_boot
        self.on_ack = on_ack

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        if self.on_boot is not None:
            self.on_boot()

    def after_ack(self, broker: Any, message: Any) -> None:
        if self.on_ack is not None:
            self.on_ack()


def setup(url: str, hooks: Hooks | None = None) -> Any:
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=RedisBackend(url=url)))
    if hooks is not None:
        broker.add_middleware(hooks)
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", store_results=True, max_retries=0)
    def noop(n: int) -> None:
        return None

    return noop


def run_worker(concurrency: int) -> None:
    worker = Worker(dramatiq.get_broker(), worker_threads=concurrency)
    worker.start()
    threading.Event().wait()  # until the Completion thread or a signal ends the process


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


def drain(url: str, n: int, concurrency: int) -> None:
    done = _common.Completion(n)
    setup(url, Hooks(on_boot=done.start, on_ack=done.hit))
    run_worker(concurrency)


def serve(url: str, concurrency: int) -> None:
    setup(url, Hooks(on_boot=_common.ready))
    run_worker(concurrency)


def latency(url: str, samples: int) -> None:
    noop = setup(url)
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
    elif args.mode == "drain":
        drain(args.url, args.n, args.concurrency)
    elif args.mode == "serve":
        serve(args.url, args.concurrency)
    else:
        latency(args.url, args.samples)


if __name__ == "__main__":
    main()
