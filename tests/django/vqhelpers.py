"""Helpers for the Django tests (a module of its own: ``conftest`` is an ambiguous name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = Path(tempfile.mkdtemp(prefix="vaultq-django-tests-"))


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "vq_settings"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), str(HERE.parents[1]), env.get("PYTHONPATH")) if p
    )
    env.update(extra)
    return env


class Workers:
    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str, cli: bool = False, **env: str) -> subprocess.Popen[bytes]:
        """Start ``manage.py vaultq_worker ARGS`` (or ``python -m vaultq worker
        vaultq.django ARGS`` with ``cli=True``)."""
        if cli:
            argv = [sys.executable, "-m", "vaultq", "worker", "vaultq.django", *args]
        else:
            argv = [sys.executable, str(HERE / "manage.py"), "vaultq_worker", *args]
        log = WORK / f"worker-{uuid.uuid4().hex[:6]}.log"
        fh = open(log, "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            argv, env=worker_env(**env), stdout=fh, stderr=subprocess.STDOUT, cwd=str(WORK)
        )
        fh.close()
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        return ""

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def queue_stats(queue: str) -> Any:
    from vaultq.django import get_app

    app = get_app()

    async def stats() -> Any:
        broker = await app.broker()
        return await broker.stats(queue)

    return app._run_sync(stats)
