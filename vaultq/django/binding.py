"""One Django Task bound to the internal vaultq task that carries it.

The producer side converts a call's arguments strictly into a msgspec Struct derived from
the function's annotations (:func:`derive_args`); the worker side calls the Django
function with them, sends Django's ``task_started``/``task_finished`` signals, and reports
a failure as :class:`vaultq.errors.TaskRaised` with a traceback that names frames and the
exception's class but never its message (:func:`safe_traceback`), judged for retry where
the class is known. :mod:`vaultq.django.backend` registers bindings and reads results.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import socket
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from asgiref.sync import sync_to_async

from vaultq.django import compat
from vaultq.errors import PayloadError, TaskDefinitionError, TaskRaised
from vaultq.jobs import current_job
from vaultq.payload import check_encodable, split_error
from vaultq.tasks import Task as VaultqTask

__all__ = [
    "ID_TAG",
    "TRACEBACK_HEAD",
    "Binding",
    "aware",
    "derive_args",
    "job_time",
    "safe_traceback",
]

TRACEBACK_HEAD = "Traceback (most recent call last):\n"
"""How a traceback stored by a binding begins (the backend recognises it in results)."""
_MAX_TRACEBACK = 1900
ID_TAG = 10
"""Hex digits of the (task, queue) tag in a result id: ``<job id>-<tag>``."""


def _tag(module_path: str, queue: str) -> str:
    digest = hashlib.sha256(f"{module_path}\0{queue}".encode()).hexdigest()
    return digest[:ID_TAG]


def _class_path(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def safe_traceback(exc: BaseException, *, skip_file: str = __file__) -> str:
    """A traceback with file, line, function and source line of each frame, and the
    exception's class, but not its message (which may quote payload values) nor locals."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != skip_file]
    lines = [TRACEBACK_HEAD]
    for frame in frames:
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line.strip()}\n")
    tail = f"{_class_path(type(exc))}: (message withheld: it may contain payload values)\n"
    text = "".join(lines)
    if len(text) + len(tail) > _MAX_TRACEBACK:
        text = TRACEBACK_HEAD + "  ...\n" + text[-(_MAX_TRACEBACK - len(tail) - 40) :]
    return text + tail


def aware(ts: float | None) -> datetime | None:
    if ts is None:
        return None
    from django.conf import settings
    from django.utils import timezone

    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt if settings.USE_TZ else timezone.make_naive(dt)


def job_time(job_id: str) -> float | None:
    try:
        return int(job_id[:12], 16) / 1000
    except ValueError:
        return None


