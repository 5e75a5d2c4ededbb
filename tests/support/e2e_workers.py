"""Real worker processes for end-to-end tests (authorization, deadlines, cancellation).

Worker processes are real: ``python -m vaultq worker MODULE:app`` with the broker, keys
and test settings passed through the environment, logging to a file in the test's
temporary directory (read back to check audit lines).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

import vaultq
from support.workers import worker_env


@dataclass
class WorkerRun:
    procs: list[subprocess.Popen[bytes]]
    logdir: Path
    started: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return "\n".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(self.logdir.glob("worker-*.log"))
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


@contextlib.contextmanager
def e2e_worker(
    spec: str,
    *,
    url: str,
    keyring: vaultq.Keyring,
    logdir: Path,
    env: Mapping[str, str] | None = None,
    count: int = 1,
    args: tuple[str, ...] = ("--concurrency", "4", "--grace", "2"),
) -> Iterator[WorkerRun]:
    """``count`` worker processes of ``spec``, logging to ``logdir/worker-N.log``; on a
    failing test their log is printed. Stopped with SIGTERM (then SIGKILL) at the end."""
    full = worker_env({"VAULTQ_BROKER": url, "VAULTQ_KEYS": keyring.to_json(), **(env or {})})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (logdir / f"worker-{i}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "vaultq", "worker", spec, *args],
                        env=full,
                        cwd=str(logdir),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        run = WorkerRun(procs, logdir)
        try:
            yield run
        except BaseException:
            print("---- worker log ----\n" + run.log()[-8000:])
            raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def dead_reasons(app: vaultq.App, queue: str = "default") -> dict[str, tuple[str, int]]:
    """job id -> (dead-letter reason, attempt)."""
    broker = await app.broker()
    return {d.job_id: (d.reason, d.attempt) for d in await broker.dead_letters(queue)}


async def settled(app: vaultq.App, queue: str = "default", timeout: float = 5.0) -> None:
    """Wait until nothing of ``queue`` is ready, delayed or running (no retry pending)."""
    broker = await app.broker()
    deadline = time.monotonic() + timeout
    while True:
        stats = await broker.stats(queue)
        if stats.ready == stats.delayed == stats.running == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"queue {queue} did not settle: {stats}")
        await anyio.sleep(0.05)
