"""Chaos scenarios against real worker processes and a real redis-server, one table.

    .venv/bin/python -m benchmarks.chaos [--scale small|full] [--only kill9,outage,...]

Each scenario starts its own ``redis-server`` (append-only file, ``appendfsync
everysec``, in a temporary directory, on a free loopback port), runs workers as
``python -m vaultq worker benchmarks.chaos_app`` subprocesses, enqueues jobs whose
every attempt appends ``start``/``done``/``end`` lines to a shared log, injects the
fault, waits for every job's outcome and prints one row:

* **lost**: jobs enqueued without a successful outcome at the end;
* **dup started / dup finished**: jobs whose body started (finished) more than once --
  allowed by at-least-once after a kill -9, never by a healthy run;
* **overlap**: pairs of attempts of one job id running at the same time (an attempt
  killed with SIGKILL ends at its kill);
* **crashes**: worker processes that exited by themselves with a non-zero status;
* **redis mem**: ``used_memory`` at the end; **recovery**: seconds from the end of the
  fault (last kill, broker back, ...) until the last job finished.

The scenarios (``--scale small`` is what ``tests/chaos/`` runs in CI):

* ``kill9``: kill -9 storm -- a random worker is killed and replaced every interval;
* ``outage``: Redis stopped for longer than the lease while long jobs run, then started
  again with its data;
* ``skew``: workers whose clock is two minutes behind the broker's;
* ``sigterm``: workers stopped with SIGTERM (graceful) and replaced, under load;
* ``flood``: junk written straight into the stream before the workers start (random
  bytes under random ids, some of them 2 MiB, and copies under the genuine jobs' ids);
  *redis mem* is then the memory left once the junk is drained (stubs, no results).

Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import redis

import vaultq

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["SCALES", "Lab", "Row", "main", "run_scenario"]


@dataclass
class Row:
    scenario: str
    jobs: int
    lost: int = 0
    dup_started: int = 0
    dup_finished: int = 0
    overlapping: int = 0
    crashes: int = 0
    redis_memory: str = "-"
    recovery: float = 0.0

    def cells(self) -> list[str]:
        return [
            self.scenario,
            str(self.jobs),
            str(self.lost),
            str(self.dup_started),
            str(self.dup_finished),
            str(self.overlapping),
            str(self.crashes),
            self.redis_memory,
            f"{self.recovery:.1f} s",
        ]


HEADER = [
    "scenario",
    "jobs",
    "lost",
    "dup started",
    "dup finished",
    "overlap",
    "crashes",
    "redis mem",
    "recovery",
]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Attempt:
    job: str
    token: str
    pid: int
    start: float
    end: float | None = None
    done: bool = False


@dataclass
class Lab:
    """A redis-server, worker processes and the attempt log of one scenario."""

    workdir: Path
    lease: float
    port: int = field(default_factory=_free_port)
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: dict[int, float] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)
    keys: vaultq.Keyring = field(default_factory=vaultq.Keyring.generate)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.workdir / "attempts.log"

    # -- the broker ---------------------------------------------------------------------

    def start_redis(self) -> None:
        binary = os.environ.get("VAULTQ_TEST_REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server not found on PATH (or set VAULTQ_TEST_REDIS_SERVER)")
        self.server = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 30
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    if client.ping():
                        return
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop_redis(self) -> None:
        server, self.server = self.server, None
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=30)

    def redis_memory(self) -> str:
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            used = int(client.info("memory")["used_memory"])
        finally:
            client.close()
        return f"{used / 1_048_576:.1f} MiB"

    # -- workers --------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VAULTQ_BROKER=self.url,
            VAULTQ_KEYS=self.keys.to_json(),
            CHAOS_LOG=str(self.log),
            CHAOS_LEASE=str(self.lease),
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        )
        env.update(extra)
        return env

    def spawn(self, concurrency: int, *, grace: float = 2.0, **extra: str) -> None:
        out = open(self.workdir / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaultq",
                "worker",
                "benchmarks.chaos_app",
                "--concurrency",
                str(concurrency),
                "--grace",
                str(grace),
            ],
            env=self.env(**extra),
            cwd=str(ROOT),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = out.name  # type: ignore[attr-defined]
        self.workers.append(proc)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.poll() is None and p.pid not in self.stopped]

    def ready(self) -> list[subprocess.Popen[bytes]]:
        """Live workers that printed their start line: signals are handled and jobs
        flow. Faults aim at these, so a slow start on a loaded machine cannot turn a
        SIGTERM into a kill before the handler exists, or a kill -9 into a no-op."""
        return [p for p in self.live() if b"vaultq worker " in _read(p.log_path)]  # type: ignore[attr-defined]

    async def wait_ready(self, timeout: float = 60.0) -> list[subprocess.Popen[bytes]]:
        with anyio.fail_after(timeout):
            while not (ready := self.ready()):  # noqa: ASYNC110 - polls a log file
                await anyio.sleep(0.05)
        return ready

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.killed[proc.pid] = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def term(self, proc: subprocess.Popen[bytes]) -> None:
        self.stopped.add(proc.pid)
        proc.send_signal(signal.SIGTERM)

    def crashes(self) -> int:
        """Workers that exited by themselves with a non-zero status (not our SIGKILLs)."""
        return sum(
            1
            for p in self.workers
            if p.poll() is not None and p.pid not in self.killed and p.returncode != 0
        )

    def stop_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                self.term(p)
        for p in self.workers:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- the record -----------------------------------------------------------------------

    def attempts(self) -> list[Attempt]:
        if not self.log.exists():
            return []
        by_token: dict[str, Attempt] = {}
        for line in self.log.read_text().splitlines():
            event, job, token, pid, at = line.split()
            if event == "start":
                by_token[token] = Attempt(job, token, int(pid), float(at))
            elif token in by_token and event == "end":
                by_token[token].end = float(at)
            elif token in by_token and event == "done":
                by_token[token].done = True
        for a in by_token.values():
            if a.end is None and a.pid in self.killed:
                a.end = self.killed[a.pid]
        return list(by_token.values())

    def started(self) -> set[str]:
        return {a.job for a in self.attempts()}

    def judge(self, row: Row) -> Row:
        attempts = self.attempts()
        now = time.time()
        by_job: dict[str, list[Attempt]] = {}
        for a in attempts:
            by_job.setdefault(a.job, []).append(a)
        for runs in by_job.values():
            if len(runs) > 1:
                row.dup_started += 1
            if sum(a.done for a in runs) > 1:
                row.dup_finished += 1
            runs.sort(key=lambda a: a.start)
            for a, b in itertools.pairwise(runs):
                if b.start < (a.end if a.end is not None else now):
                    row.overlapping += 1
        row.crashes = self.crashes()
        row.redis_memory = self.redis_memory()
        return row


@contextlib.contextmanager
def lab(lease: float) -> Iterator[Lab]:
    with tempfile.TemporaryDirectory(prefix="vaultq-chaos-") as tmp:
        the_lab = Lab(Path(tmp), lease)
        the_lab.start_redis()
        try:
            yield the_lab
        finally:
            the_lab.stop_workers()
            the_lab.stop_redis()


def producer(the_lab: Lab, *, enqueue_retry: float = 5.0) -> tuple[vaultq.App, Any]:
    from benchmarks import chaos_app

    app = vaultq.App("chaos", broker=the_lab.url, keyring=the_lab.keys, enqueue_retry=enqueue_retry)
    task = app.task(name="chaos.work", timeout=600, retries=3)(chaos_app.work.fn)
    return app, task


async def wait_started(the_lab: Lab, ids: set[str], timeout: float) -> None:
    with anyio.fail_after(timeout):
        # Polls a file that other processes append to: no event to wait on.
        while not ids <= the_lab.started():  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def outcomes(handles: list[Any], timeout: float) -> tuple[int, float]:
    """(lost, time the last result was seen): each handle gets until ``timeout``."""
    deadline = time.monotonic() + timeout
    lost = 0
    for h in handles:
        try:
            await h.result(timeout=max(0.1, deadline - time.monotonic()))
        except (vaultq.VaultqError, TimeoutError):
            lost += 1
    return lost, time.time()


# -- scenarios ------------------------------------------------------------------------------


async def kill9(jobs: int, workers: int, kills: int, seconds: float, lease: float) -> Row:
    with lab(lease) as the_lab:
        for _ in range(workers):
            the_lab.spawn(10)
        app, task = producer(the_lab)
        handles = await task.enqueue_many([chaos_work(n, seconds) for n in range(jobs)])
        fault_over = time.time()
        for _ in range(kills):
            await anyio.sleep(max(0.5, lease / 2))
            live = await the_lab.wait_ready()
            the_lab.kill(random.choice(live))  # nosec B311 - chaos, not security
            the_lab.spawn(10)
            fault_over = time.time()
        lost, done_at = await outcomes(handles, timeout=60 + 10 * lease)
        row = the_lab.judge(Row("kill -9 storm", jobs, lost=lost))
        row.recovery = max(0.0, done_at - fault_over)
        await app.aclose()
        return row


async def outage(jobs: int, workers: int, seconds: float, lease: float, down: float) -> Row:
    with lab(lease) as the_lab:
        for _ in range(workers):
            the_lab.spawn(max(1, -(-jobs // workers)))
        app, task = producer(the_lab)
        handles = await task.enqueue_many([chaos_work(n, seconds) for n in range(jobs)])
        await wait_started(the_lab, {h.id for h in handles}, timeout=60)
        await anyio.to_thread.run_sync(the_lab.stop_redis)
        await anyio.sleep(down)
        await anyio.to_thread.run_sync(the_lab.start_redis)
        back = time.time()
        lost, done_at = await outcomes(handles, timeout=3 * seconds + 6 * lease + 60)
        row = the_lab.judge(Row(f"Redis down {down:g} s (lease {lease:g} s)", jobs, lost=lost))
        row.recovery = max(0.0, done_at - back)
        await app.aclose()
        return row


async def skew(jobs: int, workers: int, offset: float, lease: float) -> Row:
    with lab(lease) as the_lab:
        for _ in range(workers):
            the_lab.spawn(10, CHAOS_CLOCK_OFFSET=str(offset))
        app, task = producer(the_lab)
        start = time.time()
        handles = await task.enqueue_many([chaos_work(n, 0.01) for n in range(jobs)])
        lost, done_at = await outcomes(handles, timeout=60)
        row = the_lab.judge(Row(f"worker clock {offset:+g} s", jobs, lost=lost))
        row.recovery = max(0.0, done_at - start)
        await app.aclose()
        return row


async def sigterm(jobs: int, workers: int, terms: int, seconds: float, lease: float) -> Row:
    with lab(lease) as the_lab:
        for _ in range(workers):
            the_lab.spawn(10, grace=1.0)
        app, task = producer(the_lab)
        handles = await task.enqueue_many([chaos_work(n, seconds) for n in range(jobs)])
        fault_over = time.time()
        for _ in range(terms):
            await anyio.sleep(1.0)
            live = await the_lab.wait_ready()
            the_lab.term(random.choice(live))  # nosec B311 - chaos, not security
            the_lab.spawn(10, grace=1.0)
            fault_over = time.time()
        lost, done_at = await outcomes(handles, timeout=60 + 10 * lease)
        row = the_lab.judge(Row("SIGTERM under load", jobs, lost=lost))
        row.recovery = max(0.0, done_at - fault_over)
        await app.aclose()
        return row


async def flood(jobs: int, workers: int, junk: int, big: int, lease: float) -> Row:
    with lab(lease) as the_lab:
        app, task = producer(the_lab)
        handles = await task.enqueue_many([chaos_work(n, 0.01) for n in range(jobs)])
        broker = await app.broker()
        stream = broker.keys("default").stream  # type: ignore[attr-defined]
        client = redis.Redis(host="127.0.0.1", port=the_lab.port)
        try:
            pipe = client.pipeline(transaction=False)
            for i in range(junk):
                # one in ten under a genuine job's id (written after it, as an attacker
                # who read the ids would): it must neither answer for it nor run
                job_id = handles[i % jobs].id if i % 10 == 0 else f"junk-{i}"
                pipe.xadd(stream, {"id": job_id, "env": os.urandom(300), "att": "1", "at": "0"})
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
            for i in range(big):
                client.xadd(stream, {"id": f"big-{i}", "env": b"B" * (2 << 20)})
        finally:
            client.close()
        start = time.time()
        for _ in range(workers):
            the_lab.spawn(10)
        lost, done_at = await outcomes(handles, timeout=120 + junk / 500)
        with anyio.fail_after(120 + junk / 500):
            while (await broker.stats("default")).ready:  # noqa: ASYNC110 - polled
                await anyio.sleep(0.2)
        row = the_lab.judge(Row(f"hostile flood ({junk} junk, {big} of 2 MiB)", jobs, lost=lost))
        row.recovery = max(0.0, done_at - start)
        await app.aclose()
        return row


def chaos_work(n: int, seconds: float) -> Any:
    from benchmarks import chaos_app

    return chaos_app.Work(n=n, seconds=seconds)


SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "kill9": {"jobs": 60, "workers": 2, "kills": 3, "seconds": 0.5, "lease": 2.0},
        "outage": {"jobs": 4, "workers": 2, "seconds": 8.0, "lease": 2.0, "down": 4.0},
        "skew": {"jobs": 20, "workers": 1, "offset": -120.0, "lease": 2.0},
        "sigterm": {"jobs": 60, "workers": 2, "terms": 2, "seconds": 0.3, "lease": 2.0},
        "flood": {"jobs": 50, "workers": 2, "junk": 2000, "big": 5, "lease": 2.0},
    },
    "full": {
        "kill9": {"jobs": 2000, "workers": 4, "kills": 20, "seconds": 0.5, "lease": 5.0},
        "outage": {"jobs": 20, "workers": 2, "seconds": 60.0, "lease": 30.0, "down": 45.0},
        "skew": {"jobs": 1000, "workers": 2, "offset": -120.0, "lease": 5.0},
        "sigterm": {"jobs": 2000, "workers": 4, "terms": 10, "seconds": 0.3, "lease": 5.0},
        "flood": {"jobs": 200, "workers": 2, "junk": 100_000, "big": 20, "lease": 5.0},
    },
}
SCENARIOS = {"kill9": kill9, "outage": outage, "skew": skew, "sigterm": sigterm, "flood": flood}


async def run_scenario(name: str, scale: str = "small") -> Row:
    return await SCENARIOS[name](**SCALES[scale][name])  # type: ignore[operator]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only.split(","):
        print(f"running {name} ({args.scale}) ...", file=sys.stderr, flush=True)
        rows.append(anyio.run(run_scenario, name, args.scale))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"vaultq chaos, scale {args.scale}, {now}, {platform.node()}: {platform.platform()}, ")
    print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return b""
