"""``python manage.py vaultq_worker``: ``vaultq worker`` for the app in ``settings.VAULTQ``.

Its options are generated from :class:`vaultq.settings.WorkerSettings`, like the flags of
``vaultq worker`` (the same names, help and checks; every option but the app module).
An option not given comes from ``settings.VAULTQ`` (``QUEUES``, ``CONCURRENCY``,
``GRACE``, ``METRICS_PORT``, ``METRICS_ADDRESS``, ``EVENTS``), else the worker's default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from vaultq.django.apps import DEBUG_WARNED, get_config
from vaultq.errors import ConfigurationError
from vaultq.settings import UNSET, WorkerSettings, add_worker_flags, settings_from_flags


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a vaultq worker for the tasks of this Django project."
    # Checks run in handle(), after worker mode is set (enables the DEBUG check).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        # Defaults None: "not given", so settings.VAULTQ can fill it in handle().
        add_worker_flags(parser, skip=("app",), defaults_from_settings=False)

    def handle(self, *args: Any, **options: Any) -> None:
        from vaultq.cli_worker import run_worker

        config = get_config()
        config.worker_mode = True
        self.check()
        from django.conf import settings

        if settings.DEBUG:
            # check() just printed vaultq.W003: the loader and the worker processes
            # must not say it again.
            os.environ[DEBUG_WARNED] = "1"
        s = config.app.vaultq_settings
        from_settings: dict[str, Any] = {
            "queues": tuple(s.queues or _default_queues(config)),
            "concurrency": s.concurrency,
            "grace": s.grace,
            "metrics_port": s.metrics_port,
            "metrics_address": s.metrics_address,
            "events": s.events,
        }
        try:
            base = WorkerSettings(
                app="vaultq.django",
                **{k: v for k, v in from_settings.items() if v is not UNSET},
            )
            worker_settings = settings_from_flags(argparse.Namespace(**options), base=base)
        except ConfigurationError as exc:
            raise CommandError(f"settings.VAULTQ: {exc}") from None
        # Worker processes (--processes) and isolated task processes are fresh
        # interpreters that set Django up again: give them the directory manage.py runs
        # from, whatever their working directory.
        path = [p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(path)
        code = run_worker(worker_settings)
        if code:
            raise CommandError(f"vaultq worker exited with code {code}")


def _default_queues(config: Any) -> list[str]:
    """The App's task queues plus the QUEUES of every vaultq Tasks backend."""
    from django.conf import settings

    found = list(config.app.queues)
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if str(params.get("BACKEND", "")).startswith("vaultq.django"):
            found += [q for q in params.get("QUEUES", ()) if q not in found]
    return found
