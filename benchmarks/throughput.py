"""Throughput and latency of vaultq, next to peer job queues measured in the same run.

    .venv/bin/python benchmarks/throughput.py [--n 20000] [--peer-n 5000]
        [--brokers redis,sqlite] [--peers arq,celery,dramatiq,huey-redis,huey-sqlite]
        [--no-peers] [--concurrency 50]

Every system gets the same no-op task taking one int, on the same private
``redis-server`` (started on a free loopback port for the run, FLUSHALLed between
systems) or on its own SQLite file in one temporary directory:

* enqueue/s: N jobs enqueued one by one; bulk/s: N more through the bulk API, if any;
* drain/s: those 2N jobs drained by ONE worker process started after they were queued;
  the clock runs from the moment the worker is ready to consume until it has finished
  (result stored, message acked) the last job, so interpreter start-up is not counted;
* cpu us/job (vaultq only): CPU time (user + system, all threads) the worker process
  spent per job over the same window. Unlike drain/s it barely moves when other
  processes compete for the cores, so it is the figure to compare two builds with on a
  busy machine (the broker's own CPU is not in it);
* p50/p99 ms: end-to-end latency (enqueue -> result in the client) of single jobs, one
  at a time, with an idle worker in its own process.

The peers (arq, celery, dramatiq, huey) pin ``redis<6`` while vaultq's venv has redis 8,
so they live in ``.venv-bench/`` (created here on first use from
``benchmarks/peers/requirements.txt``) and their drivers in ``benchmarks/peers/`` run as
subprocesses of that interpreter; see docs/benchmarks.md for how each one is set up.
Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import vaultq  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402

PEERS_DIR = HERE / "peers"
REQUIREMENTS = PEERS_DIR / "requirements.txt"
BENCH_VENV = ROOT / ".venv-bench"
# name -> (driver script, backend)
PEERS: dict[str, tuple[str, str]] = {
    "arq": ("arq_peer.py", "redis"),
    "celery": ("celery_peer.py", "redis"),
    "dramatiq": ("dramatiq_peer.py", "redis"),
    "huey-redis": ("huey_peer.py", "redis"),
    "huey-sqlite": ("huey_peer.py", "sqlite"),
}
COLUMNS = [
    ("enqueue", "enqueue/s"),
    ("bulk", "bulk/s"),
    ("drain", "drain/s"),
    ("cpu_us", "cpu us/job"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
]
LATENCY_SAMPLES = 300
PHASE_TIMEOUT = 600.0


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


def flushall(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


# --- vaultq, in this interpreter -------------------------------------------------------


async def drain_in_this_process(
    url: str, keys: str, n: int, concurrency: int
) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, all threads) to drain ``n`` jobs."""
    app, _ = make_app(url, keys)
    worker = Worker(app, concurrency=concurrency, block=0.05, grace=1)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()  # the clock starts when the worker consumes, as for the peers
        t0, cpu0 = time.perf_counter(), time.process_time()
        while worker.processed < n:  # noqa: ASYNC110 - polling the counter is the measurement
            await anyio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        worker.stop()
    await app.aclose()
    return elapsed, cpu


async def serve_in_this_process(url: str, keys: str, concurrency: int) -> None:
    app, _ = make_app(url, keys)
    worker = Worker(app, concurrency=concurrency, block=1.0)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        print("READY", flush=True)


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
    return {"enqueue": single, "bulk": many}


async def latency(url: str, keys: str, samples: int) -> dict[str, float]:
    app, noop = make_app(url, keys)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        handle = await noop.enqueue(Noop(i))
        await handle.result(timeout=10)
        out.append(time.perf_counter() - t0)
    await app.aclose()
    return percentiles(out)


def percentiles(samples: list[float]) -> dict[str, float]:
    out = sorted(samples)
    p99 = out[max(int(len(out) * 0.99) - 1, 0)]
    return {"p50_ms": statistics.median(out) * 1000, "p99_ms": p99 * 1000}


