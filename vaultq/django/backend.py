"""``vaultq.django.VaultqBackend``: vaultq as a backend for Django's Tasks framework.

::

    TASKS = {
        "default": {
            "BACKEND": "vaultq.django.VaultqBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {
                "ENQUEUE_ON_COMMIT": True,     # default True
                "DATABASE": None,              # the alias on_commit watches (default "default")
                "RETRIES": 0,                  # Django Tasks do not retry by default
                "BACKOFF": 1.0, "MAX_BACKOFF": 300,
                "RETRY_ON": ["shop.errors.Transient"],     # dotted paths; default: any
                "DONT_RETRY_ON": ["shop.errors.Declined"],  # never retried
                "RETRY_ON_TIMEOUT": False,
                "TIMEOUT": 300, "MAX_TIMEOUT": None, "EXPIRES": 86400, "RESULT_TTL": 86400,
                "STORE_RESULT": True, "ISOLATION": "none",
                "MAX_CONCURRENCY": None, "RATE_LIMIT": None,  # "100/m", across all workers
                "PRIORITY": "normal",          # "low" | "normal" | "high": tasks' default level
                "POLICY": "shop.policies.STAFF",  # default policy of this backend's tasks
                "RESULT_POLICY": "shop.policies.STAFF",  # who else may read results
                "TASKS": {                     # per task, by module path: the task options above
                    "shop.tasks.refund": {"POLICY": "shop.policies.REFUND", "TIMEOUT": 30},
                },
            },
        }
    }

Every Django Task validated by this backend gets an internal vaultq task in the
configured App (name = the task's module path) whose payload is a msgspec Struct derived
from the function's annotated parameters: arguments are converted strictly at
``enqueue()``, sealed, authorized and run like native vaultq jobs. Workers run only
tasks registered at startup (autodiscovered ``tasks.py``/``jobs.py``); a message naming
anything else is REJECTED, and nothing is ever imported by a name from a message.

Results are not bearer capabilities: ``get_result()``/``aget_result()`` open a result
only for the principal the task was enqueued for (``acting_as(request)`` around the call,
or the running job's principal), or for a reader ``RESULT_POLICY`` allows; anyone else
gets ``AuthorizationDenied``. A task enqueued without a principal is read without one.

Priorities are supported (``supports_priority = True``): Django's integer priority
(-100..100, default 0) maps onto vaultq's three levels by its sign: negative -> ``low``,
0 -> the task's default (``PRIORITY``, else ``normal``), positive -> ``high``
(``docs/scheduling.md``, "Priorities"). Within a level jobs run in FIFO order.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import msgspec
from asgiref.sync import sync_to_async

from vaultq import config
from vaultq.django import compat
from vaultq.django.binding import (
    ID_TAG,
    TRACEBACK_HEAD,
    Binding,
    aware,
    derive_args,
    job_time,
)
from vaultq.envelope import ResultBody, new_job_id
from vaultq.errors import TaskDefinitionError, VaultqError
from vaultq.jobs import JobStatus
from vaultq.operations import mask_secrets
from vaultq.policy import Policy, ensure_policy, safe_id
from vaultq.principal import Principal
from vaultq.priority import django_priority
from vaultq.tasks import Isolation

__all__ = ["Binding", "VaultqBackend", "exception_path"]


class TaskSettings(
    msgspec.Struct, frozen=True, kw_only=True, rename="upper", forbid_unknown_fields=True
):
    """Options of one task in ``OPTIONS["TASKS"]``; each overrides the backend-wide one.
    ``RETRY_ON``/``DONT_RETRY_ON`` are dotted paths of exception classes."""

    policy: str | None = None
    timeout: float | None = None
    max_timeout: float | None = None
    retries: int | None = None
    expires: float | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    retry_on: list[str] | None = None
    dont_retry_on: list[str] | None = None
    retry_on_timeout: bool | None = None
    result_ttl: float | None = None
    store_result: bool | None = None
    isolation: Isolation | None = None
    max_concurrency: int | None = None
    rate_limit: str | None = None
    priority: str | None = None


class BackendOptions(
    msgspec.Struct, frozen=True, kw_only=True, rename="upper", forbid_unknown_fields=True
):
    enqueue_on_commit: bool = True
    database: str | None = None
    retries: int = 0
    timeout: float | None = None
    max_timeout: float | None = None
    expires: float | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    retry_on: list[str] | None = None
    dont_retry_on: list[str] | None = None
    retry_on_timeout: bool = False
    result_ttl: float | None = None
    store_result: bool = True
    """False: only the outcome is kept; ``TaskResult.return_value`` is None (Celery's
    ``ignore_result``)."""
    isolation: Isolation = "none"
    """``"process"``: each attempt runs in a child process killed at its deadline."""
    max_concurrency: int | None = None
    """Attempts of one task running at once across all workers (docs/scheduling.md)."""
    rate_limit: str | None = None
    """``"100/m"``: starts of one task spaced evenly across all workers."""
    priority: str = "normal"
    """The level of a task's jobs when its Django priority is the default 0."""
    policy: str | None = None
    result_policy: str | None = None
    tasks: dict[str, TaskSettings] = {}
    exception_classes: list[str] = []
    """Extra dotted paths ``TaskError.exception_class`` may import (see exception_path)."""