def _worker_label() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(eq=False)
class Binding:
    """One Django Task bound to its internal vaultq task."""

    task: Any
    """The Django Task first validated for this function (``result.task``)."""
    vaultq_task: VaultqTask[Any, Any]
    args_type: type[msgspec.Struct]
    positional_only: tuple[str, ...]
    params: tuple[str, ...]
    backend_class: type[Any]
    signature: inspect.Signature
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def module_path(self) -> str:
        return str(self.task.module_path)

    # -- producer side ------------------------------------------------------------------

    def convert(self, args: Any, kwargs: Any) -> msgspec.Struct:
        """Strictly convert a call's args/kwargs into the args Struct (raises PayloadError)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PayloadError(
                f"task {self.module_path!r}: the arguments do not match its signature ({exc})"
            ) from None
        try:
            payload = msgspec.convert(dict(bound.arguments), self.args_type, strict=True)
        except msgspec.ValidationError as exc:
            # Rewritten like every payload error: some msgspec messages quote the value.
            path, problem = split_error(exc)
            raise PayloadError(
                f"task {self.module_path!r}: wrong argument type at {path}: {problem}",
                field=path,
            ) from None
        # convert() passes Struct instances through unchecked (msgspec Structs are not
        # validated when built): the task's typed check sees every field, at any depth.
        self.vaultq_task.check_payload(payload)
        return payload

    def tag(self, queue: str) -> str:
        tag = self.tags.get(queue)
        if tag is None:
            tag = self.tags[queue] = _tag(self.module_path, queue)
        return tag

    # -- worker side --------------------------------------------------------------------

    def _split(self, job: msgspec.Struct) -> tuple[list[Any], dict[str, Any]]:
        args = [getattr(job, name) for name in self.positional_only]
        kwargs = {
            name: getattr(job, name) for name in self.params if name not in self.positional_only
        }
        return args, kwargs

    def _running(self) -> Any:
        ctx = current_job()
        now = aware(datetime.now(UTC).timestamp())
        result = compat.TaskResult(
            task=self.task,
            id=f"{ctx.job_id}-{self.tag(ctx.queue)}",
            status=compat.TaskResultStatus.RUNNING,
            enqueued_at=aware(job_time(ctx.job_id)),
            started_at=now,
            finished_at=None,
            last_attempted_at=now,
            args=[],
            kwargs={},
            backend=self.task.backend,
            errors=[],
            worker_ids=[_worker_label()] * max(1, ctx.attempt),
        )
        return result

    def _finished(self, result: Any, value: Any, exc: BaseException | None) -> None:
        object.__setattr__(result, "finished_at", aware(datetime.now(UTC).timestamp()))
        if exc is None:
            object.__setattr__(result, "status", compat.TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "_return_value", msgspec.to_builtins(value))
        else:
            object.__setattr__(result, "status", compat.TaskResultStatus.FAILED)
            result.errors.append(
                compat.TaskError(
                    exception_class_path=_class_path(type(exc)), traceback=safe_traceback(exc)
                )
            )

    def _call_args(self, result: Any, job: msgspec.Struct) -> tuple[list[Any], dict[str, Any]]:
        args, kwargs = self._split(job)
        if self.task.takes_context:
            args.insert(0, compat.TaskContext(task_result=result))
        return args, kwargs

    def _raised(self, exc: Exception) -> TaskRaised:
        # Judged here, where the exception's class is known (RETRY_ON, Retry, Fatal).
        retry, delay = self.vaultq_task.options.retry_verdict(exc)
        return TaskRaised(_class_path(type(exc)), safe_traceback(exc), retry=retry, delay=delay)

    def run_sync(self, job: msgspec.Struct) -> Any:
        try:
            result = self._running()
            compat.task_started.send(sender=self.backend_class, task_result=result)
            args, kwargs = self._call_args(result, job)
            try:
                value = self.task.func(*args, **kwargs)
            except Exception as exc:
                self._finished(result, None, exc)
                compat.task_finished.send(sender=self.backend_class, task_result=result)
                raise
            self._finished(result, value, None)
            compat.task_finished.send(sender=self.backend_class, task_result=result)
            return value
        except Exception as exc:
            raise self._raised(exc) from None

    async def run_async(self, job: msgspec.Struct) -> Any:
        send_started = sync_to_async(compat.task_started.send)
        send_finished = sync_to_async(compat.task_finished.send)
        try:
            result = self._running()
            await send_started(sender=self.backend_class, task_result=result)
            args, kwargs = self._call_args(result, job)
            try:
                value = await self.task.func(*args, **kwargs)
            except Exception as exc:
                self._finished(result, None, exc)
                await send_finished(sender=self.backend_class, task_result=result)
                raise
            self._finished(result, value, None)
            await send_finished(sender=self.backend_class, task_result=result)
            return value
        except Exception as exc:
            raise self._raised(exc) from None


def derive_args(
    func: Callable[..., Any], name: str, takes_context: bool
) -> tuple[type[msgspec.Struct], tuple[str, ...], tuple[str, ...], inspect.Signature, Any]:
    invalid = compat.InvalidTask
    try:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)
    except (NameError, TypeError, ValueError) as exc:
        raise invalid(
            f"task {name!r}: its annotations cannot be resolved ({type(exc).__name__}); "
            "define the argument types at module level"
        ) from None
    params = list(sig.parameters.values())
    if takes_context:
        params = params[1:]
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    positional_only: list[str] = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise invalid(
                f"task {name!r}: *args/**kwargs ({p.name}) are not supported by vaultq; "
                "declare each parameter with its type"
            )
        if p.name not in hints:
            raise invalid(
                f"task {name!r}: annotate parameter {p.name!r} with a type msgspec "
                "supports (int, str, list[int], a msgspec.Struct...); vaultq converts "
                "arguments strictly to it at enqueue"
            )
        if p.kind == p.POSITIONAL_ONLY:
            positional_only.append(p.name)
        tp = hints[p.name]
        fields.append((p.name, tp) if p.default is p.empty else (p.name, tp, p.default))
    try:
        args_type = msgspec.defstruct(
            f"{func.__qualname__}_args",
            fields,
            kw_only=True,
            frozen=True,
            forbid_unknown_fields=True,
            module=func.__module__,
        )
        check_encodable(args_type)
        result_type: Any = hints.get("return", Any)
        if result_type is type(None):
            result_type = None
        check_encodable(result_type)
    except (TaskDefinitionError, TypeError, ValueError) as exc:
        raise invalid(f"task {name!r}: {exc}") from None
    params_sig = sig.replace(parameters=params)
    return (
        args_type,
        tuple(positional_only),
        tuple(p.name for p in params),
        params_sig,
        result_type,
    )
