"""``vaultq worker``: its flags (generated from :class:`vaultq.settings.WorkerSettings`),
one worker process, and the ``--processes N`` supervisor's children.

``python -m vaultq.cli_worker`` is how the supervisor starts a child: the child reads
its :class:`WorkerSettings` as JSON from stdin (encoded by the supervisor with msgspec)
instead of a command line rebuilt flag by flag.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from vaultq.cli_common import guarded, load_cli_app
from vaultq.cli_monitor import install_observability, supervisor_metrics
from vaultq.errors import ConfigurationError, VaultqError
from vaultq.logs import setup_logging
from vaultq.settings import WorkerSettings, add_worker_flags, environment, settings_from_flags

__all__ = [
    "add_worker_parser",
    "child_main",
    "cmd_worker",
    "freeze_startup_heap",
    "loop_options",
    "run_worker",
    "serve",
]

log = logging.getLogger("vaultq")

CHILD_ENTRY = ("-m", "vaultq.cli_worker")
"""How the supervisor starts a child (after ``sys.executable``)."""


def add_worker_parser(sub: Any) -> argparse.ArgumentParser:
    w: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run jobs of the app's tasks until SIGTERM/SIGINT. The first signal stops "
        "fetching and lets running jobs finish within --grace; a second hands them back.",
    )
    add_worker_flags(w)
    w.set_defaults(func=cmd_worker)
    return w


def cmd_worker(args: argparse.Namespace) -> int:
    return serve(settings_from_flags(args))


def run_worker(settings: WorkerSettings) -> int:
    """Configure logging and run ``settings`` like ``vaultq worker`` (errors: one line on
    stderr, exit 2). For callers that are not the argument parser (``manage.py``)."""
    setup_logging(settings.log_level, settings.log_format)
    return guarded(lambda: serve(settings))


def serve(settings: WorkerSettings) -> int:
    """Run one worker process, or supervise ``settings.processes`` of them."""
    from vaultq.cli_common import app_spec

    spec = app_spec(settings.app)
    if not spec:
        raise VaultqError(
            "name the app module: MODULE[:ATTR] (or set VAULTQ_APP, or DJANGO_SETTINGS_MODULE "
            "for the app configured in settings.VAULTQ)"
        )
    settings = msgspec.structs.replace(settings, app=spec)
    loop_options(settings.loop)  # a missing uvloop stops here, not in every child
    if settings.processes > 1:
        return _supervise(settings)
    return _serve_one(settings)


def _health_file(settings: WorkerSettings) -> Path:
    from vaultq.runtime.health import default_health_file

    given = settings.health_file or environment().health_file
    return Path(given) if given else default_health_file()


def _supervise(settings: WorkerSettings) -> int:
    from vaultq.runtime.supervisor import supervise

    # Load the app and its keys once here: a typo in the module name or missing keys
    # is one clear error and exit 2, not N children crash-looping under the supervisor.
    load_cli_app(settings.app, settings.broker).keyring  # noqa: B018
    # Resolved here so every child writes the same file ($VAULTQ_HEALTH_FILE is read at
    # this edge, not in each child).
    settings = msgspec.structs.replace(settings, health_file=str(_health_file(settings)))
    with supervisor_metrics(settings):
        return supervise(settings, entry=[sys.executable, *CHILD_ENTRY])


def loop_options(loop: str) -> dict[str, Any]:
    """anyio's asyncio backend options for ``--loop``; ConfigurationError when uvloop is
    asked for and not installed."""
    if loop != "uvloop":
        return {}
    try:
        import uvloop  # noqa: F401 - only whether it is installed
    except ImportError:
        raise ConfigurationError(
            "--loop uvloop needs the uvloop package: pip install 'vaultq[fast]' (or leave "
            "--loop out for asyncio's own loop)"
        ) from None
    return {"use_uvloop": True}


def _serve_one(settings: WorkerSettings) -> int:
    backend = loop_options(settings.loop)  # first: a missing uvloop is a usage error
    from vaultq.runtime.health import prepare
    from vaultq.runtime.worker import Worker

    app = load_cli_app(settings.app, settings.broker)
    install_observability(settings, app)
    health_file = _health_file(settings)
    prepare(health_file)
    worker = Worker(
        app,
        queues=list(settings.queues) or None,
        concurrency=settings.concurrency,
        grace=settings.grace,
        lease=settings.lease,
        max_abandoned_threads=settings.max_abandoned_threads,
        stall_warning=settings.stall_warning,
        health_file=health_file,
        health_interval=settings.health_interval,
    )
    if not app.tasks:
        log.warning("app %s has no tasks registered: is the task module imported?", app.name)
    app.keyring  # noqa: B018 - resolve keys now: a missing keyring is a clear error, not a traceback
    freeze_startup_heap()

    async def run() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signals(*, task_status: TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    task_status.started()
                    seen = 0
                    async for signum in signals:
                        seen += 1
                        if seen == 1:
                            log.info(
                                "%s: finishing running jobs (grace %.0f s); again to stop now",
                                signal.Signals(signum).name,
                                settings.grace,
                            )
                            worker.stop()
                        else:
                            log.info("stopping now: handing running jobs back")
                            worker.stop_now()

            # Signals are handled before the start line is printed: a supervisor or test
            # that waits for that line can always stop the worker gracefully.
            await tg.start(on_signals)
            log.info("%s", worker.describe())
            await worker.run()
            tg.cancel_scope.cancel()

    anyio.run(run, backend_options=backend)
    # A worker that could no longer serve exits non-zero so its supervisor restarts it.
    if worker.failed:
        log.error("worker %s could not serve any more: exit status 1 (restart it)", worker.name)
        return 1
    return 0


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, the app, its tasks and middleware, the keys)
    out of the collector's sight (``gc.freeze``): this process is the worker's own, and
    those objects live as long as it does. A full collection then walks only what the
    worker made since, not the ~50,000 objects of a worker with the OpenTelemetry SDK
    and prometheus-client imported (13-22 ms a full collection, measured). Garbage is
    collected first, so nothing already unreachable is kept."""
    gc.collect()
    gc.freeze()


def child_main() -> int:
    """A supervised child: its settings arrive as JSON on stdin."""
    data = sys.stdin.buffer.read()
    try:
        settings = msgspec.json.decode(data, type=WorkerSettings)
    except msgspec.ValidationError as exc:
        # The supervisor encoded these from a validated WorkerSettings: a mismatch means
        # the parent and child run different vaultq versions.
        print(f"vaultq: error: worker settings from the supervisor: {exc}", file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"vaultq: error: {exc}", file=sys.stderr)
        return 2
    return run_worker(msgspec.structs.replace(settings, processes=1))


if __name__ == "__main__":  # pragma: no cover - the supervisor's child entry
    sys.exit(child_main())
