"""JobHandle reads results through the narrow ResultSource interface (vaultq/results.py),
and the errors it raises carry a declared ``detail``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

import vaultq
from vaultq.brokers.base import CancelState
from vaultq.envelope import ResultBody
from vaultq.jobs import JobHandle, JobStatus, ResultSource, outcome_error

T = TypeVar("T")


class StoredResults:
    """A ResultSource that is not an App: results handed in by the test."""

    policy_timeout = 1.0

    def __init__(self) -> None:
        self.bodies: dict[str, ResultBody] = {}
        self.cancelled: list[str] = []

    async def outcome(self, queue: str, job_id: str, task: str | None = None) -> ResultBody | None:
        return self.bodies.get(job_id)

    async def wait_outcome(
        self, queue: str, job_id: str, timeout: float | None, task: str | None = None
    ) -> ResultBody:
        body = self.bodies.get(job_id)
        if body is None:
            raise TimeoutError(job_id)
        return body

    async def status(self, queue: str, job_id: str, task: str | None = None) -> JobStatus:
        body = self.bodies.get(job_id)
        return JobStatus.PENDING if body is None else JobStatus(body.status)

    def decoder(self, task_name: str | None) -> Callable[[bytes], Any]:
        return msgspec.json.decode

    async def cancel(self, job_id: str, *, queue: str | None = None) -> CancelState:
        self.cancelled.append(job_id)
        return CancelState.REQUESTED

    def run_sync(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return await fn(*args, **kwargs)

        return anyio.run(call)


def _body(status: str, *, value: bytes | None = None, error: str | None = None) -> ResultBody:
    return ResultBody(
        status=status,
        value=msgspec.Raw(value) if value is not None else None,
        error_type="ValueError" if error else None,
        error=error,
        attempts=1,
        finished_at=time.time(),
        worker_id="w",
    )


def test_a_handle_needs_only_a_result_source() -> None:
    source = StoredResults()
    typed: ResultSource = source  # a Protocol: mypy checks StoredResults fits it
    handle: JobHandle[Any] = JobHandle(typed, "job-1", queue="default")
    assert handle.status_sync() == JobStatus.PENDING
    source.bodies["job-1"] = _body("succeeded", value=b'{"total": 3}')
    assert handle.status_sync() == JobStatus.SUCCEEDED
    assert handle.result_sync(timeout=1) == {"total": 3}
    assert handle.cancel_sync() == CancelState.REQUESTED
    assert source.cancelled == ["job-1"]


def test_the_stored_error_text_is_a_declared_detail() -> None:
    source = StoredResults()
    source.bodies["job-2"] = _body("failed", error="card 4242 declined")
    handle: JobHandle[Any] = JobHandle(source, "job-2", queue="default")
    with pytest.raises(vaultq.JobFailed) as info:
        handle.result_sync(timeout=1)
    # The task's text stays out of the message (it may quote payload values)...
    assert "4242" not in str(info.value)
    # ...and in .detail, an attribute every JobError declares.
    assert info.value.detail == "card 4242 declined"
    assert vaultq.JobError("no detail given").detail == ""
    denied = outcome_error("job-3", _body("denied", error="policy said no"))
    assert isinstance(denied, vaultq.JobDenied) and denied.detail == "policy said no"


def test_out_of_range_arguments_are_configuration_errors_and_value_errors(
    tmp_path: Any,
) -> None:
    from vaultq.runtime.worker import Worker

    app = vaultq.App("ranges", broker=f"sqlite:///{tmp_path / 'q.db'}")
    with pytest.raises(vaultq.ConfigurationError, match="concurrency >= 1") as info:
        Worker(app, concurrency=0)
    # Callers that caught the builtin still do.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, vaultq.errors.InvalidArgument)
