"""The App's periodic jobs: ``app.schedule(task, cron=..., every=...)``, the
``@app.periodic(...)`` decorator and the registered ``app.schedules``.

A base class of :class:`vaultq.App`; what a schedule is and how ticks are claimed lives in
:mod:`vaultq.schedule` (``docs/scheduling.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import msgspec

from vaultq.errors import ConfigurationError
from vaultq.principal import Principal
from vaultq.schedule import DEFAULT_SCHEDULE_GRACE, MissedTicks, Schedule
from vaultq.tasks import Task

__all__ = ["AppSchedules"]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")


class AppSchedules:
    """Base of :class:`vaultq.App`: its schedules (periodic jobs)."""

    name: str
    _schedules: dict[str, Schedule]

    @property
    def schedules(self) -> dict[str, Schedule]:
        """Registered schedules by name (a copy)."""
        return dict(self._schedules)

    def schedule(
        self,
        task: Task[P, Any],
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        payload: P | None = None,
        name: str | None = None,
        principal: Principal | None = None,
        permissions: Iterable[str] = (),
        missed: MissedTicks = "skip",
        grace: float = DEFAULT_SCHEDULE_GRACE,
    ) -> Schedule:
        """Run ``task`` periodically: ``cron="*/5 * * * *"`` (with ``tz=``) or
        ``every=timedelta(minutes=5)``. Every worker holding a signing key (and
        ``vaultq scheduler MODULE``) enqueues each tick exactly once, however many run.

        ``payload`` defaults to the payload type built with no arguments. Jobs are sealed
        under ``principal`` (default: ``vaultq:scheduler:<name>`` with role
        ``vaultq:scheduler`` and ``permissions``) and pass the task's policy like any job.
        ``missed``: ``"skip"`` or ``"run_once"`` for ticks older than ``grace`` seconds
        (the scheduler was down). ``name`` (default: the task's name) identifies the
        schedule in the broker: keep it stable across deploys.

        Raises ``ConfigurationError`` (bad shape, zone, name taken, croniter missing for
        ``cron=``) and ``PayloadError``.
        """
        if not isinstance(task, Task) or task.app is not self:
            raise ConfigurationError(
                f"app {self.name!r}: schedule() takes a task registered on this app "
                "(put @app.periodic(...) above @app.task)"
            )
        new = Schedule(
            task,
            payload=payload,
            cron=cron,
            every=every,
            tz=tz,
            name=name,
            principal=principal,
            permissions=permissions,
            missed=missed,
            grace=grace,
        )
        if new.name in self._schedules:
            raise ConfigurationError(
                f"schedule name {new.name!r} is already taken in app {self.name!r}; give "
                "another with name='...'"
            )
        self._schedules[new.name] = new
        return new

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        payload: Any = None,
        name: str | None = None,
        principal: Principal | None = None,
        permissions: Iterable[str] = (),
        missed: MissedTicks = "skip",
        grace: float = DEFAULT_SCHEDULE_GRACE,
    ) -> Callable[[Task[P, R]], Task[P, R]]:
        """``@app.periodic(every=timedelta(minutes=5))`` above ``@app.task``: the
        decorator form of :meth:`schedule` (same options); returns the task unchanged."""

        def register(task: Task[P, R]) -> Task[P, R]:
            self.schedule(
                task,
                cron=cron,
                every=every,
                tz=tz,
                payload=payload,
                name=name,
                principal=principal,
                permissions=permissions,
                missed=missed,
                grace=grace,
            )
            return task

        return register
