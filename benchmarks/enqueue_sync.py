"""Enqueue one by one from sync code, vaultq against huey in the same run; and the async
enqueue figures of issue 15 (100 coroutines at once, ``enqueue_many``).

    .venv/bin/pip install -r benchmarks/requirements.txt   # huey, for the comparison
    .venv/bin/python benchmarks/enqueue_sync.py [--n 5000] [--chunk 250] [--async-n 20000]

Every variant runs in this process. The one-by-one producers are set up once and take
turns in chunks (250 calls each by default), so a burst of load on the shared machine
hits them alike; their figures are totals over the chunks. The async variants run in
rounds, medians reported. Figures: jobs/s (wall) and CPU µs per job (this process, every
thread: ``time.process_time``). Redis is a private ``redis-server`` on a free port
(FLUSHALLed between the async rounds); SQLite is a fresh file per variant in a temporary
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


class Producer:
    """One variant's producer, set up once and called in chunks: ``call(i)`` enqueues
    one job; ``close()`` tears it down. Wall and CPU time accumulate over the chunks."""

    def __init__(self, call: Callable[[int], Any], close: Callable[[], Any]) -> None:
        self.call, self.close = call, close
        self.wall = self.cpu = 0.0
        self.count = 0

    def chunk(self, start: int, size: int) -> None:
        call = self.call
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(start, start + size):
            call(i)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.count += size

    def figures(self) -> tuple[float, float]:
        """(jobs/s, CPU µs per job)."""
        return self.count / self.wall, self.cpu / self.count * 1e6


def vaultq_sync(url: str) -> Producer:
    app, task = make_vaultq(url)
    task.enqueue_sync(Item(-1))  # connect, load scripts, measure the clock
    return Producer(lambda i: task.enqueue_sync(Item(i)), app.close)


def vaultq_hop(url: str) -> Producer:
    app, task = make_vaultq(url)
    app.run_sync(task.enqueue, Item(-1))
    return Producer(lambda i: app.run_sync(task.enqueue, Item(i)), app.close)


def huey_call(url: str) -> Producer:
    from huey import RedisHuey, SqliteHuey

    if url.startswith("sqlite:///"):
        huey: Any = SqliteHuey("bench", filename=url.removeprefix("sqlite:///"))
    else:
        huey = RedisHuey("bench", url=url)

    @huey.task(name="noop")
    def noop(n: int) -> None:
        return None

    noop(-1)
    return Producer(lambda i: noop(i), lambda: None)


def lpush(url: str) -> Producer:
    import redis

    client = redis.Redis.from_url(url)
    body = b"x" * 100
    client.lpush("bench:floor", body)
    return Producer(lambda i: client.lpush("bench:floor", body), client.close)


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


def reset_commandstats(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.config_resetstat()
    client.close()


def server_costs(url: str) -> dict[str, float]:
    """redis-server µs per call of each command since the last reset (``INFO
    commandstats``): ``evalsha`` is vaultq's enqueue script (both vaultq variants),
    ``lpush`` huey's call and the floor's; commands run inside the script are listed
    too (their time is part of the script's)."""
    import redis

    client = redis.Redis.from_url(url)
    stats = client.info("commandstats")
    client.close()
    return {
        name.removeprefix("cmdstat_"): float(row["usec_per_call"])
        for name, row in stats.items()
        if row["calls"] >= 100
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="one-by-one enqueues per variant")
    parser.add_argument("--async-n", type=int, default=20000, help="jobs of the async variants")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the async variants")
    parser.add_argument("--chunk", type=int, default=250, help="one-by-one calls per turn")
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
    one_by_one: list[tuple[str, str, Callable[[str], Producer], str]] = [
        ("redis", "vaultq enqueue_sync", vaultq_sync, redis_url),
        ("redis", "vaultq via loop thread", vaultq_hop, redis_url),
        ("redis", "redis-py LPUSH (floor)", lpush, redis_url),
    ]
    if have_huey:
        one_by_one.append(("redis", "huey call", huey_call, redis_url))
    if not args.skip_sqlite:
        one_by_one += [
            ("sqlite", "vaultq enqueue_sync", vaultq_sync, f"sqlite:///{work}/v.db"),
            (
                "sqlite",
                "vaultq enqueue_sync, synchronous=normal",
                vaultq_sync,
                f"sqlite:///{work}/vn.db?synchronous=normal",
            ),
            ("sqlite", "vaultq via loop thread", vaultq_hop, f"sqlite:///{work}/h.db"),
        ]
        if have_huey:
            one_by_one.append(("sqlite", "huey call", huey_call, f"sqlite:///{work}/hu.db"))
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    server: dict[str, float] = {}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        # Every producer is set up once; then they take turns, chunk by chunk, so a
        # burst of load on the shared machine hits them all alike.
        producers = [(b, name, make(url)) for b, name, make, url in one_by_one]
        reset_commandstats(redis_url)
        for start in range(0, args.n, args.chunk):
            size = min(args.chunk, args.n - start)
            for _, _, producer in producers:
                producer.chunk(start, size)
        for broker, name, producer in producers:
            producer.close()
            medians[(broker, name)] = producer.figures()
        server = server_costs(redis_url)
        for r in range(args.rounds if not args.skip_async else 0):
            for name, fn in (
                ("await enqueue x100 coroutines", vaultq_concurrent),
                ("enqueue_many (1,000 per call)", vaultq_many),
            ):
                throughput.flushall(redis_url)
                rate, cpu = fn(redis_url, args.async_n)
                print(f"round {r + 1}: redis  {name:40} {rate:9,.0f} jobs/s {cpu:7.1f} µs/job")
                results.setdefault(("redis", name), []).append((rate, cpu))
    finally:
        proc.terminate()
        proc.wait()
    for key, vals in results.items():
        medians[key] = (
            statistics.median(r for r, _ in vals),
            statistics.median(c for _, c in vals),
        )

    print(
        f"\none by one: {args.n} jobs per variant, taking turns in chunks of {args.chunk}; "
        f"async: medians of {args.rounds} rounds of {args.async_n} jobs"
    )
    if server:
        print(
            "redis-server µs per call during the one-by-one turns (INFO commandstats): "
            + ", ".join(f"{name} {usec:.2f}" for name, usec in sorted(server.items()))
        )
    print("| broker | variant | jobs/s | CPU µs/job | vs huey |\n|---|---|---:|---:|---:|")
    for (broker, name), (rate, cpu) in medians.items():
        peer = medians.get((broker, "huey call"))
        ratio = f"{rate / peer[0]:.2f}x" if peer and "coroutines" not in name else "-"
        if "enqueue_many" in name:
            ratio = "-"
        print(f"| {broker} | {name} | {rate:,.0f} | {cpu:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