def run_vaultq(url: str, keys: str, n: int, concurrency: int) -> dict[str, float]:
    figures = anyio.run(produce, url, keys, n)
    # the queue now holds 2n jobs: drain them in ONE separate worker process
    env = {**os.environ, "BENCH_KEYS": keys}
    cmd = [sys.executable, __file__, "--drain", url, "--n", str(2 * n)]
    out = subprocess.run(
        [*cmd, "--concurrency", str(concurrency)],
        env=env,
        capture_output=True,
        check=True,
        timeout=PHASE_TIMEOUT,
    )
    elapsed, cpu = out.stdout.decode().strip().splitlines()[-1].split()
    figures["drain"] = 2 * n / float(elapsed)
    figures["cpu_us"] = float(cpu) / (2 * n) * 1e6
    serve = [sys.executable, __file__, "--serve", url, "--concurrency", str(concurrency)]
    with Server(serve, env):
        figures.update(anyio.run(latency, url, keys, LATENCY_SAMPLES))
    return figures


# --- peers, in .venv-bench --------------------------------------------------------------


class PeerFailed(Exception):
    pass


class Server:
    """An idle worker in its own process for the latency phase; ready once it prints READY.

    stdout is read to the end by a thread so chatty workers never block on a full pipe."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd, self.env = cmd, env
        self.ready = threading.Event()

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
            cwd=PEERS_DIR,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            self.__exit__()
            raise PeerFailed(f"worker {self.cmd[1]} did not report ready within 60 s")
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "READY":
                self.ready.set()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_python() -> Path | None:
    """The peers' interpreter, creating/updating ``.venv-bench`` when requirements changed."""
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".requirements.txt"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing the peers into {BENCH_VENV} (once) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(BENCH_VENV)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(
            f"NOTICE: could not set up {BENCH_VENV} ({exc}); no network or no registry?\n"
            f"{detail.decode(errors='replace')[-1500:]}"
            "Reporting vaultq only. Fix the install (or pass --no-peers) and run again.",
            flush=True,
        )
        return None
    stamp.write_text(wanted)
    return python


