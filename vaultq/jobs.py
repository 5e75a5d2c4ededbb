"""Job handles (the producer's view of one job), job statuses and the running job's context."""

from __future__ import annotations

import contextvars
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from vaultq.errors import (
    AuthorizationDenied,
    ConfigurationError,
    DependencyFailed,
    JobCancelled,
    JobDenied,
    JobError,
    JobExpired,
    JobFailed,
    JobRejected,
    JobTimedOut,
    ResultUnavailable,
)

if TYPE_CHECKING:
    from vaultq.brokers.base import CancelState
    from vaultq.envelope import ResultBody
    from vaultq.policy import Policy
    from vaultq.principal import Principal

__all__ = [
    "JobContext",
    "JobHandle",
    "JobStatus",
    "ResultSource",
    "current_job",
    "outcome_error",
    "reset_current_job",
    "set_current_job",
]

R = TypeVar("R")
T = TypeVar("T")


class JobStatus(enum.StrEnum):
    """Where a job is. Final states are everything but PENDING and RUNNING."""

    PENDING = "pending"
    """Queued, delayed, waiting for a retry, or unknown to the broker."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    DENIED = "denied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


class ResultSource(Protocol):
    """What a :class:`JobHandle` needs from its app, and nothing more: read, wait for,
    open and decode one job's result, cancel it, and run async code for the ``*_sync``
    methods. ``App.results`` (:class:`vaultq.results.AppResults`) implements it; a test
    double or another front end may too."""

    @property
    def policy_timeout(self) -> float: ...

    async def outcome(
        self, queue: str, job_id: str, task: str | None = None
    ) -> ResultBody | None: ...

    async def wait_outcome(
        self, queue: str, job_id: str, timeout: float | None, task: str | None = None
    ) -> ResultBody: ...

    async def status(self, queue: str, job_id: str, task: str | None = None) -> JobStatus: ...

    def decoder(self, task_name: str | None) -> Callable[[bytes], Any]: ...

    async def cancel(self, job_id: str, *, queue: str | None = None) -> CancelState: ...

    def run_sync(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...


_ERRORS: dict[str, type[JobError]] = {
    JobStatus.FAILED: JobFailed,
    JobStatus.TIMED_OUT: JobTimedOut,
    JobStatus.DENIED: JobDenied,
    JobStatus.REJECTED: JobRejected,
    JobStatus.EXPIRED: JobExpired,
    JobStatus.CANCELLED: JobCancelled,
}


def outcome_error(job_id: str, body: ResultBody) -> JobError:
    """The exception ``handle.result()`` raises for a job that did not succeed.

    The message carries the job id, status, reason code and error class only: the task's
    own exception text stays in ``.detail`` (it may quote payload values).
    """
    status = body.status
    cls = _ERRORS.get(status, JobFailed)
    if cls is JobCancelled and body.error_type == "vaultq.DependencyFailed":
        cls = DependencyFailed
    what = f"job {job_id} ended {status}"
    if body.error_type:
        what += f" ({body.error_type})"
    if body.attempts:
        what += f" after {body.attempts} attempt(s)"
    detail = body.error or ""
    if cls is JobFailed:
        return JobFailed(
            what, job_id=job_id, reason=status, error_type=body.error_type or "", detail=detail
        )
    return cls(what, job_id=job_id, reason=body.error_type or status, detail=detail)


class _Anyone(enum.Enum):
    ANYONE = "anyone"


_ANYONE = _Anyone.ANYONE
"""``reader=`` default: no reader check (anyone holding the app and the job id reads)."""


class JobHandle(Generic[R]):
    """The producer's handle on one enqueued job. Rebuild one with ``app.job(job_id)``.

    Results are bound to the handle's queue and, when it knows it, its task: a result
    sealed for another task or queue under the same job id raises ``WrongDestination``.

    Reading a result is a bearer capability unless you say who reads: pass
    ``reader=principal`` (and optionally ``policy=``) to :meth:`result`, :meth:`outcome`
    or :meth:`result_sync` and the read is allowed only when the reader is the principal
    the job was enqueued for (its id is sealed into the result) or the policy allows the
    reader (``PolicyRequest.stage == "result"``, ``payload`` None); otherwise it raises
    ``AuthorizationDenied`` before any status, error or value is revealed.
    ``reader=None`` stands for "no principal": it reads only jobs enqueued without one.
    """

    __slots__ = ("_decode", "_source", "id", "queue", "task_name")

    def __init__(
        self,
        source: ResultSource,
        job_id: str,
        *,
        queue: str,
        task_name: str | None = None,
        decode: Callable[[bytes], R] | None = None,
    ) -> None:
        self._source = source
        self.id = job_id
        self.queue = queue
        self.task_name = task_name
        self._decode = decode

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, queue={self.queue!r}, task={self.task_name!r})"

    async def outcome(
        self, *, reader: Principal | _Anyone | None = _ANYONE, policy: Policy | None = None
    ) -> ResultBody | None:
        """The opened result record, or None while the job has not finished.
        ``reader``/``policy``: see the class docstring."""
        body = await self._source.outcome(self.queue, self.id, self.task_name)
        if body is not None:
            await self._check_reader(body, reader, policy)
        return body

    async def status(self) -> JobStatus:
        """Where the job is. Not reader-checked (it reveals the state only); raises
        ``WrongDestination`` when the stored result belongs to another task or queue."""
        return await self._source.status(self.queue, self.id, self.task_name)

    async def result(
        self,
        timeout: float | None = 30.0,
        *,
        reader: Principal | _Anyone | None = _ANYONE,
        policy: Policy | None = None,
    ) -> R:
        """Wait for the job to finish and return its typed result.

        Raises ``JobFailed``/``JobDenied``/``JobTimedOut``/``JobRejected``/``JobExpired``/
        ``JobCancelled`` when it did not succeed, ``ResultUnavailable`` when it finished
        without a stored result, and ``TimeoutError`` when it has not finished in time.
        With ``reader=`` (see the class docstring), ``AuthorizationDenied`` when that
        reader may not read this job's result.
        """
        body = await self._source.wait_outcome(self.queue, self.id, timeout, self.task_name)
        await self._check_reader(body, reader, policy)
        return self._value(body)

    async def cancel(self) -> CancelState:
        """Ask for the job to be cancelled: a queued job never starts, a running one is
        cancelled at its next await. Returns FINISHED (a no-op) for a finished job."""
        return await self._source.cancel(self.id, queue=self.queue)

    def status_sync(self) -> JobStatus:
        return self._source.run_sync(self.status)

    def result_sync(
        self,
        timeout: float | None = 30.0,
        *,
        reader: Principal | _Anyone | None = _ANYONE,
        policy: Policy | None = None,
    ) -> R:
        """:meth:`result` for synchronous code (same arguments, same errors)."""
        return self._source.run_sync(self.result, timeout, reader=reader, policy=policy)

    def outcome_sync(
        self, *, reader: Principal | _Anyone | None = _ANYONE, policy: Policy | None = None
    ) -> ResultBody | None:
        """:meth:`outcome` for synchronous code."""
        return self._source.run_sync(self.outcome, reader=reader, policy=policy)

    async def _check_reader(
        self, body: ResultBody, reader: Principal | _Anyone | None, policy: Policy | None
    ) -> None:
        if reader is _ANYONE:
            if policy is not None:
                raise ConfigurationError("policy= needs reader= (the principal reading)")
            return
        # The owner reads; "no principal" (None) matches only a job enqueued without one.
        if (None if reader is None else reader.id) == body.principal_id:
            return
        if policy is not None:
            from vaultq.policy import PolicyRequest, evaluate

            decision = await evaluate(
                policy,
                PolicyRequest(
                    principal=reader,
                    payload=None,
                    task=self.task_name or "",
                    signer_id="",
                    attempt=0,
                    job_id=self.id,
                    stage="result",
                ),
                timeout=self._source.policy_timeout,
            )
            if decision.allowed:
                return
            denied_by = decision.policy
        else:
            denied_by = "owner-only"
        # No principal ids in the message: the reader's and the owner's stay out of logs.
        raise AuthorizationDenied(
            f"reading the result of job {self.id} was denied ({denied_by}): the reader is "
            "not the principal the job was enqueued for; pass policy= to let other "
            "readers in",
            task=self.task_name or "",
            policy=denied_by,
        )

    def cancel_sync(self) -> CancelState:
        return self._source.run_sync(self.cancel)

    def _value(self, body: ResultBody) -> R:
        if body.status != JobStatus.SUCCEEDED:
            raise outcome_error(self.id, body)
        if body.value is None:
            raise ResultUnavailable(
                f"job {self.id} succeeded but stored no value (store_result=False)",
                job_id=self.id,
            )
        decode = self._decode
        if decode is None:
            decode = self._source.decoder(self.task_name)
        return decode(bytes(body.value))


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running task may know about its own job (``vaultq.current_job()``)."""

    job_id: str
    task: str
    queue: str
    attempt: int
    principal: Principal | None
    signer_id: str
    deadline: float
    """Wall-clock Unix time at which this attempt is cancelled."""
    max_attempts: int
    worker_id: str = ""
    """The worker running this attempt (as stored in the job's result)."""

    def remaining(self) -> float:
        """Seconds left before the deadline (0 when past). Pass it on to I/O timeouts."""
        return max(0.0, self.deadline - time.time())


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("vaultq_current_job")


def current_job() -> JobContext:
    """The running job's context. Raises ConfigurationError outside a job."""
    try:
        return _current.get()
    except LookupError:
        raise ConfigurationError(
            "vaultq.current_job() was called outside a running job; call it from task code"
        ) from None


def set_current_job(ctx: JobContext) -> contextvars.Token[JobContext]:
    """Make ``ctx`` what :func:`current_job` returns (the runtime, around one attempt)."""
    return _current.set(ctx)


def reset_current_job(token: contextvars.Token[JobContext]) -> None:
    """Undo :func:`set_current_job`."""
    _current.reset(token)
