"""Tasks for tests/test_isolation.py, imported both by the test and by the isolated
child processes (``python -m vaultq.runtime.child tests.isolation_app:app``).

The broker and keys come from ``$VAULTQ_BROKER`` and ``$VAULTQ_KEYS``, which the test sets
before importing this module; the children inherit them (and need neither to run tasks).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import anyio
import msgspec

import vaultq
from vaultq.app import App

app = App("isoapp")


class Empty(msgspec.Struct, frozen=True):
    pass


class PidFile(msgspec.Struct, frozen=True):
    path: str


class Text(msgspec.Struct, frozen=True):
    text: str


class Pair(msgspec.Struct, frozen=True):
    a: int
    b: int


class Sum(msgspec.Struct, frozen=True):
    total: int
    pid: int
    job_id: str
    deadline: float
    principal: str | None


class Sleep(msgspec.Struct, frozen=True):
    seconds: float
    path: str = ""


class IsolatedError(Exception):
    pass


@app.task(isolation="process", timeout=30, retries=0)
def whoami(job: Empty) -> int:
    return os.getpid()


@app.task(isolation="process", timeout=30, retries=0)
def vaultq_environment(job: Empty) -> dict[str, str]:
    """The child's VAULTQ_* variables (the test checks that no secret is among them)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("VAULTQ_", "VQTEST_"))}


@app.task(isolation="process", timeout=1, retries=0)
def busy(job: PidFile) -> None:
    Path(job.path).write_text(str(os.getpid()))
    while True:
        pass


@app.task(isolation="process", timeout=1, retries=0)
def stubborn(job: PidFile) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(job.path).write_text(str(os.getpid()))
    while True:
        pass


@app.task(isolation="process", timeout=30, retries=0)
def add(job: Pair) -> Sum:
    ctx = vaultq.current_job()
    # Printing must not corrupt the frames on the child's real stdout.
    print("add: noise on stdout", job.a, job.b)
    sys.stdout.write("more noise\n")
    os.write(1, b"raw noise on fd 1\n")
    return Sum(
        total=job.a + job.b,
        pid=os.getpid(),
        job_id=ctx.job_id,
        deadline=ctx.deadline,
        principal=ctx.principal.id if ctx.principal else None,
    )


@app.task(isolation="process", timeout=30, retries=0)
async def add_async(job: Pair) -> Sum:
    await anyio.sleep(0)
    ctx = vaultq.current_job()
    return Sum(
        total=job.a + job.b,
        pid=os.getpid(),
        job_id=ctx.job_id,
        deadline=ctx.deadline,
        principal=None,
    )


@app.task(isolation="process", timeout=30, retries=0)
def fail(job: Text) -> int:
    raise IsolatedError(job.text)


@app.task(isolation="process", timeout=30, retries=0)
def fail_builtin(job: Text) -> int:
    raise ValueError(job.text)


@app.task(isolation="process", timeout=30, retries=0)
def crash(job: PidFile) -> int:
    Path(job.path).write_text(str(os.getpid()))
    os._exit(3)


@app.task(isolation="process", timeout=30, retries=0)
def sleepy(job: Sleep) -> int:
    if job.path:
        Path(job.path).write_text(str(os.getpid()))
    time.sleep(job.seconds)
    return os.getpid()


@app.task(isolation="process", timeout=30, retries=0)
def wrong_result(job: Empty) -> None:
    return 5  # type: ignore[return-value]


@app.task(timeout=30, retries=0)
def in_process(job: Empty) -> int:
    return os.getpid()


class Attempts(msgspec.Struct, frozen=True):
    """Which exception each attempt raises ("" = succeed), by attempt number."""

    raises: list[str]


_RAISE = {
    "transient": lambda: ConnectionError("try again"),
    "value": lambda: ValueError("permanent"),
    "retry": lambda: vaultq.Retry(delay=0),
    "fatal": lambda: vaultq.Fatal("stop"),
}


@app.task(
    isolation="process",
    timeout=30,
    retries=3,
    backoff=0.01,
    retry_on=ConnectionError,
    dont_retry_on=ValueError,
)
def retrying(job: Attempts) -> int:
    attempt = vaultq.current_job().attempt
    what = job.raises[attempt - 1] if attempt <= len(job.raises) else ""
    if what:
        raise _RAISE[what]()
    return attempt
