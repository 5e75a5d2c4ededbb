"""The app the end-to-end tests run in real worker processes (`python -m vaultq worker e2e_app`).

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, and
E2E_LOG, a file every job appends a line to (so tests can count executions across
processes; O_APPEND writes of one short line are atomic).
"""

from __future__ import annotations

import os
import time

import anyio
import msgspec

import vaultq

app = vaultq.App("e2e", lease=float(os.environ.get("E2E_LEASE", "30")))


class Item(msgspec.Struct, frozen=True):
    n: int
    marker: str = ""
    secret: vaultq.Secret[str] | None = None


class Sleep(msgspec.Struct, frozen=True):
    n: int
    seconds: float


class Doubled(msgspec.Struct, frozen=True):
    n: int
    doubled: int
    pid: int


def _log(event: str, n: int) -> None:
    path = os.environ.get("E2E_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{event} {n} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


@app.task(name="e2e.double")
async def double(job: Item) -> Doubled:
    _log("run", job.n)
    return Doubled(n=job.n, doubled=job.n * 2, pid=os.getpid())


@app.task(name="e2e.slow", timeout=60)
async def slow(job: Sleep) -> int:
    _log("start", job.n)
    await anyio.sleep(job.seconds)
    _log("finish", job.n)
    return job.n


def gate_path() -> str:
    return os.environ["E2E_LOG"] + ".open"


@app.task(name="e2e.gated", timeout=60)
async def gated(job: Item) -> int:
    """Runs until the test opens the gate (creates ``gate_path()``): a job that cannot
    finish before the test decides, however slow the machine."""
    _log("start", job.n)
    while not os.path.exists(gate_path()):
        await anyio.sleep(0.05)
    _log("finish", job.n)
    return job.n


@app.task(name="e2e.slow_sync", timeout=60)
def slow_sync(job: Sleep) -> int:
    _log("start", job.n)
    time.sleep(job.seconds)
    _log("finish", job.n)
    return job.n
