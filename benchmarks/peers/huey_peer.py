"""Huey: ``RedisHuey`` on the private Redis, or ``SqliteHuey`` on a file (``--url sqlite:///p``).

One consumer process (``huey.create_consumer(...).run()`` in this process, what
``huey_consumer`` runs) with ``workers`` = ``--concurrency`` thread workers, or huey's
default of one worker. A JSON serializer replaces huey's pickle one. ``store_none=True``
so every job writes a result, as in vaultq. RedisHuey uses a blocking dequeue (BRPOP,
huey's default) and ``notify_result=True`` so ``Result.get(blocking=True)`` waits with
BLPOP instead of polling. SqliteHuey runs WAL with ``synchronous=FULL`` (``fsync=True``),
vaultq's SQLite defaults; it has no blocking read, so at a given concurrency its consumer
polls with vaultq's SQLite schedule (2 ms growing by 1.25x to 100 ms) and the latency
client polls the result store on the same schedule (huey's own blocking get starts at
50 ms). With ``--concurrency 0`` the consumer keeps huey's defaults. ``Task.map`` is a
loop over single enqueues, so there is no bulk figure.
"""

from __future__ import annotations

import json
import time
from typing import Any

import _common
from huey import RedisHuey, SqliteHuey
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
        _common.Body.done_sync()

    return huey, noop


def produce(url: str, n: int) -> None:
    _, noop = setup(url)
    t0 = time.perf_counter()
    for i in range(n):
        noop(i)
    single = _common.rate(n, time.perf_counter() - t0)
    for i in range(n, 2 * n):
        noop(i)
    _common.emit({"enqueue": single, "bulk": None, "queued": 2 * n})


def fill(url: str, n: int) -> None:
    _, noop = setup(url)
    for i in range(n):
        noop(i)
    _common.emit({"queued": n})


def worker(url: str, concurrency: int) -> None:
    huey, _ = setup(url)
    options: dict[str, Any] = {"periodic": False}
    if concurrency:
        options.update(
            workers=concurrency,
            worker_type="thread",
            initial_delay=POLL_MIN,
            backoff=POLL_FACTOR,
            max_delay=POLL_MAX,
        )
    huey.create_consumer(**options).run()


def latency(url: str, samples: int) -> None:
    _, noop = setup(url)
    sqlite = url.startswith("sqlite:///")

    def wait(result: Any, timeout: float) -> None:
        if not sqlite:
            result.get(blocking=True, timeout=timeout)
            return
        delay, deadline = POLL_MIN, time.monotonic() + timeout
        while not result.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("no result")
            time.sleep(delay)
            delay = min(delay * POLL_FACTOR, POLL_MAX)
        result.get()

    wait(noop(-1), _common.WARMUP_TIMEOUT)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        wait(noop(i), 10)
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
