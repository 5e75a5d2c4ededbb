"""Task definitions: a typed function plus the options that bound its runs."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import msgspec

from vaultq import config
from vaultq.depends import dependencies
from vaultq.enqueue import enqueue as enqueue_jobs
from vaultq.enqueue_options import EnqueueOptions, OnDuplicate
from vaultq.enqueue_sync import enqueue_sync as enqueue_jobs_sync
from vaultq.errors import Fatal, InvalidArgument, PayloadError, Retry, TaskDefinitionError
from vaultq.limits import parse_rate
from vaultq.payload import Codec, check_encodable
from vaultq.priority import Priority, PriorityLike, parse_priority

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.jobs import JobHandle
    from vaultq.policy import Policy
    from vaultq.principal import Principal
    from vaultq.settings import AppSettings
    from vaultq.workflows import Chain, WorkflowHandle

__all__ = [
    "Isolation",
    "NoArgs",
    "Task",
    "TaskOptions",
    "TaskOverrides",
]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")

Isolation = Literal["none", "process"]

ExceptionClasses = tuple[type[BaseException], ...]

_NEVER_BY_DEFAULT: ExceptionClasses = (PayloadError, msgspec.ValidationError)
"""Permanent by nature: the same input fails the same way on every attempt. Retried
only when a task names them in ``retry_on``."""


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The payload of a task that takes no argument (``def cleanup() -> None``).

    ``@app.task`` gives a function without parameters this payload type, calls the
    function without arguments, and ``task.enqueue()`` needs no payload. Its envelope
    still carries a (sealed, signed) empty object, so a job of such a task is checked
    like any other; an envelope carrying fields is refused (``forbid_unknown_fields``).
    """


class TaskOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Per-task limits. Every default lives in :mod:`vaultq.config`.

    - ``timeout``: seconds one attempt may run (cancel scope); default 300.
    - ``max_timeout``: ceiling for a per-enqueue ``timeout=`` override; default = ``timeout``.
    - ``expires``: seconds after its not-before time by which an attempt must start;
      later attempts (retries included) end EXPIRED. Default 24 h.
    - ``retries``: retries after the first attempt; default 0 (like Celery: a task that
      fails is not run again unless it says so, since a retried attempt repeats the
      side effects of the failed one).
    - ``backoff``/``max_backoff``: exponential backoff base and cap, full jitter.
    - ``retry_on``: exception classes that are retried (while retries remain); default
      None = any exception but ``PayloadError``/``msgspec.ValidationError``.
    - ``dont_retry_on``: exception classes never retried; wins over ``retry_on``.
      ``vaultq.Fatal`` is never retried and ``vaultq.Retry`` always is (attempts left).
    - ``retry_on_timeout``: retry a TIMED_OUT attempt (default False: a timed-out attempt
      may have had side effects; opt in when the task is idempotent).
    - ``store_result``: seal and store the return value; default True.
    - ``result_ttl``: seconds results are kept; default 24 h.
    - ``isolation``: ``"process"`` runs each attempt in a child process that is killed at
      the deadline (hard time limit); default ``"none"``.
    """

    queue: str = config.DEFAULT_QUEUE
    timeout: float = config.DEFAULT_TIMEOUT
    max_timeout: float | None = None
    expires: float = config.DEFAULT_EXPIRES
    retries: int = config.DEFAULT_RETRIES
    backoff: float = config.DEFAULT_BACKOFF
    max_backoff: float = config.DEFAULT_MAX_BACKOFF
    retry_on: ExceptionClasses | None = None
    dont_retry_on: ExceptionClasses = ()
    retry_on_timeout: bool = False
    store_result: bool = True
    result_ttl: float = config.DEFAULT_RESULT_TTL
    isolation: Isolation = "none"

    @property
    def timeout_ceiling(self) -> float:
        return self.timeout if self.max_timeout is None else self.max_timeout

    def validate(self, name: str) -> None:
        def bad(what: str) -> TaskDefinitionError:
            return TaskDefinitionError(f"task {name!r}: {what}")

        if not self.queue or not self.queue.replace("-", "").replace("_", "").isalnum():
            raise bad("queue must be a non-empty name of letters, digits, '-' and '_'")
        if not self.timeout > 0:
            raise bad("timeout must be > 0 seconds")
        if self.max_timeout is not None and self.max_timeout < self.timeout:
            raise bad("max_timeout must be >= timeout")
        if not self.expires > 0:
            raise bad("expires must be > 0 seconds")
        if self.retries < 0:
            raise bad("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise bad("backoff and max_backoff must be >= 0")
        if not self.result_ttl > 0:
            raise bad("result_ttl must be > 0 seconds")
        if self.isolation not in ("none", "process"):
            raise bad("isolation must be 'none' or 'process'")
        for label, classes in (("retry_on", self.retry_on), ("dont_retry_on", self.dont_retry_on)):
            if classes is not None and not (
                isinstance(classes, tuple)
                and all(isinstance(c, type) and issubclass(c, BaseException) for c in classes)
            ):
                raise bad(f"{label} must be an exception class or a tuple of them")

    def retry_verdict(self, exc: BaseException) -> tuple[bool, float | None]:
        """``(retry?, delay)`` for an attempt that raised ``exc``, attempts permitting.

        ``delay`` is the wait ``vaultq.Retry(delay=...)`` asked for (None: backoff).
        Order: ``Retry`` → yes; ``Fatal`` → no; ``dont_retry_on`` → no; ``retry_on``
        given → whether ``exc`` is one of them; else yes, but for ``PayloadError`` and
        ``msgspec.ValidationError``.
        """
        if isinstance(exc, Retry):
            return True, exc.delay
        if isinstance(exc, Fatal):
            return False, None
        if self.dont_retry_on and isinstance(exc, self.dont_retry_on):
            return False, None
        if self.retry_on is not None:
            return isinstance(exc, self.retry_on), None
        return not isinstance(exc, _NEVER_BY_DEFAULT), None

    @property
    def retries_unknown_errors(self) -> bool:
        """Whether a failure whose exception class is lost (a child process that died)
        is retried: only under the default "any exception" rule."""
        return self.retry_on is None


class TaskOverrides(msgspec.Struct, frozen=True, kw_only=True):
    """The options a task set itself (``@app.task(timeout=30)``).

    The ones the app also has a default for (``queue``, ``timeout``, ``expires``,
    ``retries``, ``backoff``, ``max_backoff``, ``result_ttl``) stay ``UNSET`` when the task
    leaves them out, and :meth:`resolve` reads the app's *current* default for them: the
    task holds "not given", never a copy, so changing the app's settings after the task
    was defined (``app.configure(timeout=60)``) reaches it.
    """

    queue: str | msgspec.UnsetType = msgspec.UNSET
    timeout: float | msgspec.UnsetType = msgspec.UNSET
    expires: float | msgspec.UnsetType = msgspec.UNSET
    retries: int | msgspec.UnsetType = msgspec.UNSET
    backoff: float | msgspec.UnsetType = msgspec.UNSET
    max_backoff: float | msgspec.UnsetType = msgspec.UNSET
    result_ttl: float | msgspec.UnsetType = msgspec.UNSET
    max_timeout: float | None = None
    retry_on: ExceptionClasses | None = None
    dont_retry_on: ExceptionClasses = ()
    retry_on_timeout: bool = False
    store_result: bool = True
    isolation: Isolation = "none"

    def resolve(self, defaults: AppSettings, name: str) -> TaskOptions:
        """The task's options: its own, else the app's defaults. Raises
        ``TaskDefinitionError`` naming the task when the result is invalid."""
        values = {
            field: getattr(defaults, field) if value is msgspec.UNSET else value
            for field, value in msgspec.structs.asdict(self).items()
        }
        options = TaskOptions(**values)
        options.validate(name)
        return options


class Task(Generic[P, R]):
    """A registered task. Call ``await task.enqueue(payload)`` to run it on a worker."""

    def __init__(
        self,
        app: App,
        fn: Callable[[P], Awaitable[R]] | Callable[[P], R],
        *,
        name: str,
        options: TaskOptions | TaskOverrides,
        policy: Policy | None,
        unique: Callable[[P], str | None] | None = None,
        unique_for: float | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
        limit_key: Callable[[P], str | None] | None = None,
        priority: PriorityLike = Priority.NORMAL,
    ) -> None:
        self.app = app
        try:
            self.priority: Priority = parse_priority(priority)
            """The level its jobs get when ``enqueue`` is not given ``priority=``."""
        except InvalidArgument as exc:
            raise TaskDefinitionError(f"task {name!r}: {exc}") from None
        self.unique = unique
        """The unique key of a payload (``@app.task(unique=...)``), or None."""
        self.unique_for = unique_for
        """Seconds a unique key stays held at most (default: the job's validity)."""
        self.max_concurrency = max_concurrency
        """Attempts of this task running at once across every worker at most (per
        ``limit_key``), or None (``vaultq/runtime/limits.py``)."""
        self.rate_limit = rate_limit
        self.rate_interval = None if rate_limit is None else parse_rate(rate_limit)
        """Seconds between two starts under ``rate_limit`` (None: no rate limit)."""
        self.limit_key = limit_key
        self.fn = fn
        self.name = name
        self._given = options
        """A ``TaskOptions`` is fixed; ``TaskOverrides`` (what ``App.task`` passes) fall
        back to the app's defaults when read."""
        self._seen: object = None
        """The app settings :attr:`_options` was resolved against."""
        # Resolved now: invalid options fail at definition, not at the first job.
        self._options = self._refresh(app.settings)
        self.policy = policy
        self.is_async = inspect.iscoroutinefunction(fn)
        payload_type, self.result_type = _signature_types(fn, name)
        self.payload_type: type[P] = payload_type
        if self.payload_type is NoArgs and not _parameters(fn):
            # The worker calls fn(payload) for every task: a function without parameters
            # gets an adapter that drops the (empty) payload. functools.wraps keeps
            # __module__/__qualname__, which process isolation uses to find the task.
            self.fn = _without_payload(fn, self.is_async)
        self.payload_codec: Codec[P] = Codec(self.payload_type)
        self.result_codec: Codec[R] = Codec(self.result_type)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, queue={self.options.queue!r})"

    @property
    def options(self) -> TaskOptions:
        """This task's options; those it left unset are the app's current defaults."""
        # Read several times per job: one identity check on the hot path. Settings are
        # frozen, so the same object means the same defaults, and a change
        # (app.configure) is a new object.
        settings = self.app.settings
        if settings is self._seen:
            return self._options
        return self._refresh(settings)

    def _refresh(self, settings: AppSettings) -> TaskOptions:
        given = self._given
        options = given if isinstance(given, TaskOptions) else given.resolve(settings, self.name)
        self._options, self._seen = options, settings
        return options

    @property
    def overrides(self) -> TaskOverrides | TaskOptions:
        """What the task set itself (``UNSET``: the app's default)."""
        return self._given

    @property
    def queue(self) -> str:
        return self.options.queue

    @property
    def max_attempts(self) -> int:
        return self.options.retries + 1

    def check_payload(self, payload: Any) -> bytes:
        """The payload's JSON, proven to decode strictly as this task's payload type.

        Every enqueue path (``enqueue``, ``enqueue_many``, the ``_sync`` twins,
        ``vaultq.django``'s ``enqueue_on_commit`` and Tasks backend) calls this before
        anything is written, so a wrong field type, a NaN/infinity, a ``Secret`` of the
        wrong inner type or nesting too deep fails at the call, not in the worker. The
        bytes returned are the ones to seal. Raises ``PayloadError`` naming the field
        path (``$.order_id``), never the value.
        """
        if not isinstance(payload, self.payload_type):
            raise PayloadError(
                f"task {self.name!r} takes a {self.payload_type.__name__} payload, "
                f"got {type(payload).__name__}; nothing was enqueued"
            )
        try:
            return self.payload_codec.encode_checked(payload)
        except PayloadError as exc:
            raise PayloadError(
                f"task {self.name!r}: {exc}; nothing was enqueued", field=exc.field
            ) from None

    def s(self, payload: P | None = None) -> Chain[R]:
        """A workflow of one step, ``payload`` sealed into it: chain more with
        ``.then(task)`` and enqueue with ``.enqueue(principal=...)`` (docs/workflows.md)."""
        from vaultq.workflows import Chain

        return Chain.first(self, self._payload(payload))

    def __call__(self, payload: P | None = None) -> Awaitable[R] | R:
        """Call the function directly, in this process (for tests and composition)."""
        return self.fn(self._payload(payload))

    def _payload(self, payload: P | None) -> P:
        """``payload``, or ``NoArgs()`` for a task without arguments given none."""
        if payload is not None:
            return payload
        if self.payload_type is NoArgs:
            return typing.cast("P", NoArgs())
        raise PayloadError(
            f"task {self.name!r} takes a {self.payload_type.__name__} payload and none was "
            "given; nothing was enqueued"
        )

    async def enqueue(
        self,
        payload: P | None = None,
        *,
        principal: Principal | None = None,
        delay: float | None = None,
        at: datetime | float | None = None,
        queue: str | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        on_duplicate: OnDuplicate = "return",
        priority: PriorityLike | None = None,
        depends_on: Sequence[JobHandle[Any] | WorkflowHandle[Any]] | None = None,
    ) -> JobHandle[R]:
        """Seal ``payload`` and put it on the broker; returns a handle at once.

        ``delay`` (seconds) or ``at`` (datetime or Unix time) defer the job. ``timeout``
        overrides the per-attempt timeout up to the task's ``max_timeout``. ``job_id``
        (default: a new time-ordered id) must be unique: 1-128 letters, digits, ``_.:-``;
        an id that already ran is refused by the worker as a replay while remembered.

        ``unique_key`` (default: the task's ``unique(payload)``, if any): while a job of
        this task with the same key is queued, delayed or running, nothing is written and
        the handle returned is that job's (``on_duplicate="raise"``: ``DuplicateJob``
        naming it). Atomic across producers. The key is free again once the job settles,
        or ``unique_for`` seconds after it was taken (default: the task's ``unique_for``,
        else the job's validity). See ``docs/scheduling.md``.

        ``priority`` (default: the task's ``priority``, else normal): ``"low"``,
        ``"normal"``, ``"high"`` or a :class:`vaultq.Priority`: a worker takes a queue's
        higher levels first (``docs/scheduling.md``, "Priorities").

        A task without arguments (``NoArgs``) is enqueued with no payload: ``enqueue()``.

        ``depends_on`` (job and workflow handles): the job runs only after every one of
        them succeeded, and ends ``cancelled`` (``vaultq.DependencyFailed``) without
        running when one did not; the list is sealed with the job (``vaultq.depends``).

        Raises ``PayloadError`` (the payload is not of the task's type, or a field's value
        is not of its declared type: see :meth:`check_payload`), ``AuthorizationDenied`` (the policy
        refused ``principal``), ``InvalidArgument`` (``priority`` is no level),
        ``ConfigurationError`` (a priority on a broker without priorities), ``BrokerError``.
        """
        handles = await enqueue_jobs(
            self.app,
            self,
            [self._payload(payload)],
            EnqueueOptions(
                principal=principal,
                delay=delay,
                at=at,
                queue=queue,
                job_ids=None if job_id is None else [job_id],
                timeout=timeout,
                unique_key=unique_key,
                unique_for=self.unique_for if unique_for is None else unique_for,
                on_duplicate=on_duplicate,
                priority=priority,
                depends=dependencies(depends_on),
            ),
        )
        return handles[0]

    async def enqueue_many(
        self,
        payloads: Iterable[P],
        *,
        principal: Principal | None = None,
        delay: float | None = None,
        at: datetime | float | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        unique_for: float | None = None,
        on_duplicate: OnDuplicate = "return",
        priority: PriorityLike | None = None,
    ) -> list[JobHandle[R]]:
        """Enqueue many payloads in one pipelined broker call (all or nothing). With the
        task's ``unique=``, one atomic write per payload instead (see :meth:`enqueue`).
        ``priority``: every job's level (see :meth:`enqueue`)."""
        return await enqueue_jobs(
            self.app,
            self,
            list(payloads),
            EnqueueOptions(
                principal=principal,
                delay=delay,
                at=at,
                queue=queue,
                job_ids=None,
                timeout=timeout,
                unique_for=self.unique_for if unique_for is None else unique_for,
                on_duplicate=on_duplicate,
                priority=priority,
            ),
        )

    def enqueue_sync(
        self,
        payload: P | None = None,
        *,
        principal: Principal | None = None,
        delay: float | None = None,
        at: datetime | float | None = None,
        queue: str | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        unique_key: str | None = None,
        unique_for: float | None = None,
        on_duplicate: OnDuplicate = "return",
        priority: PriorityLike | None = None,
        depends_on: Sequence[JobHandle[Any] | WorkflowHandle[Any]] | None = None,
    ) -> JobHandle[R]:
        """``enqueue`` for sync code (Django views, scripts, threads).

        Writes from the calling thread through the broker's synchronous writer (Redis,
        SQLite files): the same checks, policy, hooks and sealing as ``enqueue``, no hop
        onto an event loop. Thread-safe and fork-safe. An async policy is awaited on the
        app's background loop thread; brokers without a synchronous writer (the memory
        broker, a client handed in) run the whole call there.
        """
        handles = enqueue_jobs_sync(
            self.app,
            self,
            [self._payload(payload)],
            EnqueueOptions(
                principal=principal,
                delay=delay,
                at=at,
                queue=queue,
                job_ids=None if job_id is None else [job_id],
                timeout=timeout,
                unique_key=unique_key,
                unique_for=self.unique_for if unique_for is None else unique_for,
                on_duplicate=on_duplicate,
                priority=priority,
                depends=dependencies(depends_on),
            ),
        )
        return handles[0]

    def enqueue_many_sync(
        self,
        payloads: Iterable[P],
        *,
        principal: Principal | None = None,
        delay: float | None = None,
        at: datetime | float | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        unique_for: float | None = None,
        on_duplicate: OnDuplicate = "return",
        priority: PriorityLike | None = None,
    ) -> list[JobHandle[R]]:
        """``enqueue_many`` for sync code, in the calling thread (see :meth:`enqueue_sync`)."""
        return enqueue_jobs_sync(
            self.app,
            self,
            list(payloads),
            EnqueueOptions(
                principal=principal,
                delay=delay,
                at=at,
                queue=queue,
                job_ids=None,
                timeout=timeout,
                unique_for=self.unique_for if unique_for is None else unique_for,
                on_duplicate=on_duplicate,
                priority=priority,
            ),
        )


