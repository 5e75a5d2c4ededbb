"""Huey: ``RedisHuey`` on the private Redis, or ``SqliteHuey`` on a file (``--url sqlite:///p``).

One consumer process (``huey.create_consumer(...).run()`` in this process, what
``huey_consumer`` runs) with ``workers`` = vaultq's concurrency, thread workers. A JSON
serializer replaces huey's pickle one. ``store_none=True`` so every job writes a result,
as in vaultq. RedisHuey uses a blocking dequeue (BRPOP, huey's default) and
``notify_result=True`` so ``Result.get(blocking=True)`` waits with BLPOP instead of
polling. SqliteHuey runs WAL with ``synchronous=FULL`` (``fsync=True``), vaultq's SQLite
defaults; it has no blocking read, so its consumer polls with vaultq's SQLite schedule
(10 ms doubling to 200 ms), and the latency client polls the result store on the same
schedule (huey's own blocking get starts at 50 ms). ``Task.map`` is a loop over single
enqueues, so there is no bulk figure.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import _common
from huey import RedisHuey, SqliteHuey, signals
from huey.registry import Message
from huey.serializer import Serializer

# vaultq's SQLite polling schedule (vaultq/brokers/sqlite.py), for a like-for-like latency.
POLL_MIN, POLL_MAX, POLL_FACTOR = 0.002, 0.1, 1.25


class JSONSerializer(Serializer):
    def _serialize(self, data: Any) -> bytes:
        if isinstance(data, Message):
            return json.dumps({"m": list(data)}).encode()
        return json.dumps({"v": data}).encode()

    def _deserialize(self, data: bytes) -> Any:
        obj = json.loads(data)
        return Message(*obj["m"]) if "m" in obj else obj["v"]


def setup(url: str) -> tuple[Any, Any]:
    common: dict[str, Any] = {"serializer": JSONSerializer(), "store_none": True}
    if url.startswith("sqlite:///"):
        huey: Any = SqliteHuey(
            "bench", filename=url.removeprefix("sqlite:///"), fsync=True, **common
        )
    else:
        huey = RedisHuey("bench", url=url, notify_result=True, **common)

    @huey.task(name="noop")
    def noop(n: int) -> None:
        return None

    return huey, noop


def run_consumer(huey: Any, concurrency: int, on_ready: Any, on_complete: Any = None) -> None:
    once = threading.Lock()

    @huey.on_startup()
    def _started() -> None:  # each worker thread calls it; the first one starts the clock
        if once.acquire(blocking=False):
            on_ready()

    if on_complete is not None:

        @huey.signal(signals.SIGNAL_COMPLETE)
        def _complete(signal: str, task: Any) -> None:
            on_complete()

    consumer = huey.create_consumer(
        workers=concurrency,
        worker_type="thread",
        periodic=False,
        initial_delay=POLL_MIN,
        backoff=POLL_FACTOR,
        max_delay=POLL_MAX,
    )
    consumer.run()


def produce(url: str, n: int) -> None:
    _, noop = setup(url)
    t0 = time.perf_counter()
    for i in range(n):
        noop(i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        noop(i)
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


def drain(url: str, n: int, concurrency: int) -> None:
    huey, _ = setup(url)
    done = _common.Completion(n)
    run_consumer(huey, concurrency, done.start, done.hit)


def serve(url: str, concurrency: int) -> None:
    huey, _ = setup(url)
    run_consumer(huey, concurrency, _common.ready)


def latency(url: str, samples: int) -> None:
    _, noop = setup(url)
    sqlite = url.startswith("sqlite:///")
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        result = noop(i)
        if sqlite:
            delay = POLL_MIN
            while not result.is_ready():
                time.sleep(delay)
                delay = min(delay * POLL_FACTOR, POLL_MAX)
            result.get()
        else:
            result.get(blocking=True, timeout=10)
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
