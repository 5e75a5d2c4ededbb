"""``vaultq dead list|purge|retry``: look at, delete, or re-run dead letters.

Wired into ``vaultq.cli`` by :func:`add_dead_parser`. Purge and retry change the queue on
purpose: both write an audit line naming the OS user (see :mod:`vaultq.operations`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from vaultq import config
from vaultq.cli_common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    EXIT_UNKNOWN,
    add_common,
    existing_broker,
    load_cli_app,
    positive_int,
    print_json,
)
from vaultq.errors import VaultqError
from vaultq.policy import safe_id

__all__ = ["add_dead_parser", "cmd_dead"]


def cmd_dead(args: argparse.Namespace) -> int:
    app = existing_broker(load_cli_app(args.app, args.broker))
    if args.limit is None:
        args.limit = 1000 if args.action == "retry" else 50
    if args.action == "purge":
        return _purge(app, args)
    if args.action == "retry":
        return _retry(app, args)
    return _list(app, args)


def _list(app: Any, args: argparse.Namespace) -> int:
    async def go() -> list[Any]:
        broker = await app.broker()
        rows: list[Any] = await broker.dead_letters(args.queue, limit=args.limit)
        return rows

    rows = anyio.run(go)
    if args.json:
        # Every field was read from the broker, where an attacker may have written it:
        # escaped like the text form, so a JSON consumer that prints it is safe too.
        print_json(
            [
                {
                    "job_id": safe_id(d.job_id),
                    "queue": d.queue,
                    "attempt": d.attempt,
                    "reason": safe_id(d.reason),
                    "detail": safe_id(d.detail),
                    "at": d.at,
                }
                for d in rows
            ]
        )
        return EXIT_OK
    if not rows:
        print(f"no dead letters in queue {args.queue}")
    for d in rows:
        # Escape control characters so nothing read from the broker can drive the
        # operator's terminal.
        print(
            f"{safe_id(str(d.job_id))}  attempt={safe_id(str(d.attempt))}  "
            f"reason={safe_id(str(d.reason))}  {safe_id(str(d.detail))}"
        )
    return EXIT_OK


def _purge(app: Any, args: argparse.Namespace) -> int:
    from vaultq.operations import purge_dead

    async def count() -> int:
        broker = await app.broker()
        stats = await broker.stats(args.queue)
        return int(stats.dead)

    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "vaultq: error: `dead purge` deletes dead letters for good; pass --yes to "
                "confirm when not on a terminal",
                file=sys.stderr,
            )
            return EXIT_ERROR
        n = anyio.run(count)
        answer = input(f"delete {n} dead letter(s) of queue {args.queue} for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_NO

    async def go() -> int:
        return await purge_dead(app, args.queue)

    n = anyio.run(go)
    print(f"purged {n} dead letter(s) from queue {args.queue}")
    return EXIT_OK


def _retry(app: Any, args: argparse.Namespace) -> int:
    from vaultq.operations import check_job_id, retry_dead

    if (args.id is None) == (not args.all):
        raise VaultqError("say which dead letters to retry: --id JOB_ID, or --all")
    if args.id is not None:
        check_job_id(args.id)

    async def go() -> list[Any]:
        return await retry_dead(app, args.queue, job_id=args.id, limit=args.limit)

    outcomes = anyio.run(go)
    if not outcomes:
        what = f"of job {args.id}" if args.id else "to retry"
        print(f"no dead letters {what} in queue {args.queue}", file=sys.stderr)
        return EXIT_UNKNOWN if args.id else EXIT_OK
    for o in outcomes:
        print(f"{o.job_id}  reason={o.reason}  {o.message}")
    retried = sum(1 for o in outcomes if o.done)
    print(f"{retried} of {len(outcomes)} dead letter(s) re-enqueued from queue {args.queue}")
    return EXIT_OK if retried == len(outcomes) else EXIT_NO


def add_dead_parser(sub: Any) -> None:
    d = sub.add_parser(
        "dead",
        help="list, purge or retry dead letters",
        description="list: newest first. purge: delete every dead letter of the queue (asks "
        "on a terminal; --yes otherwise). retry: re-enqueue dead letters of jobs that failed "
        "or timed out (--id JOB_ID or --all), their sealed envelopes unchanged, as attempt 1; "
        "rejected, denied, expired and cancelled ones are refused. Purge and retry are "
        "written to the vaultq.audit log with your OS user. Exit 1 when some were refused.",
    )
    d.add_argument("action", choices=["list", "purge", "retry"])
    add_common(d)
    d.add_argument("--queue", default=config.DEFAULT_QUEUE, help="queue (default 'default')")
    d.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="list: rows to show (50); retry --all: newest letters to look at (1000)",
    )
    d.add_argument("--json", action="store_true", help="list: print one JSON array")
    d.add_argument("--yes", action="store_true", help="purge: do not ask")
    d.add_argument("--id", metavar="JOB_ID", help="retry: the dead letter of this job")
    d.add_argument("--all", action="store_true", help="retry: every retryable dead letter")
    d.set_defaults(func=cmd_dead)
