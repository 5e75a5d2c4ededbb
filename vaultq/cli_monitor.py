"""``vaultq workers`` and ``vaultq events``, and the workers section of ``vaultq status``.

They read what workers write into the broker (:mod:`vaultq.monitor`): heartbeats and
the job event stream. Every field printed is escaped: anyone who can write to the
broker can write these records.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import anyio

from vaultq.brokers.monitor import JobEvent
from vaultq.cli_common import (
    EXIT_NO,
    EXIT_OK,
    add_common,
    existing_broker,
    load_cli_app,
    positive_int,
    print_json,
    run_interruptibly,
)
from vaultq.monitor import WorkerStatus, follow_events, workers
from vaultq.policy import safe_id
from vaultq.settings import WorkerSettings

__all__ = [
    "SUPERVISED_ENV",
    "add_monitor_parsers",
    "cmd_events",
    "cmd_workers",
    "format_event",
    "install_observability",
    "print_workers",
    "supervisor_metrics",
    "worker_doc",
]


def _clock(at: float) -> str:
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def worker_doc(status: WorkerStatus) -> dict[str, Any]:
    """One worker as a JSON-ready mapping (``--json``)."""
    b = status.beat
    return {
        "worker": b.worker,
        "host": b.host,
        "pid": b.pid,
        "app": b.app,
        "queues": list(b.queues),
        "concurrency": b.concurrency,
        "in_flight": b.in_flight,
        "done": b.done,
        "started_at": b.started_at,
        "version": b.version,
        "every": b.every,
        "last_beat": b.at,
        "age": round(status.age, 3),
        "alive": status.alive,
    }


def print_workers(found: Sequence[WorkerStatus]) -> None:
    """The human table: one line per worker, silent ones flagged."""
    if not found:
        print("no workers have beaten recently")
        return
    print(f"{'worker':<36} {'host':<16} {'pid':>7} {'in flight':>10} {'done':>8}  state")
    for status in found:
        b = status.beat
        in_flight = f"{b.in_flight}/{b.concurrency}"
        state = (
            f"alive (beat {status.age:.1f} s ago)"
            if status.alive
            else f"STOPPED BEATING {status.age:.0f} s ago (killed, frozen or cut off?)"
        )
        print(
            f"{safe_id(b.worker):<36} {safe_id(b.host):<16} {b.pid:>7} "
            f"{in_flight:>10} {b.done:>8}  {state}"
        )


def cmd_workers(args: argparse.Namespace) -> int:
    app = existing_broker(load_cli_app(args.app, args.broker))

    async def go() -> list[WorkerStatus]:
        try:
            return await workers(app)
        finally:
            await app.aclose()

    found = anyio.run(go)
    if args.json:
        print_json({"app": app.name, "workers": [worker_doc(s) for s in found]})
    else:
        print(f"app {app.name} on {app.broker_url}")
        print_workers(found)
    alive = [s for s in found if s.alive]
    return EXIT_OK if alive else EXIT_NO


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def format_event(event: JobEvent) -> str:
    """One line per event: time, kind, ids and safe fields (escaped)."""
    parts = [_clock(event.at), f"{safe_id(event.kind):<11}", f"job={safe_id(event.job_id)}"]
    if event.task:
        parts.append(f"task={safe_id(event.task)}")
    parts.append(f"queue={safe_id(event.queue)}")
    if event.attempt:
        parts.append(f"attempt={event.attempt}")
    if event.reason:
        parts.append(f"reason={safe_id(event.reason)}")
    if event.duration is not None:
        parts.append(f"duration={event.duration:.3f}s")
    if event.worker:
        parts.append(f"worker={safe_id(event.worker)}")
    return " ".join(parts)


def cmd_events(args: argparse.Namespace) -> int:
    import msgspec

    app = existing_broker(load_cli_app(args.app, args.broker))

    def show(event: JobEvent) -> None:
        if args.json:
            print(msgspec.json.encode(event).decode(), flush=True)
        else:
            print(format_event(event), flush=True)

    async def go() -> None:
        try:
            if args.follow:
                async for event in follow_events(app, last=args.last):
                    show(event)
            else:
                from vaultq.monitor import events

                for event in await events(app, limit=args.last):
                    show(event)
        finally:
            with anyio.CancelScope(shield=True):
                await app.aclose()

    if args.follow:
        run_interruptibly(go)
    else:
        anyio.run(go)
    return EXIT_OK


def add_monitor_parsers(sub: Any) -> None:
    w = sub.add_parser(
        "workers",
        help="list the workers that beat recently",
        description="List worker processes from their heartbeats in the broker: host, pid, "
        "jobs in flight and done, and whether they still beat (a killed or frozen worker is "
        "flagged after three missed beats, and forgotten after an hour). Exit 0 when at least "
        "one worker is alive, 1 otherwise.",
    )
    add_common(w)
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_workers)

    e = sub.add_parser(
        "events",
        help="print the job event stream (--follow: live)",
        description="Print the newest job events (enqueued, started, succeeded, retried, dead "
        "with its reason, cancelled) from the broker's bounded event stream: ids, task, queue, "
        "attempt, reason, duration, worker -- never payloads or results. --follow keeps "
        "printing new events until interrupted.",
    )
    add_common(e)
    e.add_argument(
        "--last",
        type=_count,
        default=20,
        help="how many of the newest events to print first (default 20)",
    )
    e.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    e.set_defaults(func=cmd_events)


# -- vaultq worker --metrics-port / --events ------------------------------------------------

SUPERVISED_ENV = "VAULTQ_METRICS_FROM_SUPERVISOR"
"""Set by the ``--processes N`` supervisor for its children: their metrics samples go to
the supervisor's multiprocess directory, which it serves; they serve nothing."""


def install_observability(settings: WorkerSettings, app: Any) -> None:
    """Install the middleware ``--events`` and ``--metrics-port`` ask for on ``app``, and
    serve ``/metrics`` unless a supervisor serves them."""
    # Middleware the app module installed itself is used as it is, never doubled.
    if settings.events:
        from vaultq.events import EventStream

        if not any(isinstance(m, EventStream) for m in app.middleware):
            app.add_middleware(EventStream(app))
    if settings.metrics_port is None:
        return
    from vaultq.metrics import PrometheusMetrics, serve_metrics

    found = [m for m in app.middleware if isinstance(m, PrometheusMetrics)]
    metrics = found[0] if found else PrometheusMetrics(app)
    if not found:
        app.add_middleware(metrics)
    if not os.environ.get(SUPERVISED_ENV):
        serve_metrics(settings.metrics_port, settings.metrics_address, metrics.registry)


@contextlib.contextmanager
def supervisor_metrics(settings: WorkerSettings) -> Iterator[None]:
    """For ``--processes N`` with ``--metrics-port``: a private multiprocess directory
    for the children (in the environment they inherit) and one ``/metrics`` serving
    their sum; removed at exit."""
    if settings.metrics_port is None:
        yield
        return
    from vaultq.metrics import MULTIPROC_ENV, multiprocess_registry, serve_metrics

    directory = tempfile.mkdtemp(prefix="vaultq-metrics-")  # 0700
    saved = {k: os.environ.get(k) for k in (MULTIPROC_ENV, SUPERVISED_ENV)}
    os.environ[MULTIPROC_ENV] = directory
    os.environ[SUPERVISED_ENV] = "1"
    try:
        registry = multiprocess_registry()
        server = serve_metrics(settings.metrics_port, settings.metrics_address, registry)
        try:
            yield
        finally:
            server.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(directory, ignore_errors=True)