def _signature_types(fn: Callable[..., Any], name: str) -> tuple[Any, Any]:
    """(payload type, result type) from ``fn``'s annotations, checked for msgspec."""
    if not callable(fn):
        raise TaskDefinitionError(f"task {name!r}: expected a function, got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise TaskDefinitionError(
            f"task {name!r}: its annotations cannot be resolved ({type(exc).__name__}); "
            "define the payload type at module level"
        ) from exc
    params = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not sig.parameters:
        # `def cleanup() -> None`: the payload is NoArgs (Celery's argument-less task).
        if "return" not in hints:
            raise TaskDefinitionError(
                f"task {name!r}: annotate the return type (use `-> None` when it returns nothing)"
            )
        result_type = None if hints["return"] is type(None) else hints["return"]
        check_encodable(result_type)
        return NoArgs, result_type
    required_rest = [
        p
        for p in list(sig.parameters.values())[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if not params or required_rest:
        raise TaskDefinitionError(
            f"task {name!r}: a task takes exactly one argument, its payload: "
            "`def task(job: MyPayload) -> Result`, or none: `def task() -> Result`"
        )
    first = params[0]
    payload_type = hints.get(first.name)
    if payload_type is None:
        raise TaskDefinitionError(
            f"task {name!r}: annotate the payload parameter {first.name!r} with a "
            "msgspec.Struct subclass"
        )
    if not (isinstance(payload_type, type) and issubclass(payload_type, msgspec.Struct)):
        raise TaskDefinitionError(
            f"task {name!r}: the payload annotation must be a msgspec.Struct subclass, "
            f"not {payload_type!r}"
        )
    if "return" not in hints:
        raise TaskDefinitionError(
            f"task {name!r}: annotate the return type (use `-> None` when it returns nothing)"
        )
    result_type = hints["return"]
    if result_type is type(None):
        result_type = None
    check_encodable(payload_type)
    check_encodable(result_type)
    return payload_type, result_type


def _parameters(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares any parameter at all."""
    return bool(inspect.signature(fn).parameters)


def _without_payload(fn: Callable[..., Any], is_async: bool) -> Callable[[Any], Any]:
    """``fn()`` called as ``fn(payload)``: the worker's calling convention."""
    if is_async:

        @functools.wraps(fn)
        async def call_async(_payload: NoArgs) -> Any:
            return await fn()

        return call_async

    @functools.wraps(fn)
    def call(_payload: NoArgs) -> Any:
        return fn()

    return call
