"""``vaultq enqueue``, ``vaultq job``, ``vaultq cancel`` and ``vaultq status``.

Wired into ``vaultq.cli`` by :func:`add_jobs_parsers`. Exit codes are those of
:mod:`vaultq.cli_common`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import anyio
import msgspec

from vaultq.cli_common import (
    EXIT_ERROR,
    EXIT_FINISHED,
    EXIT_NO,
    EXIT_OK,
    EXIT_UNFINISHED,
    EXIT_UNKNOWN,
    add_common,
    existing_broker,
    load_cli_app,
    print_json,
    run_interruptibly,
    seconds,
    split_app_and_id,
)
from vaultq.errors import JobError, ResultUnavailable, VaultqError
from vaultq.policy import safe_id

__all__ = ["add_jobs_parsers", "cmd_cancel", "cmd_enqueue", "cmd_job", "cmd_status"]


def _find_task(app: Any, name: str) -> Any:
    task = app.get_task(name)
    if task is not None:
        return task
    matches = [t for n, t in app.tasks.items() if n.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(app.tasks)) or "(none)"
    raise VaultqError(f"no task {name!r} in app {app.name!r}; registered tasks: {known}")


def _app_queues(app: Any) -> list[str]:
    """Every queue the app uses: its tasks' and default queue, plus (Django) the queues of
    its settings and Tasks backends."""
    found = list(app.queues)
    extra = getattr(app, "extra_queues", None)
    if callable(extra):
        found += [q for q in extra() if q not in found]
    return found


def _when(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + f".{int(value % 1 * 1000):03d}Z"


# -- enqueue ------------------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    from vaultq.operations import mask_secrets
    from vaultq.principal import Principal

    app = load_cli_app(args.app, args.broker)
    task = _find_task(app, args.task)
    # fsencode gives back the bytes the shell passed (invalid UTF-8 included), so bad
    # text is a PayloadError like any other, not a UnicodeEncodeError traceback.
    payload = task.payload_codec.decode(os.fsencode(args.payload))
    principal = None
    if args.principal:
        principal = Principal(
            args.principal,
            roles=frozenset(args.role or ()),
            permissions=frozenset(args.permission or ()),
        )

    async def go() -> int:
        handle = await task.enqueue(payload, principal=principal, delay=args.delay)
        print(handle.id, flush=True)
        if not args.wait:
            return EXIT_OK
        try:
            value = await handle.result(timeout=args.timeout)
        except TimeoutError:
            print(
                f"vaultq: job {handle.id} has not finished within {args.timeout:g} s; it is "
                f"still queued or running (`vaultq job {app.import_spec or app.name} "
                f"{handle.id}` shows where)",
                file=sys.stderr,
            )
            return EXIT_UNFINISHED
        except ResultUnavailable:
            print(f"vaultq: job {handle.id} succeeded; its task stores no result", file=sys.stderr)
            return EXIT_OK
        except JobError as exc:
            print(f"vaultq: {exc}", file=sys.stderr)
            return EXIT_NO
        print(msgspec.json.encode(value, enc_hook=mask_secrets).decode())
        return EXIT_OK

    code: int = run_interruptibly(go)
    return code


# -- job ------------------------------------------------------------------------------------


def cmd_job(args: argparse.Namespace) -> int:
    from vaultq.operations import check_job_id, inspect_job

    spec, job_id = split_app_and_id(args.target, args.job_id, None, "job")
    check_job_id(job_id)
    app = existing_broker(load_cli_app(spec, args.broker))
    queues = [args.queue] if args.queue else _app_queues(app)

    async def go() -> Any:
        return await inspect_job(app, job_id, queues, with_result=args.result)

    report = anyio.run(go)
    if args.json:
        print_json(report)
    else:
        rows = [
            ("job", report.job_id),
            ("status", report.status),
            ("task", report.task or "-"),
            ("queue", report.queue or "-"),
            ("where", report.state),
            ("attempts", str(report.attempts)),
            ("enqueued", _when(report.enqueued_at)),
            ("not before", _when(report.not_before)),
            ("started", _when(report.started_at)),
            ("finished", _when(report.finished_at)),
            ("worker", report.worker or "-"),
            ("reason", report.reason or "-"),
        ]
        if report.cancel_requested:
            rows.append(("cancel", "requested"))
        if report.note:
            rows.append(("note", report.note))
        if report.result is not msgspec.UNSET:
            rows.append(("result", msgspec.json.encode(report.result).decode()))
        for name, value in rows:
            print(f"{name:<11} {value}")
    if report.status == "unknown" and report.queue is None:
        if not args.json:
            print(f"vaultq: no job {job_id} in queues {', '.join(queues)}", file=sys.stderr)
        return EXIT_UNKNOWN
    return EXIT_OK


# -- cancel ---------------------------------------------------------------------------------

_CANCEL_EXIT = {"pending": EXIT_OK, "running": EXIT_UNFINISHED, "finished": EXIT_FINISHED}


def cmd_cancel(args: argparse.Namespace) -> int:
    from vaultq.operations import cancel_job, check_job_id

    spec, job_id = split_app_and_id(args.target, args.job_id, args.legacy_app, "cancel")
    check_job_id(job_id)
    app = existing_broker(load_cli_app(spec, args.broker))
    queues = [args.queue] if args.queue else _app_queues(app)

    async def go() -> str:
        return str(await cancel_job(app, job_id, queues))

    found = anyio.run(go)
    messages = {
        "pending": f"job {job_id} was pending: cancelled, it will never start",
        "running": f"job {job_id} is running: cancel requested, it stops within about a "
        "second (async tasks at their next await)",
        "finished": f"job {job_id} has already finished; nothing to cancel",
        "unknown": f"no job {job_id} in queues {', '.join(queues)}; a cancel marker is left "
        "in case it is enqueued later",
    }
    print(messages[found])
    return _CANCEL_EXIT.get(found, EXIT_UNKNOWN)


# -- status -----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from vaultq.brokers.monitor import monitoring
    from vaultq.checks import has_revoked_keys, revoked_backlog
    from vaultq.cli_monitor import print_workers, worker_doc
    from vaultq.cli_schedule import print_schedule_rows, schedule_rows
    from vaultq.monitor import workers

    app = existing_broker(load_cli_app(args.app, args.broker))
    known = _app_queues(app)
    asked = [q for q in (args.queues or "").split(",") if q]
    queues = asked or known

    async def go() -> tuple[
        list[Any], dict[str, dict[str, int]], list[Any], list[Any] | None, list[Any]
    ]:
        broker = await app.broker()
        stats = [await broker.stats(q) for q in queues]
        # Entries removed without a dead letter (duplicates, replays): counted, not stored.
        counted = {q: await broker.counters(q) for q in queues}
        # The same VQ104 report as `vaultq check`: jobs workers will refuse.
        revoked = await revoked_backlog(app, queues) if has_revoked_keys(app) else []
        # Workers from their heartbeats (None: this broker does not record them).
        found = await workers(app) if monitoring(broker) is not None else None
        # Periodic jobs: each schedule's last and next tick.
        schedules = await schedule_rows(app)
        return stats, {q: c for q, c in counted.items() if c}, revoked, found, schedules

    rows, dropped, revoked, found, schedules = anyio.run(go)
    # A queue the app does not use and the broker holds nothing for is most likely a
    # typo: say so rather than print a row of zeros.
    unknown = [
        s.queue
        for s in rows
        if s.queue not in known and not (s.ready or s.delayed or s.running or s.dead)
    ]
    if unknown:
        print(
            f"vaultq: error: unknown queue {', '.join(map(repr, unknown))}: app {app.name} "
            f"uses {', '.join(known)} and the broker holds no jobs for it",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.json:
        doc = {
            "app": app.name,
            "broker": app.broker_url,
            "queues": rows,
            "dropped": dropped,
            "schedules": schedules,
            "findings": [{"level": f.level, "code": f.code, "message": f.message} for f in revoked],
            "workers": None if found is None else [worker_doc(w) for w in found],
        }
        print_json(doc)
        return EXIT_OK
    print(f"app {app.name} on {app.broker_url}")
    print(f"{'queue':<20} {'ready':>8} {'delayed':>8} {'running':>8} {'dead':>8}")
    for s in rows:
        print(f"{s.queue:<20} {s.ready:>8} {s.delayed:>8} {s.running:>8} {s.dead:>8}")
    for queue, counts in dropped.items():
        # Escaped: whoever can write to the broker can write any counter name.
        shown = " ".join(f"{safe_id(name)}={n}" for name, n in sorted(counts.items()))
        print(f"dropped without a dead letter on {queue}: {shown}")
    print_schedule_rows(schedules)
    for finding in revoked:
        print(finding)
    if found is not None:
        print_workers(found)
    return EXIT_OK


# -- parsers ----------------------------------------------------------------------------------


def _target_and_id(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="MODULE[:ATTR]",
        help="module defining your vaultq.App; leave it out to use $VAULTQ_APP (then the "
        "only argument is the job id)",
    )
    p.add_argument("job_id", metavar="JOB_ID", nargs="?", help="the id `vaultq enqueue` printed")
    p.add_argument("--queue", help="the job's queue (default: every queue of the app)")


def add_jobs_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "enqueue",
        help="enqueue one job",
        description="Validate JSON against the task's payload type, seal and enqueue it; "
        "print the job id (and with --wait, the result as JSON). Exit 0 when enqueued (with "
        "--wait: when it succeeded), 1 when it ended without succeeding, 3 when --timeout "
        "passed first (the job stays queued), 2 on errors.",
    )
    add_common(e)
    e.add_argument("task", help="task name (full, or the function name if unique)")
    e.add_argument("payload", help="payload as JSON, e.g. '{\"order_id\": 7}'")
    e.add_argument("--delay", type=seconds, default=None, help="seconds before the job may run")
    e.add_argument("--wait", action="store_true", help="wait for and print the result")
    e.add_argument("--timeout", type=seconds, default=60.0, help="seconds --wait waits (60)")
    e.add_argument("--principal", help="principal id the job runs for")
    e.add_argument("--role", action="append", help="principal role (repeatable)")
    e.add_argument("--permission", action="append", help="principal permission (repeatable)")
    e.set_defaults(func=cmd_enqueue)

    j = sub.add_parser(
        "job",
        help="show one job: status, task, queue, attempts, times, reason",
        description="Show where one job is and how it ended. The result is shown only with "
        "--result, with every Secret masked. Exit 0 when found, 5 for an unknown id.",
    )
    _target_and_id(j)
    j.add_argument("--result", action="store_true", help="also show the result value")
    j.add_argument("--json", action="store_true", help="print one JSON object")
    add_common(j, app_positional=False)
    j.set_defaults(func=cmd_job)

    c = sub.add_parser(
        "cancel",
        help="cancel a job by id",
        description="Cancel a job: a pending one is dead-lettered as cancelled at once and "
        "never starts; a running one is cancelled within about a second. Exit codes: 0 it "
        "was pending (cancelled), 3 it is running (cancel requested), 4 it had already "
        "finished (nothing changed), 5 unknown id, 2 errors.",
    )
    _target_and_id(c)
    c.add_argument(
        "--app",
        dest="legacy_app",
        metavar="MODULE[:ATTR]",
        help="deprecated: give the module first, `vaultq cancel MODULE JOB_ID`",
    )
    add_common(c, app_positional=False)
    c.set_defaults(func=cmd_cancel)

    s = sub.add_parser(
        "status",
        help="queue statistics: ready, delayed, running, dead",
        description="Jobs per queue. An unknown queue (not used by the app, nothing in the "
        "broker) is an error (exit 2).",
    )
    add_common(s)
    s.add_argument("--queues", help="comma-separated queues (default: all of the app's)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_status)
