"""What every driver shares: the command line, the completion counter, the output.

Drivers run under their own interpreters (``benchmarks/throughput.py`` makes one
virtualenv per peer group, since the peers' pins clash with each other and with vaultq's
venv), so this module is standard library only, plus redis-py imported where used (every
peer venv has it). A driver is called once per phase:

* ``produce --n N [--sync]``: enqueue N no-op jobs one by one (timed), then N more with
  the system's bulk API when it has one (timed), else N more one by one (not timed);
  vaultq with ``--sync`` also times N ``enqueue_sync`` calls. Prints how many it queued;
* ``fill --n N``: queue N jobs, untimed (the sleep workload and the scale runs);
* ``worker [--concurrency C] [--sleep-ms MS]``: run ONE worker process of the system in
  this process until killed. ``--concurrency 0`` (the default) leaves the system's own
  default. The parent counts completions and owns the clock;
* ``latency --samples S``: one warm-up job (waits for the worker to be up), then S jobs
  one at a time, each enqueued and its result awaited.

Completion is counted the same way for every system: the job body does one Redis
``INCR`` of :data:`COUNTER_KEY` on the run's private Redis (``--counter``; sqlite-backed
systems count there too), then sleeps ``--sleep-ms`` if asked. The parent polls that
counter. ``produce``/``fill``/``latency`` print one ``RESULT {json}`` line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

COUNTER_KEY = "bench:done"
WARMUP_TIMEOUT = 120.0


class Body:
    """The job body's side effects: one INCR, then the optional sleep."""

    counter_url = ""
    sleep = 0.0
    _sync: Any = None
    _sync_pid = 0
    _async: Any = None

    @classmethod
    def configure(cls, args: argparse.Namespace) -> None:
        cls.counter_url = args.counter or args.url
        cls.sleep = args.sleep_ms / 1000

    @classmethod
    def done_sync(cls) -> None:
        # One client per process: celery's prefork children inherit the class from the
        # parent, and a connection pool must not be shared across a fork.
        if cls._sync is None or cls._sync_pid != os.getpid():
            import redis

            cls._sync, cls._sync_pid = redis.Redis.from_url(cls.counter_url), os.getpid()
        cls._sync.incr(COUNTER_KEY)
        if cls.sleep:
            time.sleep(cls.sleep)

    @classmethod
    async def done_async(cls) -> None:
        import asyncio

        if cls._async is None:
            import redis.asyncio

            cls._async = redis.asyncio.Redis.from_url(cls.counter_url)
        await cls._async.incr(COUNTER_KEY)
        if cls.sleep:
            await asyncio.sleep(cls.sleep)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "fill", "worker", "latency"])
    parser.add_argument("--url", required=True, help="redis://host:port/db or sqlite:///path")
    parser.add_argument("--counter", default="", help="Redis URL of the completion counter")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=0, help="0: the system's default")
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--sync", action="store_true", help="vaultq: also time enqueue_sync")
    parser.add_argument("--loop", default="asyncio", help="vaultq: asyncio or uvloop")
    args = parser.parse_args()
    Body.configure(args)
    return args


def emit(payload: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 in ms, computed the same way for every system."""
    out = sorted(samples)
    p99 = out[max(int(len(out) * 0.99) - 1, 0)]
    return {"p50_ms": statistics.median(out) * 1000, "p99_ms": p99 * 1000}
