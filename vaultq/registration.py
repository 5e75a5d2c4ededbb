"""What ``@app.task`` checks and builds before a task joins the registry: its name, the
``retry_on``/``unique``/limit options, and the decorator ``@app.task(...)`` returns.

Kept apart from :mod:`vaultq.tasks` (what a task *is*) and :class:`vaultq.App` (the
registry itself); every check raises ``TaskDefinitionError`` naming the task.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Coroutine
from typing import Any, TypeVar, overload

import msgspec

from vaultq.errors import ConfigurationError, TaskDefinitionError
from vaultq.limits import parse_rate
from vaultq.tasks import NoArgs, Task

__all__ = [
    "ExceptionSpec",
    "TaskDecorator",
    "check_limit_options",
    "check_unique_options",
    "exception_classes",
    "task_name_for",
]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")

ExceptionSpec = type[BaseException] | tuple[type[BaseException], ...] | list[type[BaseException]]
"""What ``retry_on=``/``dont_retry_on=`` take: one exception class, or several."""


class TaskDecorator:
    """What ``@app.task(...)`` returns: applied to the function, it registers the task."""

    def __init__(self, register: Callable[[Callable[..., Any]], Task[Any, Any]]) -> None:
        self._register = register

    @overload
    def __call__(self, fn: Callable[[], Coroutine[Any, Any, R]], /) -> Task[NoArgs, R]: ...
    @overload
    def __call__(self, fn: Callable[[], R], /) -> Task[NoArgs, R]: ...
    @overload
    def __call__(self, fn: Callable[[P], Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[[P], R], /) -> Task[P, R]: ...
    def __call__(self, fn: Callable[..., Any], /) -> Task[Any, Any]:
        return self._register(fn)


def exception_classes(spec: ExceptionSpec) -> tuple[type[BaseException], ...]:
    """``retry_on=``/``dont_retry_on=`` as a tuple (checked by ``TaskOptions.validate``,
    which names the task)."""
    return tuple(spec) if isinstance(spec, list | tuple) else (spec,)


def check_unique_options(
    task_name: str, unique: Callable[[Any], str | None] | None, unique_for: float | None
) -> None:
    """``unique=``/``unique_for=`` of ``@app.task``; ``TaskDefinitionError`` when wrong."""
    if unique is not None and not callable(unique):
        raise TaskDefinitionError(
            f"task {task_name!r}: unique= must be a function of the payload "
            "returning its key (a string) or None"
        )
    if unique_for is not None and not unique_for > 0:
        raise TaskDefinitionError(f"task {task_name!r}: unique_for must be > 0 seconds")


def check_limit_options(
    task_name: str,
    max_concurrency: int | None,
    rate_limit: str | None,
    limit_key: Callable[[Any], str | None] | None,
) -> None:
    """``max_concurrency=``/``rate_limit=``/``limit_key=`` of ``@app.task``;
    ``TaskDefinitionError`` when wrong."""
    if max_concurrency is not None and not (
        isinstance(max_concurrency, int) and max_concurrency >= 1
    ):
        raise TaskDefinitionError(f"task {task_name!r}: max_concurrency must be >= 1")
    if limit_key is not None and not callable(limit_key):
        raise TaskDefinitionError(
            f"task {task_name!r}: limit_key= must be a function of the payload"
        )
    try:
        if rate_limit is not None:
            parse_rate(rate_limit)
    except ConfigurationError as exc:
        raise TaskDefinitionError(f"task {task_name!r}: {exc}") from None


def task_name_for(
    func: Callable[..., Any], name: str | None, *, taken: Container[str], app: str
) -> str:
    """The registry name of ``func``: ``name``, else ``module.qualname``. Raises
    ``TaskDefinitionError`` for a bad or taken name, or a nested function left unnamed."""
    task_name = name or f"{func.__module__}.{func.__qualname__}"
    if not isinstance(task_name, str) or not task_name or len(task_name) > 200:
        raise TaskDefinitionError("task names are non-empty strings of at most 200 chars")
    if "<locals>" in task_name and name is None:
        raise TaskDefinitionError(
            f"task {task_name!r} is defined inside a function: give it a stable "
            "name with @app.task(name='...')"
        )
    if task_name in taken:
        raise TaskDefinitionError(
            f"task name {task_name!r} is already registered in app {app!r}; "
            "pick another with @app.task(name='...')"
        )
    return task_name
