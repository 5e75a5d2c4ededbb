"""Enqueue one by one from sync code, vaultq against huey in the same run; and the async
enqueue figures of issue 15 (100 coroutines at once, ``enqueue_many``).

    .venv/bin/pip install -r benchmarks/requirements.txt   # huey, for the comparison
    .venv/bin/python benchmarks/enqueue_sync.py [--n 3000] [--rounds 3] [--async-n 20000]

Every variant runs in this process, one after the other, in alternating rounds; the
figures are medians of the rounds: jobs/s (wall) and CPU µs per job (this process, every
thread: ``time.process_time``). Redis is a private ``redis-server`` on a free port
(FLUSHALLed between variants); SQLite is a fresh file per variant in a temporary
directory, with each system's default durability (vaultq ``synchronous=full``; huey's
SqliteHuey leaves SQLite's default, FULL) plus vaultq at ``synchronous=normal``.

The variants (no-op task, every check on: sealing with hmac, the default policy audited,
the typed payload check):

* ``vaultq enqueue_sync`` -- ``task.enqueue_sync(payload)``: the native sync path (the
  calling thread writes through the broker's synchronous writer);
* ``vaultq via loop thread`` -- ``app.run_sync(task.enqueue, payload)``: the hop onto
  the app's background event loop that ``enqueue_sync`` used to make;
* ``huey call`` -- huey's plain ``task(n)`` (RedisHuey / SqliteHuey, its defaults);
* ``redis-py LPUSH`` -- a bare synchronous LPUSH of 100 bytes: the floor of any Redis
  producer in Python;
* ``await enqueue x100`` -- 100 coroutines each awaiting ``task.enqueue`` at once
  (group commit shares their pipelines), and ``enqueue_many`` of 1,000 per call.

Figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput

import vaultq


class Item(msgspec.Struct, frozen=True):
    n: int


def make_vaultq(url: str) -> tuple[vaultq.App, Any]:
    app = vaultq.App("bench", broker=url, keyring=vaultq.Keyring.generate())

    @app.task(name="noop")
    def noop(job: Item) -> None:
        return None

    return app, noop


def measure(n: int, fn: Callable[[int], Any]) -> tuple[float, float]:
    """(jobs/s, CPU µs per job) of ``fn(i)`` for i in range(n)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def vaultq_sync(url: str, n: int) -> tuple[float, float]:
    app, task = make_vaultq(url)
    task.enqueue_sync(Item(-1))  # connect, load scripts, measure the clock
    try:
        return measure(n, lambda i: task.enqueue_sync(Item(i)))
    finally:
        app.close()


def vaultq_hop(url: str, n: int) -> tuple[float, float]:
    app, task = make_vaultq(url)
    app.run_sync(task.enqueue, Item(-1))
    try:
        return measure(n, lambda i: app.run_sync(task.enqueue, Item(i)))
    finally:
        app.close()


def huey_call(url: str, n: int) -> tuple[float, float]:
    from huey import RedisHuey, SqliteHuey

    if url.startswith("sqlite:///"):
        huey: Any = SqliteHuey("bench", filename=url.removeprefix("sqlite:///"))
    else:
        huey = RedisHuey("bench", url=url)

    @huey.task(name="noop")
    def noop(n: int) -> None:
        return None

    noop(-1)
    return measure(n, lambda i: noop(i))


def lpush(url: str, n: int) -> tuple[float, float]:
    import redis

    client = redis.Redis.from_url(url)
    body = b"x" * 100
    client.lpush("bench:floor", body)
    try:
        return measure(n, lambda i: client.lpush("bench:floor", body))
    finally:
        client.close()


def vaultq_concurrent(url: str, n: int, coroutines: int = 100) -> tuple[float, float]:
    app, task = make_vaultq(url)

    async def main() -> tuple[float, float]:
        await task.enqueue(Item(-1))
        per = n // coroutines

        async def one() -> None:
            for i in range(per):
                await task.enqueue(Item(i))

        wall, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(coroutines):
                tg.start_soon(one)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await app.aclose()
        return per * coroutines / wall, cpu / (per * coroutines) * 1e6

    return anyio.run(main)


