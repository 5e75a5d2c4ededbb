"""Reading job results for an app: fetch, wait for, open and decode one job's result.

``JobHandle`` reads through this narrow interface (:class:`vaultq.jobs.ResultSource`)
rather than through ``App``: a handle needs the broker's stored result, the app's keys
to open it, and the task's result codec — nothing else of the app. Results are opened
bound to their queue and (when known) task, so a result another task left under the
same job id is refused instead of decoded as this one's (job-id squatting).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from vaultq.envelope import ResultBody, open_result
from vaultq.errors import ConfigurationError
from vaultq.jobs import JobHandle, JobStatus

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.brokers.base import CancelState
    from vaultq.tasks import Task

__all__ = ["AppResults"]

T = TypeVar("T")

_WAIT_SLICE = 30.0
"""Longest single blocking read: ``timeout=None`` never asks the broker to block forever."""


class AppResults:
    """One app's results, as ``JobHandle`` sees them (implements ``ResultSource``)."""

    __slots__ = ("_app",)

    def __init__(self, app: App) -> None:
        self._app = app

    def handle(
        self, job_id: str, *, queue: str | None = None, task: Task[Any, Any] | str | None = None
    ) -> JobHandle[Any]:
        """``app.job()``: a handle on ``job_id``, typed when ``task`` (or its name) is given."""
        app = self._app
        found = app.get_task(task) if isinstance(task, str) else task
        if isinstance(task, str) and found is None:
            raise ConfigurationError(f"no task {task!r} in app {app.name!r}")
        if found is None:
            return JobHandle(self, job_id, queue=queue or app.default_queue)
        return JobHandle(
            self,
            job_id,
            queue=queue or found.queue,
            task_name=found.name,
            decode=found.result_codec.decode,
        )

    @property
    def policy_timeout(self) -> float:
        return self._app.policy_timeout

    def open(self, data: bytes, job_id: str, queue: str, task: str | None = None) -> ResultBody:
        """Open a stored result with the app's keys, bound to ``queue`` and ``task``."""
        app = self._app
        return open_result(
            data,
            app.keyring,
            app=app.name,
            job_id=job_id,
            task=task,
            queue=queue,
            max_size=app.max_envelope_size,
            accept_v1=app.accept_envelope_v1,
        )

    async def outcome(self, queue: str, job_id: str, task: str | None = None) -> ResultBody | None:
        """The opened result, or None while the job has not finished."""
        broker = await self._app.broker()
        data = await broker.get_result(queue, job_id)
        if data is None:
            return None
        return self.open(data, job_id, queue, task)

    async def wait_outcome(
        self, queue: str, job_id: str, timeout: float | None, task: str | None = None
    ) -> ResultBody:
        """The opened result once the job finished; ``TimeoutError`` after ``timeout``."""
        broker = await self._app.broker()
        data = await broker.get_result(queue, job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while data is None:
            left = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} has not finished within {timeout} s")
            data = await broker.wait_result(queue, job_id, min(left, _WAIT_SLICE))
        return self.open(data, job_id, queue, task)

    async def status(self, queue: str, job_id: str, task: str | None = None) -> JobStatus:
        """Where the job is: its final status, else RUNNING or PENDING."""
        body = await self.outcome(queue, job_id, task)
        if body is not None:
            try:
                return JobStatus(body.status)
            except ValueError:
                return JobStatus.FAILED
        broker = await self._app.broker()
        if await broker.is_running(queue, job_id):
            return JobStatus.RUNNING
        return JobStatus.PENDING

    def decoder(self, task_name: str | None) -> Callable[[bytes], Any]:
        """The registered task's typed result decoder, else plain JSON values."""
        task = self._app.get_task(task_name) if task_name else None
        if task is not None:
            return task.result_codec.decode
        return msgspec.json.decode

    async def cancel(self, job_id: str, *, queue: str | None = None) -> CancelState:
        return await self._app.cancel(job_id, queue=queue)

    def run_sync(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return self._app.run_sync(fn, *args, **kwargs)
