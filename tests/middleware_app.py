"""A recording middleware and an app with process-isolated tasks, for
tests/test_middleware.py. The isolated children import this module by name
(``tests.middleware_app:app``), so the app reads its broker and keys from
``$VAULTQ_BROKER``/``$VAULTQ_KEYS`` and the children write what they see under
``$VAULTQ_TEST_MW_DIR``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

import vaultq


class Recorder(vaultq.Middleware):
    """Records every hook call with its arguments, in the process it runs in."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def _add(self, hook: str, *args: Any) -> None:
        with self.lock:
            self.calls.append((hook, args))
        spool = os.environ.get("VAULTQ_TEST_MW_DIR")
        if spool:
            # One line per hook call and process: the test reads which process saw what.
            with open(Path(spool) / f"hooks.{os.getpid()}", "a", encoding="utf-8") as out:
                out.write(f"{hook} {args!r}\n")

    def of(self, hook: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [args for name, args in self.calls if name == hook]

    def for_job(self, job_id: str) -> list[tuple[str, tuple[Any, ...]]]:
        with self.lock:
            return [(n, a) for n, a in self.calls if a and getattr(a[0], "job_id", None) == job_id]

    async def worker_started(self, worker: vaultq.WorkerInfo) -> None:
        self._add("worker_started", worker.id, worker.app, worker.queues)

    async def worker_stopped(self, worker: vaultq.WorkerInfo) -> None:
        self._add("worker_stopped", worker.id, worker.processed)

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        self._add("before_enqueue", job)

    def after_enqueue(self, job: vaultq.EnqueueInfo, error: str | None) -> None:
        self._add("after_enqueue", job, error)

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        self._add("attempt_started", job)

    def attempt_finished(
        self, job: vaultq.JobInfo, outcome: vaultq.Outcome, duration: float
    ) -> None:
        self._add("attempt_finished", job, outcome, duration)

    def settled(self, job: vaultq.JobInfo, outcome: vaultq.Outcome, reason: str | None) -> None:
        self._add("settled", job, outcome, reason)

    def rejected(self, job: vaultq.JobInfo, reason: str) -> None:
        self._add("rejected", job, reason)

    def around_sync(self, job: vaultq.JobInfo, call: Callable[[], None]) -> None:
        self._add("around_sync", job)
        call()

    async def around_async(self, job: vaultq.JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        self._add("around_async", job)
        await call()


recorder = Recorder()
app = vaultq.App("mwapp", middleware=[recorder])


class Word(msgspec.Struct, frozen=True):
    text: str


@app.task(name="mw.isolated_echo", isolation="process", timeout=30, retries=0)
def isolated_echo(job: Word) -> str:
    return job.text


@app.task(name="mw.isolated_fail", isolation="process", timeout=30, retries=0)
def isolated_fail(job: Word) -> str:
    raise ValueError(job.text)
