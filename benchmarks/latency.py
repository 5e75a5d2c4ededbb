"""Enqueue -> task start with an idle worker in another process, vaultq against huey in
the same run, on Redis and on SQLite (cross-process: the SQLite wake-up channel).

    .venv/bin/pip install -r benchmarks/requirements.txt   # huey, for the comparison
    .venv/bin/python benchmarks/latency.py [--samples 300] [--brokers redis,sqlite]

Each variant starts one worker process (concurrency 10), waits until it is idle, then
enqueues one job at a time from this process with ``task.enqueue_sync``/huey's plain
call; the job body records ``time.time()`` as it starts and returns it, so the latency
is start - sent, on one host clock, without the result's way back. A random pause of
5-50 ms between samples lets the worker fall back into its idle wait (and SQLite
polling back off) every time. Figures are p50/p99 in ms; nothing is asserted.

Variants: ``vaultq`` (defaults); on SQLite also ``vaultq polling only`` (the wake-up
channel switched off in the worker: what it was before); ``huey`` (RedisHuey: BRPOP;
SqliteHuey: it has no blocking read, so its consumer polls on vaultq's own SQLite
schedule, 2 ms growing x1.25 to 100 ms, not its default 100 ms growing to 10 s).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput

import vaultq
from vaultq.runtime.worker import Worker


class Stamp(msgspec.Struct, frozen=True):
    sent: float


def make_vaultq(url: str, keys: str) -> tuple[vaultq.App, Any]:
    app = vaultq.App("latency", broker=url, keyring=vaultq.Keyring.from_json(keys))

    @app.task(name="latency.stamp")
    async def stamp(job: Stamp) -> float:
        return time.time()

    return app, stamp


def make_huey(url: str) -> tuple[Any, Any]:
    from huey import RedisHuey, SqliteHuey

    if url.startswith("sqlite:///"):
        huey: Any = SqliteHuey("latency", filename=url.removeprefix("sqlite:///"))
    else:
        huey = RedisHuey("latency", url=url)

    @huey.task(name="stamp")
    def stamp(sent: float) -> float:
        return time.time()

    return huey, stamp


def serve_vaultq(url: str, keys: str, polling_only: bool, uvloop: bool) -> None:
    if polling_only:
        from vaultq.brokers.sqlite_wake import WakeChannel

        WakeChannel.listen = lambda self, on_wake: None  # type: ignore[method-assign]
    app, _ = make_vaultq(url, keys)

    async def main() -> None:
        worker = Worker(app, concurrency=10, block=1.0)
        async with anyio.create_task_group() as tg:
            started = anyio.Event()
            tg.start_soon(lambda: worker.run(started=started))
            await started.wait()
            print("READY", flush=True)

    anyio.run(main, backend_options={"use_uvloop": uvloop})


def serve_huey(url: str) -> None:
    huey, _ = make_huey(url)
    once = threading.Lock()

    @huey.on_startup()
    def ready() -> None:
        if once.acquire(blocking=False):
            print("READY", flush=True)

    options: dict[str, Any] = {"workers": 10, "worker_type": "thread", "periodic": False}
    if url.startswith("sqlite:///"):
        options.update(initial_delay=0.002, backoff=1.25, max_delay=0.1)
    huey.create_consumer(**options).run()


def sample(send: Any, samples: int) -> dict[str, float]:
    out: list[float] = []
    for _ in range(samples + 5):
        time.sleep(random.uniform(0.005, 0.05))  # nosec B311 - a benchmark's pause
        sent = time.time()
        started = send(sent)
        out.append(started - sent)
    out = sorted(out[5:])  # the first few warm the connections up
    return {
        "p50_ms": statistics.median(out) * 1000,
        "p99_ms": out[max(int(len(out) * 0.99) - 1, 0)] * 1000,
    }


def run_variant(
    kind: str, url: str, keys: str, samples: int, polling_only: bool, uvloop: bool = False
) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--serve", kind, url]
    if polling_only:
        cmd.append("--polling-only")
    if uvloop:
        cmd += ["--loop", "uvloop"]
    env = {**os.environ, "BENCH_KEYS": keys}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "READY":
                break
        time.sleep(0.5)  # let it settle into its idle wait
        if kind == "vaultq":
            app, stamp = make_vaultq(url, keys)

            def send(sent: float) -> float:
                value: float = stamp.enqueue_sync(Stamp(sent)).result_sync(timeout=10)
                return value

            try:
                return sample(send, samples)
            finally:
                app.close()
        _, hstamp = make_huey(url)
        return sample(lambda sent: hstamp(sent).get(blocking=True, timeout=10), samples)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--brokers", default="redis,sqlite")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--polling-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default="full",
        help="vaultq's SQLite durability (full, the default: an fsync per commit)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the vaultq workers' event loop (uvloop: pip install vaultq[fast])",
    )
    args = parser.parse_args()
    if args.serve:
        kind, url = args.serve
        if kind == "vaultq":
            serve_vaultq(url, os.environ["BENCH_KEYS"], args.polling_only, args.loop == "uvloop")
        else:
            serve_huey(url)
        return
    try:
        import huey  # noqa: F401

        have_huey = True
    except ImportError:
        have_huey = False
        print("huey is not installed (pip install -r benchmarks/requirements.txt): no peer")
    keys = vaultq.Keyring.generate().to_json()
    work = Path(tempfile.mkdtemp(prefix="vaultq-latency-"))
    brokers = args.brokers.split(",")
    uv = args.loop == "uvloop"
    rows: list[tuple[str, str, dict[str, float]]] = []
    proc = None
    try:
        if "redis" in brokers:
            proc, redis_url = throughput.start_redis(work)
            rows.append(
                ("redis", "vaultq", run_variant("vaultq", redis_url, keys, args.samples, False, uv))
            )
            if have_huey:
                throughput.flushall(redis_url)
                rows.append(
                    ("redis", "huey", run_variant("huey", redis_url, keys, args.samples, False))
                )
        if "sqlite" in brokers:
            for name, polling in (("vaultq", False), ("vaultq polling only", True)):
                query = "" if args.sqlite_synchronous == "full" else "?synchronous=normal"
                url = f"sqlite:///{work}/{name.replace(' ', '-')}.db{query}"
                rows.append(
                    ("sqlite", name, run_variant("vaultq", url, keys, args.samples, polling, uv))
                )
            if have_huey:
                url = f"sqlite:///{work}/huey.db"
                rows.append(("sqlite", "huey", run_variant("huey", url, keys, args.samples, False)))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    print(f"\nenqueue -> start, idle worker in another process, {args.samples} samples")
    print("| broker | system | p50 ms | p99 ms | p50 vs huey |\n|---|---|---:|---:|---:|")
    for broker, name, fig in rows:
        peer = next((f for b, n, f in rows if b == broker and n == "huey"), None)
        ratio = f"{fig['p50_ms'] / peer['p50_ms']:.2f}x" if peer else "-"
        print(f"| {broker} | {name} | {fig['p50_ms']:.2f} | {fig['p99_ms']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
