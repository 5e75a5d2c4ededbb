"""The app the chaos scenarios run in real worker processes
(``python -m vaultq worker benchmarks.chaos_app``).

Configured from the environment like a deployment (VAULTQ_BROKER, VAULTQ_KEYS), plus:
CHAOS_LOG, a file every attempt appends ``start``/``end``/``done`` lines to (O_APPEND
writes of one short line are atomic, so several processes can share it); CHAOS_LEASE;
CHAOS_CLOCK_OFFSET, seconds this worker's clock is off (the ``app.clock`` test hook).
"""

from __future__ import annotations

import os
import secrets
import time

import anyio
import msgspec

import vaultq

app = vaultq.App("chaos", lease=float(os.environ.get("CHAOS_LEASE", "30")))
app.clock.offset = float(os.environ.get("CHAOS_CLOCK_OFFSET", "0"))


class Work(msgspec.Struct, frozen=True):
    n: int
    seconds: float


def record(event: str, job_id: str, attempt: str) -> None:
    path = os.environ.get("CHAOS_LOG")
    if path:
        line = f"{event} {job_id} {attempt} {os.getpid()} {time.time():.6f}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@app.task(name="chaos.work", timeout=600, retries=3)
async def work(job: Work) -> int:
    job_id = vaultq.current_job().job_id
    attempt = secrets.token_hex(4)
    record("start", job_id, attempt)
    try:
        await anyio.sleep(job.seconds)
        record("done", job_id, attempt)
    finally:
        record("end", job_id, attempt)
    return job.n
