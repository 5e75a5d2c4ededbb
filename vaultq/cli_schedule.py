"""``vaultq scheduler`` (run an app's schedules without a worker) and the schedule rows
``vaultq status`` prints.

``vaultq scheduler MODULE`` is for split-trust deployments: workers hold only verification
keys (`vaultq keys public`) and cannot seal jobs, so the schedules run where the signing key
is. It may run on several hosts at once, beside workers that schedule too: each tick is
still enqueued once (``vaultq/runtime/scheduler.py``).
"""

from __future__ import annotations

import argparse
import logging
import signal
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from vaultq.cli_common import EXIT_ERROR, EXIT_OK, add_common, load_cli_app
from vaultq.runtime.scheduler import Scheduler, tick_store

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "ScheduleRow",
    "add_scheduler_parser",
    "cmd_scheduler",
    "print_schedule_rows",
    "schedule_rows",
]

log = logging.getLogger("vaultq")


class ScheduleRow(msgspec.Struct, frozen=True):
    """One schedule as ``vaultq status`` shows it (times in UTC, ISO 8601)."""

    name: str
    task: str
    queue: str
    shape: str
    last: str | None
    """The newest tick claimed or passed over (None: the schedule never ran)."""
    last_fired: str | None
    """The newest tick that enqueued a job."""
    next: str | None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def schedule_rows(app: App) -> list[ScheduleRow]:
    """The app's schedules with their last and next tick, read from the broker by the
    dashboard's data layer (one read of marks per queue), times as ISO text."""
    from vaultq.dashboard import data

    if not app.schedules:
        return []
    tick_store(await app.broker())  # a broker that cannot schedule is an error here
    return [
        ScheduleRow(
            name=r.name,
            task=r.task,
            queue=r.queue,
            shape=r.shape,
            last=_iso(r.last),
            last_fired=_iso(r.last_fired),
            next=_iso(r.next),
        )
        for r in await data.schedule_rows(app)
    ]


def print_schedule_rows(rows: list[ScheduleRow]) -> None:
    if not rows:
        return
    print(f"{'schedule':<24} {'last tick':<21} {'next tick':<21} shape")
    for r in rows:
        print(f"{r.name:<24} {r.last or '-':<21} {r.next or '-':<21} {r.shape}")


def cmd_scheduler(args: argparse.Namespace) -> int:
    app = load_cli_app(args.app, args.broker)
    if not app.schedules:
        log.error("app %s has no schedules: is the module that declares them imported?", app.name)
        return EXIT_ERROR
    if not app.keyring.can_sign:
        log.error(
            "app %s: this keyring is verify-only and cannot seal jobs; the scheduler needs "
            "the full (signing) keyring",
            app.name,
        )
        return EXIT_ERROR
    scheduler = Scheduler(app)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signals(*, task_status: TaskStatus[None]) -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    task_status.started()
                    async for _ in signals:
                        log.info("scheduler: stopping")
                        scheduler.stop()
                        return

            await tg.start(on_signals)
            log.info("vaultq scheduler: app=%s broker=%s", app.name, app.broker_url)
            await scheduler.run()
            tg.cancel_scope.cancel()
        await app.aclose()

    anyio.run(serve)
    return EXIT_OK


def add_scheduler_parser(sub: Any) -> None:
    p = sub.add_parser(
        "scheduler",
        help="run the app's periodic jobs without a worker (split-trust deployments)",
        description="Enqueue each tick of the app's schedules exactly once, however many "
        "schedulers and workers run. Workers with a signing key do this already; run this "
        "where workers hold only verification keys.",
    )
    add_common(p)
    p.set_defaults(func=cmd_scheduler)
