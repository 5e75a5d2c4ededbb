"""Throughput and latency of vaultq on Redis and on the embedded SQLite broker.

    .venv/bin/python benchmarks/throughput.py [--n 20000] [--brokers redis,sqlite]

For each broker: enqueue N no-op jobs one by one and with ``enqueue_many``, then one
worker process drains them; then the end-to-end latency (enqueue → result) of single
jobs with an idle worker, p50/p99. Redis is a private ``redis-server`` started on a free
loopback port for the run. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import vaultq  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402


class Noop(msgspec.Struct, frozen=True):
    n: int


def make_app(url: str, keys: str) -> tuple[vaultq.App, vaultq.Task[Noop, None]]:
    app = vaultq.App("bench", broker=url, keyring=vaultq.Keyring.from_json(keys))

    @app.task(name="bench.noop")
    async def noop(job: Noop) -> None:
        return None

    return app, noop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


async def drain_in_this_process(url: str, keys: str, n: int, concurrency: int) -> float:
    app, _ = make_app(url, keys)
    worker = Worker(app, concurrency=concurrency, block=0.05, grace=1)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        while worker.processed < n:  # noqa: ASYNC110 - polling the counter is the measurement
            await anyio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        worker.stop()
    await app.aclose()
    return elapsed


async def produce(url: str, keys: str, n: int) -> dict[str, float]:
    app, noop = make_app(url, keys)
    t0 = time.perf_counter()
    for i in range(n):
        await noop.enqueue(Noop(i))
    single = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        await noop.enqueue_many(Noop(i) for i in range(start, min(n, start + 1000)))
    many = n / (time.perf_counter() - t0)
    await app.aclose()
    return {"enqueue": single, "enqueue_many": many}


async def latency(url: str, keys: str, samples: int) -> tuple[float, float]:
    app, noop = make_app(url, keys)
    worker = Worker(app, concurrency=10, block=1.0)
    out: list[float] = []
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        for i in range(samples):
            t0 = time.perf_counter()
            handle = await noop.enqueue(Noop(i))
            await handle.result(timeout=10)
            out.append(time.perf_counter() - t0)
        worker.stop()
    await app.aclose()
    out.sort()
    return statistics.median(out) * 1000, out[int(len(out) * 0.99) - 1] * 1000


def run_broker(kind: str, url: str, keys: str, n: int, concurrency: int) -> dict[str, float]:
    figures = anyio.run(produce, url, keys, n)
    # the queue now holds 2n jobs: drain them in ONE separate worker process
    cmd = [
        sys.executable,
        __file__,
        "--drain",
        url,
        "--n",
        str(2 * n),
        "--concurrency",
        str(concurrency),
    ]
    out = subprocess.run(
        cmd, env={**os.environ, "BENCH_KEYS": keys}, capture_output=True, check=True
    )
    elapsed = float(out.stdout.decode().strip().splitlines()[-1])
    figures["worker"] = 2 * n / elapsed
    p50, p99 = anyio.run(latency, url, keys, 300)
    figures["p50_ms"], figures["p99_ms"] = p50, p99
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--brokers", default="redis,sqlite")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        elapsed = anyio.run(
            drain_in_this_process, args.drain, os.environ["BENCH_KEYS"], args.n, args.concurrency
        )
        print(elapsed)
        return
    keys = vaultq.Keyring.generate().to_json()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.brokers.split(","):
            if kind == "redis":
                proc, url = start_redis(Path(tmp))
                try:
                    rows[kind] = run_broker(kind, url, keys, args.n, args.concurrency)
                finally:
                    proc.terminate()
                    proc.wait()
            elif kind == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
                rows[kind] = run_broker(kind, url, keys, args.n, args.concurrency)
            else:
                raise SystemExit(f"unknown broker {kind!r}")
    print(f"vaultq throughput, N={args.n} no-op jobs, worker concurrency {args.concurrency}")
    print(f"{'broker':<8} {'enqueue/s':>10} {'enq_many/s':>11} {'worker/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip
    for kind, f in rows.items():
        print(
            f"{kind:<8} {f['enqueue']:>10.0f} {f['enqueue_many']:>11.0f} {f['worker']:>10.0f} "
            f"{f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}"
        )
    if "redis" in rows and "sqlite" in rows:
        r, s = rows["redis"], rows["sqlite"]
        print(
            f"sqlite/redis ratios: enqueue {s['enqueue'] / r['enqueue']:.2f}x, "
            f"enqueue_many {s['enqueue_many'] / r['enqueue_many']:.2f}x, "
            f"worker {s['worker'] / r['worker']:.2f}x"
        )


if __name__ == "__main__":
    main()
