"""A counting and timing middleware (docs/extending.md shows this file; a test runs it)."""

from __future__ import annotations

import contextvars
import logging
from collections import Counter

import anyio

import vaultq

log = logging.getLogger("myapp.jobs")
request_id = contextvars.ContextVar("request_id", default="")


class Timing(vaultq.Middleware):
    """Counts outcomes per task, sums attempt time, carries a request id to the worker."""

    def __init__(self, slow: float = 1.0) -> None:
        self.slow = slow
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.rejections: Counter[str] = Counter()
        self.busy = 0.0
        self.seen_request_ids: list[str] = []

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        if request_id.get():
            trace["request-id"] = request_id.get()  # sealed: brokers never see it

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        self.seen_request_ids.append(job.trace.get("request-id", ""))

    def attempt_finished(
        self, job: vaultq.JobInfo, outcome: vaultq.Outcome, duration: float
    ) -> None:
        self.busy += duration
        if duration > self.slow:
            log.warning("%s %s took %.2f s (%s)", job.task, job.job_id, duration, outcome)

    def settled(self, job: vaultq.JobInfo, outcome: vaultq.Outcome, reason: str | None) -> None:
        self.outcomes[job.task, outcome] += 1

    def rejected(self, job: vaultq.JobInfo, reason: str) -> None:
        self.rejections[reason] += 1

    async def worker_started(self, worker: vaultq.WorkerInfo) -> None:
        worker.start_soon(self.report, worker, name="timing-report")

    async def report(self, worker: vaultq.WorkerInfo) -> None:
        while True:  # cancelled when the worker stops
            await anyio.sleep(60)
            log.info("%s: %d in flight, %s", worker.id, worker.in_flight, dict(self.outcomes))