def peer_call(python: Path, script: str, mode: str, url: str, *extra: str) -> dict[str, Any]:
    cmd = [str(python), script, mode, "--url", url, *extra]
    try:
        out = subprocess.run(
            cmd, cwd=PEERS_DIR, capture_output=True, text=True, timeout=PHASE_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerFailed(f"{script} {mode} did not finish within {PHASE_TIMEOUT:.0f} s") from exc
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise PeerFailed(f"{script} {mode} exited {out.returncode}: {out.stderr[-1500:]}")


def run_peer(python: Path, name: str, url: str, n: int, concurrency: int) -> dict[str, Any]:
    script = PEERS[name][0]
    c = ("--concurrency", str(concurrency))
    figures = peer_call(python, script, "produce", url, "--n", str(n))
    queued = int(figures.pop("queued"))
    drained = peer_call(python, script, "drain", url, "--n", str(queued), *c)
    figures["drain"] = queued / drained["drain_s"]
    with Server([str(python), script, "serve", "--url", url, *c]):
        figures.update(peer_call(python, script, "latency", url, "--samples", str(LATENCY_SAMPLES)))
    return figures


# --- report -----------------------------------------------------------------------------


def fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if key.endswith("_ms") else f"{value:.0f}"


def print_table(rows: dict[str, dict[str, Any] | None]) -> None:
    print(f"{'system':<14}" + "".join(f"{title:>11}" for _, title in COLUMNS))
    for name, figures in rows.items():
        if figures is None:
            print(f"{name:<14}{'failed (see above)':>33}")
            continue
        print(f"{name:<14}" + "".join(f"{fmt(figures.get(k), k):>11}" for k, _ in COLUMNS))


def print_ratios(mine: str, rows: dict[str, dict[str, Any] | None], peers: list[str]) -> None:
    ours = rows.get(mine)
    if ours is None:
        return
    parts = []
    for key, title in COLUMNS:
        candidates = [
            (figures[key], name)
            for name in peers
            if (figures := rows.get(name)) is not None and figures.get(key) is not None
        ]
        if ours.get(key) is None or not candidates:
            continue
        lower_is_better = key.endswith("_ms")
        best, who = min(candidates) if lower_is_better else max(candidates)
        parts.append(
            f"  {title:<10} {ours[key] / best:>6.2f}x  (best peer: {who}, {fmt(best, key)})"
        )
    if parts:
        print(f"{mine} / best of {', '.join(peers)}:")
        print("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="vaultq jobs per enqueue phase")
    parser.add_argument("--peer-n", type=int, default=5_000, help="peer jobs per enqueue phase")
    parser.add_argument("--brokers", default="redis,sqlite", help="vaultq brokers to measure")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="vaultq's event loop"
    )
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        elapsed, cpu = anyio.run(
            drain_in_this_process,
            args.drain,
            os.environ["BENCH_KEYS"],
            args.n,
            args.concurrency,
            backend_options={"use_uvloop": args.loop == "uvloop"},
        )
        print(elapsed, cpu)
        return
    if args.serve:
        anyio.run(serve_in_this_process, args.serve, os.environ["BENCH_KEYS"], args.concurrency)
        return

    brokers = [b for b in args.brokers.split(",") if b]
    for broker in brokers:
        if broker not in ("redis", "sqlite"):
            raise SystemExit(f"unknown broker {broker!r}: use redis and/or sqlite")
    peers = [] if args.no_peers else [p for p in args.peers.split(",") if p]
    for peer in peers:
        if peer not in PEERS:
            raise SystemExit(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    python = bench_python() if peers else None
    if python is None:
        peers = []

    keys = vaultq.Keyring.generate().to_json()
    rows: dict[str, dict[str, Any] | None] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, redis_url = start_redis(Path(tmp))
        try:
            for broker in brokers:
                name = f"vaultq-{broker}"
                print(f"measuring {name} ...", flush=True)
                url = redis_url if broker == "redis" else f"sqlite:///{tmp}/vaultq.db"
                rows[name] = run_vaultq(url, keys, args.n, args.concurrency)
            for peer in peers:
                print(f"measuring {peer} ...", flush=True)
                flushall(redis_url)
                backend = PEERS[peer][1]
                url = redis_url if backend == "redis" else f"sqlite:///{tmp}/{peer}.db"
                assert python is not None
                try:
                    rows[peer] = run_peer(python, peer, url, args.peer_n, args.concurrency)
                except PeerFailed as exc:
                    print(f"NOTICE: {peer} failed: {exc}", flush=True)
                    rows[peer] = None
        finally:
            redis_proc.terminate()
            redis_proc.wait()

    print()
    print(
        f"no-op jobs, worker concurrency {args.concurrency}; N={args.n} per enqueue phase for "
        f"vaultq, {args.peer_n} for peers (drain = 2N); {LATENCY_SAMPLES} latency samples; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print_table(rows)
    if peers:
        print("ratios: rates >1 = vaultq faster; latencies <1 = vaultq faster")
    redis_peers = [p for p in peers if PEERS[p][1] == "redis"]
    if redis_peers:
        print_ratios("vaultq-redis", rows, redis_peers)
    if "huey-sqlite" in peers:
        print_ratios("vaultq-sqlite", rows, ["huey-sqlite"])
    if not peers and "vaultq-redis" in rows and "vaultq-sqlite" in rows:
        r, s = rows["vaultq-redis"], rows["vaultq-sqlite"]
        assert r is not None
        assert s is not None
        print(
            f"sqlite/redis: enqueue {s['enqueue'] / r['enqueue']:.2f}x, "
            f"bulk {s['bulk'] / r['bulk']:.2f}x, drain {s['drain'] / r['drain']:.2f}x"
        )


if __name__ == "__main__":
    main()
