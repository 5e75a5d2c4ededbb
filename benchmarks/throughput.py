"""vaultq next to peer job queues, measured side by side in one run; figures and ratios.

    .venv/bin/python benchmarks/throughput.py [--jobs 5000] [--modes defaults,equal]
        [--systems vaultq,taskiq,...] [--concurrency 50] [--sleep-jobs 1000]
        [--backlog 1000000] [--rss 100000] [--json out.json] [--chart out.png]

Every system runs the same task: its body does one ``INCR`` of a counter on the run's
private ``redis-server`` (then sleeps 10 ms in the sleep workload), and completions are
counted by polling that counter, the same way for every system. Per system and mode:

* enqueue/s: N jobs one by one; sync/s: vaultq's ``enqueue_sync`` one by one from a plain
  thread; c100/s: N vaultq ``enqueue`` calls from 100 coroutines at once; bulk/s: N more
  through the bulk API, if any;
* drain/s: the queued jobs (2N or more) run by ONE worker process started afterwards,
  from its first completion to its last; cold/s: the same from the worker's spawn, so
  interpreter and worker start-up are included; cpu us/job: that worker's CPU time;
* sleep/s: ``--sleep-jobs`` jobs sleeping 10 ms each (I/O-bound), same clock as drain/s;
* p50/p99 ms (equal mode): enqueue -> result, one job at a time, idle worker.

Modes: ``defaults`` runs each system at its own default concurrency (vaultq also at 10,
its default before issue 15, and 50); ``equal`` runs every worker at ``--concurrency``.
vaultq alone: ``--processes`` (the ``vaultq worker --processes 2`` CLI against 1, steady
rates), memory per queued job against the sealed envelope, and the opt-in scale runs
``--backlog N`` (throughput with N jobs queued against an empty queue) and ``--rss N``
(worker RSS while it runs N jobs).

The peers run under their own venvs in ``.bench-venvs/`` (created on first use from
``benchmarks/peers/requirements*.txt``; gitignored), vaultq under this interpreter; see
docs/benchmarks.md for how each one is set up. Figures only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import vaultq  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402

try:
    import bench_proc
    import bench_report
except ImportError:  # compare.py's copy of this file in an older checkout: --drain only
    pass

SLEEP_MS = 10.0


# --- used by benchmarks/compare.py, options.py and profile_hotpath.py (``--drain``: one
# worker process draining N jobs, printing "elapsed cpu"). compare.py copies this file into
# older checkouts, so this part needs vaultq only.


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


class System(msgspec.Struct, frozen=True):
    script: str
    group: str | None  # the peers' venv group; None: vaultq, under this interpreter
    backend: str  # redis or sqlite
    default: str  # its default concurrency, as the table shows it


SYSTEMS: dict[str, System] = {
    "vaultq": System("vaultq_peer.py", None, "redis", "100 async (10 with a sync task)"),
    "vaultq-sqlite": System("vaultq_peer.py", None, "sqlite", "100 async"),
    "arq": System("arq_peer.py", "classic", "redis", "10 async, 0.5 s poll"),
    "celery": System("celery_peer.py", "classic", "redis", "prefork, 1 child per CPU"),
    "dramatiq": System("dramatiq_peer.py", "classic", "redis", "8 threads"),
    "huey-redis": System("huey_peer.py", "classic", "redis", "1 thread"),
    "huey-sqlite": System("huey_peer.py", "classic", "sqlite", "1 thread"),
    "taskiq": System("taskiq_peer.py", "taskiq", "redis", "100 async"),
    "saq": System("saq_peer.py", "saq", "redis", "10 async"),
    "streaq": System("streaq_peer.py", "streaq", "redis", "16 async"),
}


class Case(msgspec.Struct, frozen=True):
    label: str
    system: str
    concurrency: int = 0  # 0: the system's default
    signing: str = "hmac-sha256"
    sync_enqueue: bool = False
    batch_signatures: bool = False  # vaultq: App(batch_signatures=True), all jobs enqueue_many


def cases(mode: str, concurrency: int) -> list[Case]:
    if mode == "defaults":
        return [
            Case("vaultq", "vaultq", sync_enqueue=True),
            Case("vaultq-ed25519", "vaultq", signing="ed25519"),
            Case("vaultq-ed25519-batch", "vaultq", signing="ed25519", batch_signatures=True),
            Case("vaultq-c10", "vaultq", concurrency=10),  # the default before issue 15
            Case("vaultq-c50", "vaultq", concurrency=50),
            *(Case(name, name) for name in ("taskiq", "dramatiq", "huey-redis", "saq")),
            *(Case(name, name) for name in ("streaq", "arq", "celery")),
        ]
    c = concurrency
    return [
        Case("vaultq", "vaultq", c, sync_enqueue=True),
        Case("vaultq-ed25519", "vaultq", c, signing="ed25519"),
        Case("vaultq-ed25519-batch", "vaultq", c, signing="ed25519", batch_signatures=True),
        Case("vaultq-sqlite", "vaultq-sqlite", c),
        *(Case(name, name, c) for name in SYSTEMS if not name.startswith("vaultq")),
    ]


class Run:
    """One run: the private Redis, a temporary directory, the interpreters, the keys."""

    def __init__(self, args: argparse.Namespace, redis_url: str, tmp: Path) -> None:
        self.args, self.redis_url, self.tmp = args, redis_url, tmp
        self.pythons: dict[str, Path | None] = {}
        self.keys = {
            s: vaultq.Keyring.generate(signing=s).to_json()  # type: ignore[arg-type]
            for s in ("hmac-sha256", "ed25519")
        }
        self.phase = 0

    def flush(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        client.flushall()
        client.close()

    def python(self, system: System) -> Path | None:
        if system.group is None:
            return Path(sys.executable)
        if system.group not in self.pythons:
            self.pythons[system.group] = bench_proc.group_python(system.group)
        return self.pythons[system.group]

    def url(self, case: Case) -> str:
        """The broker URL of a fresh phase (a new SQLite file for sqlite systems)."""
        self.flush()
        self.phase += 1
        if SYSTEMS[case.system].backend == "sqlite":
            return f"sqlite:///{self.tmp}/{case.label}-{self.phase}.db"
        return self.redis_url

    def env(self, case: Case) -> dict[str, str]:
        batch = {"BENCH_BATCH_SIGNATURES": "1"} if case.batch_signatures else {}
        return {**os.environ, "BENCH_KEYS": self.keys[case.signing], **batch}

    def cmd(self, case: Case, mode: str, url: str, *extra: str) -> list[str]:
        system = SYSTEMS[case.system]
        python = self.python(system)
        assert python is not None
        loop = ("--loop", self.args.loop) if system.group is None else ()
        return [
            str(python),
            system.script,
            mode,
            "--url",
            url,
            "--counter",
            self.redis_url,
            *loop,
            *extra,
        ]

    def worker_cmd(self, case: Case, url: str, sleep_ms: float = 0.0) -> list[str]:
        return self.cmd(
            case,
            "worker",
            url,
            "--concurrency",
            str(case.concurrency),
            "--sleep-ms",
            str(sleep_ms),
        )

    def measure(self, case: Case, latency: bool) -> dict[str, Any]:
        n, env = self.args.jobs, self.env(case)
        url = self.url(case)
        sync = ("--sync",) if case.sync_enqueue else ()
        figures = bench_proc.driver_call(self.cmd(case, "produce", url, "--n", str(n), *sync), env)
        queued = int(figures.pop("queued"))
        drain = bench_proc.count_drain(self.worker_cmd(case, url), env, self.redis_url, queued)
        figures.update(
            drain=drain.warm, cold=drain.cold, cpu_us=drain.cpu_us, startup_s=drain.startup_s
        )
        m = self.args.sleep_jobs
        if m:
            url = self.url(case)
            bench_proc.driver_call(self.cmd(case, "fill", url, "--n", str(m)), env)
            sleep = bench_proc.count_drain(
                self.worker_cmd(case, url, SLEEP_MS), env, self.redis_url, m
            )
            figures.update(sleep=sleep.warm, sleep_cold=sleep.cold)
        if latency and self.args.latency_samples:
            url = self.url(case)
            with bench_proc.idle_worker(self.worker_cmd(case, url), env) as tail:
                samples = str(self.args.latency_samples)
                try:
                    figures.update(
                        bench_proc.driver_call(
                            self.cmd(case, "latency", url, "--samples", samples), env
                        )
                    )
                except bench_proc.Failed as exc:
                    raise bench_proc.Failed(f"{exc}\nworker: {tail()}") from exc
        return figures

    # --- vaultq alone -------------------------------------------------------------------

    def cli_drain(self, processes: int, jobs: int) -> bench_proc.Drain:
        """``vaultq worker --processes N`` (the real CLI and supervisor) over ``jobs``."""
        case = Case("vaultq", "vaultq")
        url = self.url(case)
        env = self.env(case)
        bench_proc.driver_call(self.cmd(case, "fill", url, "--n", str(jobs)), env)
        env.update(BENCH_URL=url, BENCH_COUNTER=self.redis_url, BENCH_SLEEP_MS="0")
        env["PYTHONPATH"] = os.pathsep.join([str(bench_proc.PEERS_DIR), str(bench_proc.ROOT)])
        cmd = [
            sys.executable,
            "-m",
            "vaultq",
            "worker",
            "vaultq_peer:app",
            "--processes",
            str(processes),
            "--concurrency",
            str(self.args.concurrency),
            "--log-level",
            "warning",
            "--loop",
            self.args.loop,
            "--health-file",
            str(self.tmp / f"health-{self.phase}"),
        ]
        return bench_proc.count_drain(cmd, env, self.redis_url, jobs)

    def memory(self, jobs: int) -> dict[str, Any]:
        """Redis memory per queued job (INFO memory delta, MEMORY USAGE) and the envelope."""
        case = Case("vaultq", "vaultq")
        url = self.url(case)
        client = redis.Redis.from_url(self.redis_url)
        before = int(client.info("memory")["used_memory"])
        t0 = time.perf_counter()
        bench_proc.driver_call(self.cmd(case, "fill", url, "--n", str(jobs)), self.env(case))
        fill_s = time.perf_counter() - t0
        after = int(client.info("memory")["used_memory"])
        stream = next(k for k in client.scan_iter("vaultq:*:stream", count=1000))
        entry = client.xrange(stream, count=1)[0][1]
        envelope = len(entry[b"env"])
        stream_usage = int(client.memory_usage(stream, samples=0) or 0)
        markers = [k for k in client.scan_iter("vaultq:*:enq:*", count=1000)]
        marker_usage = int(client.memory_usage(markers[0]) or 0) if markers else 0
        # The dedup markers (one small key per job, ENQUEUE_DEDUP_WINDOW = 15 s) are
        # transient: wait them out, let a SCAN expire them, and read the memory again.
        time.sleep(max(0.0, self.args.dedup_wait - (time.perf_counter() - t0 - fill_s)))
        for _ in client.scan_iter("vaultq:*:enq:*", count=10_000):
            pass
        settled = int(client.info("memory")["used_memory"])
        client.close()
        return {
            "jobs": jobs,
            "fill_per_s": jobs / fill_s,
            "envelope_bytes": envelope,
            "info_delta_per_job": (after - before) / jobs,
            "settled_per_job": (settled - before) / jobs,
            "stream_usage_per_job": stream_usage / jobs,
            "dedup_markers": len(markers),
            "dedup_marker_usage": marker_usage,
        }

    def backlog(self, queued: int, jobs: int) -> dict[str, Any]:
        """A one-worker drain of ``jobs`` with ``queued`` jobs waiting, against an empty
        queue holding just those ``jobs``; both at vaultq's default concurrency."""
        case = Case("vaultq", "vaultq")
        out: dict[str, Any] = {"queued": queued, "jobs": jobs}
        for name, fill in (("empty", jobs), ("backlog", queued)):
            url = self.url(case)
            print(f"  filling {fill} jobs ...", flush=True)
            if name == "backlog":
                out["memory"] = self.memory(queued)
            else:
                bench_proc.driver_call(
                    self.cmd(case, "fill", url, "--n", str(fill)), self.env(case)
                )
            drain = bench_proc.count_drain(
                self.worker_cmd(case, url), self.env(case), self.redis_url, jobs
            )
            out[name] = drain.warm
        out["ratio"] = out["backlog"] / out["empty"]
        return out

    def rss(self, jobs: int) -> dict[str, Any]:
        case = Case("vaultq", "vaultq")
        url = self.url(case)
        bench_proc.driver_call(self.cmd(case, "fill", url, "--n", str(jobs)), self.env(case))
        drain = bench_proc.count_drain(
            self.worker_cmd(case, url),
            self.env(case),
            self.redis_url,
            jobs,
            rss_every=max(jobs // 10, 1),
        )
        return {"jobs": jobs, "drain": drain.warm, "marks": drain.rss_marks}


def median_row(runs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Per figure, the median over the rounds where the system ran."""
    done = [r for r in runs if r is not None]
    if not done:
        return None
    out: dict[str, Any] = {}
    for key in done[0]:
        values = [r[key] for r in done if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if values else done[0][key]
    out["rounds"] = len(done)
    return out


def ed25519_ceiling(seconds: float = 1.0) -> float:
    """Ed25519 verifications per second of one core (cryptography), on a 300-byte
    message: the ceiling the ed25519 goal is measured against."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    message = os.urandom(300)
    signature = key.sign(message)
    public = key.public_key()
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        for _ in range(200):
            public.verify(signature, message)
        n += 200
    return n / (time.process_time() - t0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", "--n", type=int, default=5000, help="N per enqueue phase")
    parser.add_argument("--modes", default="defaults,equal", help="defaults and/or equal")
    parser.add_argument(
        "--systems",
        default="all",
        help="labels to run (vaultq, vaultq-ed25519, vaultq-ed25519-batch, vaultq-c10, "
        "vaultq-c50, vaultq-sqlite, "
        f"{', '.join(s for s in SYSTEMS if not s.startswith('vaultq'))}); default all",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="the equal mode's")
    parser.add_argument("--rounds", type=int, default=1, help="median of this many rounds")
    parser.add_argument("--sleep-jobs", type=int, default=1000, help="10 ms jobs; 0: skip")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--no-processes", action="store_true", help="skip --processes 2 vs 1")
    parser.add_argument("--processes-jobs", type=int, default=20_000)
    parser.add_argument("--memory-jobs", type=int, default=20_000, help="0: skip")
    parser.add_argument(
        "--dedup-wait", type=float, default=16.0, help="s for the 15 s dedup markers to expire"
    )
    parser.add_argument("--backlog", type=int, default=0, help="jobs queued, e.g. 1000000")
    parser.add_argument("--backlog-jobs", type=int, default=20_000)
    parser.add_argument("--rss", type=int, default=0, help="jobs run while RSS is sampled")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--chart", type=Path, help="write a PNG chart here (matplotlib)")
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.drain:
        elapsed, cpu = anyio.run(
            drain_in_this_process,
            args.drain,
            os.environ["BENCH_KEYS"],
            args.jobs,
            args.concurrency,
            backend_options={"use_uvloop": args.loop == "uvloop"},
        )
        print(elapsed, cpu)
        return
    if args.serve:
        anyio.run(serve_in_this_process, args.serve, os.environ["BENCH_KEYS"], args.concurrency)
        return
    run_harness(args, argv)


def run_harness(args: argparse.Namespace, argv: list[str] | None) -> None:
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        if mode not in ("defaults", "equal"):
            raise SystemExit(f"unknown mode {mode!r}: use defaults and/or equal")
    wanted = None if args.systems == "all" else set(args.systems.split(","))
    known = {c.label for m in ("defaults", "equal") for c in cases(m, 1)}
    if wanted is not None and wanted - known:
        raise SystemExit(f"unknown systems {sorted(wanted - known)}: choose from {sorted(known)}")
    vaultq_runs = wanted is None or "vaultq" in wanted

    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(["benchmarks/throughput.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_start": bench_proc.loadavg(),
            "jobs": args.jobs,
            "sleep_jobs": args.sleep_jobs,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "defaults": {name: s.default for name, s in SYSTEMS.items()},
        },
        "modes": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, bench_proc.private_redis(Path(tmp)) as url:
        run = Run(args, url, Path(tmp))
        # Rounds run every system once each, in turn, so that a burst of load from other
        # processes on the machine falls on all of them; each figure is the median.
        samples: dict[str, dict[str, list[dict[str, Any] | None]]] = {m: {} for m in modes}
        drains: dict[str, list[dict[str, Any]]] = {"p1": [], "p2": []}
        for r in range(1, args.rounds + 1):
            for mode in modes:
                for case in cases(mode, args.concurrency):
                    if wanted is not None and case.label not in wanted:
                        continue
                    if run.python(SYSTEMS[case.system]) is None:
                        continue
                    print(f"[{mode}, round {r}/{args.rounds}] {case.label} ...", flush=True)
                    figures: dict[str, Any] | None
                    try:
                        figures = run.measure(case, latency=mode == "equal")
                    except bench_proc.Failed as exc:
                        print(f"NOTICE: {case.label} failed: {exc}", flush=True)
                        figures = None
                    samples[mode].setdefault(case.label, []).append(figures)
            if vaultq_runs and not args.no_processes:
                print(f"[round {r}/{args.rounds}] vaultq worker --processes 1, 2 ...", flush=True)
                for p in (1, 2):
                    drain = run.cli_drain(p, args.processes_jobs)
                    drains[f"p{p}"].append(msgspec.to_builtins(drain))
        results["modes"] = {
            mode: {label: median_row(runs) for label, runs in rows.items()}
            for mode, rows in samples.items()
        }
        results["rounds"] = samples
        if vaultq_runs and not args.no_processes:
            results["processes"] = {k: median_row(v) for k, v in drains.items()}
        if vaultq_runs and args.memory_jobs:
            print("measuring Redis memory per queued job ...", flush=True)
            results["memory"] = run.memory(args.memory_jobs)
        if vaultq_runs and args.backlog:
            print(f"measuring a drain with {args.backlog} jobs queued ...", flush=True)
            results["backlog"] = run.backlog(args.backlog, args.backlog_jobs)
        if vaultq_runs and args.rss:
            print(f"measuring worker RSS over {args.rss} jobs ...", flush=True)
            results["rss"] = run.rss(args.rss)
        if vaultq_runs:
            results["ed25519_ceiling"] = ed25519_ceiling()
    results["meta"]["seconds"] = round(time.perf_counter() - started)
    results["meta"]["loadavg_end"] = bench_proc.loadavg()
    results["goals"] = bench_report.goals(results)
    bench_report.print_all(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if args.chart:
        bench_report.chart(results, args.chart)
        print(f"wrote {args.chart}")


if __name__ == "__main__":
    main()
