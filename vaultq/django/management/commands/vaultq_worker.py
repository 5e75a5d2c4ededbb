"""``python manage.py vaultq_worker``: ``vaultq worker`` for the app in ``settings.VAULTQ``.

Takes the flags of ``vaultq worker`` (``--queues --concurrency --processes --grace
--lease --broker --log-level --log-format``); their defaults come from ``settings.VAULTQ``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from vaultq.django.apps import DEBUG_WARNED, get_config


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a vaultq worker for the tasks of this Django project."
    # Checks run in handle(), after worker mode is set (enables the DEBUG check).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--queues", help="comma-separated queues, earlier first")
        parser.add_argument("--concurrency", type=int, help="jobs at once per process")
        parser.add_argument("--processes", type=int, default=1, help="worker processes")
        parser.add_argument("--grace", type=float, help="seconds running jobs get at shutdown")
        parser.add_argument("--lease", type=float, help="seconds a job stays leased")
        parser.add_argument("--broker", help="broker URL (overrides VAULTQ['BROKER_URL'])")
        parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
        parser.add_argument(
            "--log-format",
            choices=("text", "json"),
            default="text",
            help="text, or json: one JSON object per line",
        )
        parser.add_argument(
            "--max-abandoned-threads",
            type=int,
            help="sync jobs past their deadline still running before sync jobs are handed back",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from vaultq.cli import main
        from vaultq.runtime.worker import _queues_of

        config = get_config()
        config.worker_mode = True
        self.check()
        from django.conf import settings

        if settings.DEBUG:
            # check() just printed vaultq.W003: the loader and the worker processes
            # must not say it again.
            os.environ[DEBUG_WARNED] = "1"
        s = config.app.vaultq_settings
        queues = options["queues"] or ",".join(s.queues or _default_queues(config, _queues_of))
        argv = [
            "worker",
            "vaultq.django",
            "--queues",
            queues,
            "--concurrency",
            str(options["concurrency"] or s.concurrency),
            "--grace",
            str(options["grace"] if options["grace"] is not None else s.grace),
            "--processes",
            str(options["processes"]),
            "--log-level",
            options["log_level"],
            "--log-format",
            options["log_format"],
        ]
        if options["lease"] is not None:
            argv += ["--lease", str(options["lease"])]
        if options["max_abandoned_threads"] is not None:
            argv += ["--max-abandoned-threads", str(options["max_abandoned_threads"])]
        if options["broker"]:
            argv += ["--broker", options["broker"]]
        # Worker processes (--processes) and isolated task processes are fresh
        # interpreters that set Django up again: give them the directory manage.py runs
        # from, whatever their working directory.
        path = [p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(path)
        code = main(argv)
        if code:
            raise CommandError(f"vaultq worker exited with code {code}")


def _default_queues(config: Any, queues_of: Any) -> list[str]:
    """The App's task queues plus the QUEUES of every vaultq Tasks backend."""
    from django.conf import settings

    found = list(queues_of(config.app))
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if str(params.get("BACKEND", "")).startswith("vaultq.django"):
            found += [q for q in params.get("QUEUES", ()) if q not in found]
    return found