def vaultq_many(url: str, n: int, batch: int = 1000) -> tuple[float, float]:
    app, task = make_vaultq(url)

    async def main() -> tuple[float, float]:
        await task.enqueue(Item(-1))
        payloads = [Item(i) for i in range(batch)]
        calls = max(1, n // batch)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await task.enqueue_many(payloads)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await app.aclose()
        return calls * batch / wall, cpu / (calls * batch) * 1e6

    return anyio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="one-by-one enqueues per variant")
    parser.add_argument("--async-n", type=int, default=20000, help="jobs of the async variants")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-async", action="store_true")
    args = parser.parse_args()
    try:
        import huey  # noqa: F401

        have_huey = True
    except ImportError:
        have_huey = False
        print("huey is not installed (pip install -r benchmarks/requirements.txt): no peer")

    work = Path(tempfile.mkdtemp(prefix="vaultq-enqueue-sync-"))
    proc, redis_url = throughput.start_redis(work)
    variants: list[tuple[str, str, Callable[[], tuple[float, float]]]] = []
    n = args.n

    def sqlite_url(tag: str, query: str = "") -> Callable[[], str]:
        counter = iter(range(10**6))
        return lambda: f"sqlite:///{work}/{tag}-{next(counter)}.db{query}"

    def redis(fn: Callable[[str, int], tuple[float, float]], count: int) -> Any:
        def run() -> tuple[float, float]:
            throughput.flushall(redis_url)
            return fn(redis_url, count)

        return run

    def sqlite(
        fn: Callable[[str, int], tuple[float, float]], url: Callable[[], str]
    ) -> Callable[[], tuple[float, float]]:
        return lambda: fn(url(), n)

    variants.append(("redis", "vaultq enqueue_sync", redis(vaultq_sync, n)))
    variants.append(("redis", "vaultq via loop thread", redis(vaultq_hop, n)))
    if have_huey:
        variants.append(("redis", "huey call", redis(huey_call, n)))
    variants.append(("redis", "redis-py LPUSH (floor)", redis(lpush, n)))
    if not args.skip_sqlite:
        variants.append(("sqlite", "vaultq enqueue_sync", sqlite(vaultq_sync, sqlite_url("v"))))
        variants.append(
            (
                "sqlite",
                "vaultq enqueue_sync, synchronous=normal",
                sqlite(vaultq_sync, sqlite_url("vn", "?synchronous=normal")),
            )
        )
        variants.append(("sqlite", "vaultq via loop thread", sqlite(vaultq_hop, sqlite_url("h"))))
        if have_huey:
            variants.append(("sqlite", "huey call", sqlite(huey_call, sqlite_url("hu"))))
    if not args.skip_async:
        variants.append(
            ("redis", "await enqueue x100 coroutines", redis(vaultq_concurrent, args.async_n))
        )
        variants.append(
            ("redis", "enqueue_many (1,000 per call)", redis(vaultq_many, args.async_n))
        )

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for r in range(args.rounds):
            for broker, name, run in variants:
                rate, cpu = run()
                results.setdefault((broker, name), []).append((rate, cpu))
                print(f"round {r + 1}: {broker:6} {name:40} {rate:9,.0f} jobs/s {cpu:7.1f} µs/job")
    finally:
        proc.terminate()
        proc.wait()

    print(f"\nmedians of {args.rounds} rounds (one-by-one n={n}, async n={args.async_n})")
    print("| broker | variant | jobs/s | CPU µs/job | vs huey |\n|---|---|---:|---:|---:|")
    medians = {
        key: (statistics.median(r for r, _ in vals), statistics.median(c for _, c in vals))
        for key, vals in results.items()
    }
    for (broker, name), (rate, cpu) in medians.items():
        peer = medians.get((broker, "huey call"))
        ratio = f"{rate / peer[0]:.2f}x" if peer and "coroutines" not in name else "-"
        if "enqueue_many" in name:
            ratio = "-"
        print(f"| {broker} | {name} | {rate:,.0f} | {cpu:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