def _options(alias: str, raw: Any) -> BackendOptions:
    from django.core.exceptions import ImproperlyConfigured

    try:
        return msgspec.convert(dict(raw or {}), BackendOptions, strict=True)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS'] is invalid: {exc}") from None


class VaultqBackend(compat.BaseTaskBackend):  # type: ignore[misc]
    """Django Tasks backend that seals, authorizes and runs tasks with vaultq."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.vaultq_options = _options(alias, self.options)

    # -- registration -------------------------------------------------------------------

    @property
    def _config(self) -> Any:
        from vaultq.django.apps import get_config

        return get_config()

    def _policy(self, path: str | None, where: str) -> Policy | None:
        if not path:
            return None
        from django.core.exceptions import ImproperlyConfigured

        from vaultq.django.conf import import_from_settings

        try:
            return ensure_policy(import_from_settings(path, where))
        except VaultqError as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from None

    def _exceptions(self, paths: list[str], where: str) -> tuple[type[BaseException], ...]:
        from django.core.exceptions import ImproperlyConfigured

        from vaultq.django.conf import import_from_settings

        classes = tuple(import_from_settings(p, f"{where} RETRY_ON") for p in paths)
        for path, cls in zip(paths, classes, strict=True):
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ImproperlyConfigured(f"{where}: {path!r} is not an exception class")
        return classes

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        self.binding(task)

    def binding(self, task: Any) -> Binding:
        """The Binding of ``task``, registering its vaultq task on first sight."""
        config = self._config
        path = str(task.module_path)
        with config.lock:
            existing: Binding | None = config.bindings.get(path)
            if existing is not None:
                if existing.task.func is not task.func:
                    raise compat.InvalidTask(
                        f"another task is already registered as {path!r} in vaultq"
                    )
                return existing
            return self._register(config, task, path)

    def _register(self, config: Any, task: Any, path: str) -> Binding:
        app = config.app
        opts = self.vaultq_options
        per_task = opts.tasks.get(path, TaskSettings())
        args_type, positional_only, params, sig, result_type = derive_args(
            task.func, path, task.takes_context
        )
        policy = self._policy(
            per_task.policy, f"TASKS[{self.alias!r}]['OPTIONS']['TASKS'][{path!r}]['POLICY']"
        ) or self._policy(opts.policy, f"TASKS[{self.alias!r}]['OPTIONS']['POLICY']")
        holder: dict[str, Binding] = {}
        runner: Callable[..., Any]
        if inspect.iscoroutinefunction(task.func):

            async def run_async(job: Any) -> Any:
                return await holder["b"].run_async(job)

            runner = run_async
        else:

            def run_sync(job: Any) -> Any:
                return holder["b"].run_sync(job)

            runner = run_sync
        runner.__annotations__ = {"job": args_type, "return": result_type}
        runner.__module__ = task.func.__module__
        runner.__qualname__ = task.func.__qualname__

        def pick(name: str) -> Any:
            value = getattr(per_task, name)
            return getattr(opts, name) if value is None else value

        where = f"TASKS[{self.alias!r}]['OPTIONS']"
        retry_on = pick("retry_on")
        try:
            vaultq_task = app.task(
                name=path,
                queue=task.queue_name,
                timeout=pick("timeout"),
                max_timeout=pick("max_timeout"),
                retries=pick("retries"),
                expires=pick("expires"),
                backoff=pick("backoff"),
                max_backoff=pick("max_backoff"),
                retry_on=None if retry_on is None else self._exceptions(retry_on, where),
                dont_retry_on=self._exceptions(pick("dont_retry_on") or [], where),
                retry_on_timeout=pick("retry_on_timeout"),
                result_ttl=pick("result_ttl"),
                store_result=pick("store_result"),
                isolation=pick("isolation"),
                max_concurrency=pick("max_concurrency"),
                rate_limit=pick("rate_limit"),
                priority=pick("priority"),
                policy=policy,
            )(runner)
        except TaskDefinitionError as exc:
            raise compat.InvalidTask(str(exc)) from None
        binding = Binding(
            task=task,
            vaultq_task=vaultq_task,
            args_type=args_type,
            positional_only=positional_only,
            params=params,
            backend_class=type(self),
            signature=sig,
        )
        holder["b"] = binding
        config.bindings[path] = binding
        return binding

    # -- enqueue ------------------------------------------------------------------------

    def _prepare(self, task: Any, args: Any, kwargs: Any) -> tuple[Binding, Any, dict[str, Any]]:
        self.validate_task(task)
        binding = self.binding(task)
        payload = binding.convert(args, kwargs)
        from vaultq.django.principal import current_principal

        at = task.run_after
        if at is not None and at.tzinfo is None:
            from django.utils import timezone

            at = timezone.make_aware(at)
        # Django's -100..100 by its sign; 0 (Django's default) leaves the task's own level.
        priority = None if task.priority == 0 else django_priority(task.priority)
        return binding, payload, {"principal": current_principal(), "at": at, "priority": priority}

    def _new_result(self, task: Any, binding: Binding, job_id: str, args: Any, kwargs: Any) -> Any:
        return compat.TaskResult(
            task=task,
            id=f"{job_id}-{binding.tag(task.queue_name)}",
            status=compat.TaskResultStatus.READY,
            enqueued_at=aware(job_time(job_id)),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            # The caller's own arguments, Secrets masked: a TaskResult is handed around
            # (and printed) by code that must not see them.
            args=msgspec.to_builtins(list(args), enc_hook=mask_secrets),
            kwargs=msgspec.to_builtins(dict(kwargs), enc_hook=mask_secrets),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Convert, authorize and seal now; push to the broker when the transaction on
        OPTIONS["DATABASE"] commits (ENQUEUE_ON_COMMIT, default) or at once."""
        from django.db import transaction

        from vaultq.enqueue import authorize_sync

        binding, payload, extra = self._prepare(task, args, kwargs)
        vtask = binding.vaultq_task
        job_id = new_job_id()
        result = self._new_result(task, binding, job_id, args, kwargs)
        principal: Principal | None = extra["principal"]

        def push() -> None:
            vtask.enqueue_sync(
                payload,
                principal=principal,
                at=extra["at"],
                queue=task.queue_name,
                job_id=job_id,
                priority=extra["priority"],
            )
            compat.task_enqueued.send(type(self), task_result=result)

        using = self.vaultq_options.database
        if (
            self.vaultq_options.enqueue_on_commit
            and transaction.get_connection(using).in_atomic_block
        ):
            authorize_sync(vtask.app, vtask, payload, principal, job_id)
            transaction.on_commit(push, using=using)
        else:
            push()
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Enqueue at once (async code holds no transaction)."""
        binding, payload, extra = self._prepare(task, args, kwargs)
        job_id = new_job_id()
        result = self._new_result(task, binding, job_id, args, kwargs)
        await binding.vaultq_task.enqueue(
            payload,
            principal=extra["principal"],
            at=extra["at"],
            queue=task.queue_name,
            job_id=job_id,
            priority=extra["priority"],
        )
        await sync_to_async(compat.task_enqueued.send)(type(self), task_result=result)
        return result

    # -- results ------------------------------------------------------------------------

    def _locate(self, result_id: str) -> tuple[Binding, str, str]:
        job_id, _, tag = str(result_id).partition("-")
        if len(job_id) == 32 and len(tag) == ID_TAG:
            queues = set(self.queues) | {config.DEFAULT_QUEUE}
            for binding in list(self._config.bindings.values()):
                for queue in queues | {binding.task.queue_name}:
                    if binding.tag(queue) == tag:
                        return binding, job_id, queue
        raise compat.TaskResultDoesNotExist(f"no task result with id {result_id!r}")

    @functools.cached_property
    def _result_policy(self) -> Policy | None:
        return self._policy(
            self.vaultq_options.result_policy, f"TASKS[{self.alias!r}]['OPTIONS']['RESULT_POLICY']"
        )

    async def _read(
        self, binding: Binding, job_id: str, queue: str, reader: Principal | None
    ) -> tuple[ResultBody | None, bool]:
        app = binding.vaultq_task.app
        # Only the job's own principal (or a reader RESULT_POLICY allows) opens the result:
        # a result id alone is not enough.
        body = await app.job(job_id, queue=queue, task=binding.vaultq_task).outcome(
            reader=reader, policy=self._result_policy
        )
        if body is not None:
            return body, False
        broker = await app.broker()
        return None, await broker.is_running(queue, job_id)

    def get_result(self, result_id: str) -> Any:
        """The result of ``result_id``, read as ``current_principal()`` (``acting_as``).

        Raises ``AuthorizationDenied`` when that reader may not read it."""
        from vaultq.django.principal import current_principal

        binding, job_id, queue = self._locate(result_id)
        # Resolved here, in the caller's context: the app's loop thread does not see it.
        reader = current_principal()
        body, running = binding.vaultq_task.app.run_sync(self._read, binding, job_id, queue, reader)
        return self._result(binding, result_id, job_id, body, running)

    async def aget_result(self, result_id: str) -> Any:
        from vaultq.django.principal import current_principal

        binding, job_id, queue = self._locate(result_id)
        body, running = await self._read(binding, job_id, queue, current_principal())
        return self._result(binding, result_id, job_id, body, running)

    def _result(
        self, binding: Binding, result_id: str, job_id: str, body: ResultBody | None, running: bool
    ) -> Any:
        status = compat.TaskResultStatus
        errors: list[Any] = []
        value: Any = None
        started = finished = None
        workers: list[str] = []
        if body is None:
            state = status.RUNNING if running else status.READY
        else:
            started, finished = aware(body.started_at), aware(body.finished_at)
            if body.worker_id:
                workers = [body.worker_id] * max(1, body.attempts)
            if body.status == JobStatus.SUCCEEDED:
                state = status.SUCCESSFUL
                if body.value is not None:
                    value = msgspec.json.decode(bytes(body.value))
            else:
                state = status.FAILED
                errors.append(
                    _task_error(
                        body,
                        task_module=str(binding.task.func.__module__),
                        allowed=frozenset(self.vaultq_options.exception_classes),
                    )
                )
        result = compat.TaskResult(
            task=binding.task,
            id=result_id,
            status=state,
            enqueued_at=aware(job_time(job_id)),
            started_at=started,
            finished_at=finished,
            last_attempted_at=started,
            args=[],
            kwargs={},
            backend=self.alias,
            errors=errors,
            worker_ids=workers,
        )
        object.__setattr__(result, "_return_value", value)
        return result


_FALLBACK_EXCEPTION = "vaultq.errors.JobFailed"


def exception_path(error_type: str, *, task_module: str, allowed: frozenset[str]) -> str:
    """The class path to give ``TaskError``, whose ``exception_class`` imports it.

    ``error_type`` comes from a result, which a worker wrote (and under split trust any
    worker can write), so it is never imported on its say-so. It is used only if it names
    an exception class of ``builtins``, ``vaultq.errors`` or the task's own module that
    is already loaded (looked up, not imported), or is listed in the backend's
    ``EXCEPTION_CLASSES`` option; anything else becomes ``vaultq.errors.JobFailed``.
    """
    path = error_type if "." in error_type else f"builtins.{error_type}"
    if path in allowed:
        return path
    module, _, name = path.rpartition(".")
    if module == "vaultq":
        module = "vaultq.errors"
    if module in ("builtins", "vaultq.errors", task_module):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return f"{module}.{name}"
    return _FALLBACK_EXCEPTION


def _task_error(body: ResultBody, *, task_module: str, allowed: frozenset[str]) -> Any:
    error_type = body.error_type or f"vaultq.errors.Job{body.status.title().replace('_', '')}"
    named = error_type if "." in error_type else f"builtins.{error_type}"
    path = exception_path(error_type, task_module=task_module, allowed=allowed)
    text = body.error or ""
    if text.startswith(TRACEBACK_HEAD):
        tb = text  # built by Binding.run_*: frames and class, no message
    elif error_type.startswith("vaultq.") or error_type == "TimeoutError":
        tb = f"{path}: {text}\n"  # vaultq's own reasons (denied, timed out, rejected...)
    else:
        # The name stays in the text (escaped: it came from a result), never imported.
        tb = f"{safe_id(named)}: (message withheld: it may contain payload values)\n"
    return compat.TaskError(exception_class_path=path, traceback=tb)
