"""``VAULTQ["SCHEDULE"]``: periodic jobs declared in Django settings, for teams moving from
``CELERY_BEAT_SCHEDULE``. Registered when the installed app is ready, after the task modules
are autodiscovered; the tasks are found by their registered names (no imports from
settings), and each entry becomes :meth:`vaultq.App.schedule`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from vaultq.errors import ConfigurationError
from vaultq.schedule import DEFAULT_SCHEDULE_GRACE

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.django.conf import ScheduleSetting

__all__ = ["register_settings_schedules"]


def register_settings_schedules(app: App, entries: dict[str, ScheduleSetting]) -> None:
    """Add each entry as a schedule of ``app``; ``ImproperlyConfigured`` names a bad one."""
    from django.core.exceptions import ImproperlyConfigured

    for name, entry in entries.items():
        where = f"VAULTQ['SCHEDULE'][{name!r}]"
        if name in app.schedules:
            continue  # ready() ran before (tests call it again)
        task = app.get_task(entry.task)
        if task is None:
            raise ImproperlyConfigured(
                f"{where}: no task named {entry.task!r} is registered; use the name given "
                "by @app.task (module.function by default) of an autodiscovered task module"
            )
        try:
            payload = msgspec.convert(entry.payload, task.payload_type, strict=True)
        except msgspec.ValidationError as exc:
            raise ImproperlyConfigured(f"{where}: payload does not fit the task: {exc}") from None
        if entry.missed not in ("skip", "run_once"):
            raise ImproperlyConfigured(f"{where}: missed must be 'skip' or 'run_once'")
        try:
            app.schedule(
                task,
                cron=entry.cron,
                every=entry.every,
                tz=entry.tz,
                payload=payload,
                name=name,
                permissions=entry.permissions,
                missed="run_once" if entry.missed == "run_once" else "skip",
                grace=DEFAULT_SCHEDULE_GRACE if entry.grace is None else entry.grace,
            )
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from None
