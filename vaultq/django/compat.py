"""One place that knows where Django's Tasks framework lives.

Django 6.0+ ships it as ``django.tasks`` (DEP 14); on Django 5.2 the ``django-tasks``
backport (0.12) provides the same API as ``django_tasks``. Everything else in
``vaultq.django`` imports these names from here.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import Any

__all__ = [
    "PACKAGE",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]


def _package() -> str:
    try:
        if find_spec("django.tasks") is not None:
            return "django.tasks"
    except ModuleNotFoundError:  # pragma: no cover - Django itself is missing
        pass
    if find_spec("django_tasks") is not None:
        return "django_tasks"
    from vaultq.errors import ConfigurationError

    raise ConfigurationError(
        "Django's Tasks framework is missing: use Django >= 6.0, or install the backport "
        "with `pip install 'vaultq[django]'` (django-tasks>=0.12,<0.13) on Django 5.2"
    )


PACKAGE = _package()
"""``"django.tasks"`` (Django 6) or ``"django_tasks"`` (backport)."""

_root = import_module(PACKAGE)
_base = import_module(f"{PACKAGE}.base")
_backends = import_module(f"{PACKAGE}.backends.base")
_exceptions = import_module(f"{PACKAGE}.exceptions")
_signals = import_module(f"{PACKAGE}.signals")

BaseTaskBackend: Any = _backends.BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
task_backends: Any = _root.task_backends
task: Any = _root.task
"""The ``@task`` decorator of whichever package is installed."""
# The backport calls it InvalidTaskError; Django 6 renamed it InvalidTask.
InvalidTask: type[Exception] = getattr(_exceptions, "InvalidTask", None) or (
    _exceptions.InvalidTaskError
)
TaskResultDoesNotExist: type[Exception] = _exceptions.TaskResultDoesNotExist
task_enqueued: Any = _signals.task_enqueued
task_started: Any = _signals.task_started
task_finished: Any = _signals.task_finished
