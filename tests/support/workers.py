"""Apps on a real broker, an in-process worker for a block, worker subprocesses (``python
-m vaultq worker``) with their environment and logs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio

import vaultq
from vaultq.runtime.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""


def make_app(
    name: str, url: str, keyring: vaultq.Keyring | None = None, **options: Any
) -> vaultq.App:
    return vaultq.App(name, broker=url, keyring=keyring or vaultq.Keyring.generate(), **options)


@contextlib.asynccontextmanager
async def running_worker(app: vaultq.App, **options: Any) -> AsyncIterator[Worker]:
    """Run an in-process worker for the duration of the block, then drain it."""
    options.setdefault("concurrency", 4)
    options.setdefault("grace", 5.0)
    options.setdefault("block", 0.2)
    worker = Worker(app, **options)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        try:
            yield worker
        finally:
            worker.stop()


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


def start_worker_process(
    spec: str, env: Mapping[str, str], *args: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m vaultq worker SPEC ARGS`` in a subprocess (stderr to a log file)."""
    logs = Path(tempfile.gettempdir()) / "vaultq-test-logs"
    logs.mkdir(exist_ok=True)
    path = logs / f"worker-{time.monotonic_ns()}.log"
    log = open(path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultq", "worker", spec, *args],
        env=dict(env),
        cwd=str(cwd or ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def wait_until_serving(procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """Block until every worker process has printed its start line (signals handled,
    about to fetch)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        path: Path = proc.log_path  # type: ignore[attr-defined]
        while b"vaultq worker " not in path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{path.read_text()[-2000:]}")
            time.sleep(0.05)


@contextlib.contextmanager
def worker_processes(
    spec: str, env: Mapping[str, str], count: int, *args: str, cwd: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_worker_process(spec, env, *args, cwd=cwd) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
