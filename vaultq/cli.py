"""``vaultq`` command line: worker, enqueue, cancel, status, dead letters, keys."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus

from vaultq import config
from vaultq.errors import JobError, VaultqError
from vaultq.policy import _safe_id

__all__ = ["main"]

log = logging.getLogger("vaultq")

EPILOG = """\
environment:
  VAULTQ_BROKER   broker URL when the app does not set one (default sqlite:///vaultq.db)
  VAULTQ_KEYS     keyring JSON, or @/path/to/keyfile (see `vaultq keys --help`)
  VAULTQ_APP      MODULE[:ATTR] for commands that take --app

docs: docs/ in the vaultq repository (README.md to start)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    if text.upper() not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LOG_LEVELS)}")
    return text.upper()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _app(spec: str | None, broker: str | None = None) -> Any:
    from vaultq.loader import load_app

    spec = _spec(spec)
    if not spec:
        raise VaultqError(
            "name the app module: MODULE[:ATTR] (or set VAULTQ_APP, or DJANGO_SETTINGS_MODULE "
            "for the app configured in settings.VAULTQ)"
        )
    app = load_app(spec)
    if broker:
        app.set_broker(broker)
    return app


def _spec(spec: str | None) -> str | None:
    if spec:
        return spec
    if os.environ.get("VAULTQ_APP"):
        return os.environ["VAULTQ_APP"]
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        return "vaultq.django"
    return None


# -- worker ------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    if args.processes > 1:
        from vaultq.runtime.supervisor import supervise

        # Load the app and its keys once here: a typo in the module name or missing keys
        # is one clear error and exit 2, not N children crash-looping under the supervisor.
        _app(args.app, args.broker).keyring  # noqa: B018
        child = [sys.executable, "-m", "vaultq", *_worker_argv(args), "--processes", "1"]
        return supervise(child, args.processes, grace=args.grace)
    app = _app(args.app, args.broker)
    from vaultq.runtime.worker import Worker

    queues = [q for q in (args.queues or "").split(",") if q] or None
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        grace=args.grace,
        lease=args.lease,
        max_abandoned_threads=args.max_abandoned_threads,
    )
    if not app.tasks:
        log.warning("app %s has no tasks registered: is the task module imported?", app.name)
    app.keyring  # noqa: B018 - resolve keys now: a missing keyring is a clear error, not a traceback

    async def serve() -> None:
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
                                args.grace,
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

    anyio.run(serve)
    return 0


def _worker_argv(args: argparse.Namespace) -> list[str]:
    spec = _spec(args.app)
    if not spec:
        raise VaultqError("name the app module: MODULE[:ATTR] (or set VAULTQ_APP)")
    argv = ["worker", spec, "--concurrency", str(args.concurrency), "--grace", str(args.grace)]
    argv += ["--log-level", args.log_level]
    if args.queues:
        argv += ["--queues", args.queues]
    if args.broker:
        argv += ["--broker", args.broker]
    if args.lease is not None:
        argv += ["--lease", str(args.lease)]
    argv += ["--max-abandoned-threads", str(args.max_abandoned_threads)]
    return argv


# -- producing and inspecting ----------------------------------------------------------------


def _existing_broker(app: Any) -> Any:
    """For read-only commands: refuse to create an empty embedded database on a typo."""
    path = getattr(app._broker_template, "path", None)
    if path is not None and not path.exists():
        raise VaultqError(
            f"no vaultq database at {path}: check --broker / VAULTQ_BROKER and the "
            "working directory (this command does not create one)"
        )
    return app


def _find_task(app: Any, name: str) -> Any:
    task = app.get_task(name)
    if task is not None:
        return task
    matches = [t for n, t in app.tasks.items() if n.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(app.tasks)) or "(none)"
    raise VaultqError(f"no task {name!r} in app {app.name!r}; registered tasks: {known}")


def cmd_enqueue(args: argparse.Namespace) -> int:
    from vaultq.principal import Principal

    app = _app(args.app, args.broker)
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
            return 0
        try:
            value = await handle.result(timeout=args.timeout)
        except JobError as exc:
            print(f"vaultq: {exc}", file=sys.stderr)
            return 1
        print(msgspec.json.encode(value, enc_hook=_masked).decode())
        return 0

    return anyio.run(go)


def _masked(obj: Any) -> Any:
    """``--wait`` prints results; a ``Secret`` in one prints masked, never revealed."""
    from vaultq.payload import Secret

    if isinstance(obj, Secret):
        return repr(obj)
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


def cmd_cancel(args: argparse.Namespace) -> int:
    app = _existing_broker(_app(args.app, args.broker))

    async def go() -> str:
        return str(await app.cancel(args.job_id, queue=args.queue))

    state = anyio.run(go)
    if state == "finished":
        print(f"job {args.job_id} has already finished; nothing to cancel")
    else:
        print(f"cancel requested for job {args.job_id}: it will not start, or stop if running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    app = _existing_broker(_app(args.app, args.broker))
    from vaultq.runtime.worker import _queues_of

    queues = [q for q in (args.queues or "").split(",") if q] or _queues_of(app)

    async def go() -> list[Any]:
        broker = await app.broker()
        return [await broker.stats(q) for q in queues]

    rows = anyio.run(go)
    print(f"app {app.name} on {app.broker_url}")
    print(f"{'queue':<20} {'ready':>8} {'delayed':>8} {'running':>8} {'dead':>8}")
    for s in rows:
        print(f"{s.queue:<20} {s.ready:>8} {s.delayed:>8} {s.running:>8} {s.dead:>8}")
    return 0


def cmd_dead(args: argparse.Namespace) -> int:
    app = _existing_broker(_app(args.app, args.broker))

    async def go() -> int:
        broker = await app.broker()
        if args.action == "purge":
            n = await broker.purge_dead(args.queue)
            print(f"purged {n} dead letter(s) from queue {args.queue}")
            return 0
        rows = await broker.dead_letters(args.queue, limit=args.limit)
        if not rows:
            print(f"no dead letters in queue {args.queue}")
        for d in rows:
            # Every field was read from the broker, where an attacker may have written
            # it: escape control characters so nothing can drive the operator's terminal.
            print(
                f"{_safe_id(str(d.job_id))}  attempt={_safe_id(str(d.attempt))}  "
                f"reason={_safe_id(str(d.reason))}  {_safe_id(str(d.detail))}"
            )
        return 0

    return anyio.run(go)


def cmd_check(args: argparse.Namespace) -> int:
    from vaultq.checks import check_app

    app = _app(args.app, args.broker)
    findings = check_app(app, deploy=args.deploy)
    for finding in findings:
        print(finding)
    errors = sum(1 for f in findings if f.level == "error")
    print(f"{len(findings)} finding(s), {errors} error(s) for app {app.name}")
    return 1 if errors else 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaultq",
        description="vaultq: a hardened job queue. Typed payloads, sealed envelopes, "
        "policies before dispatch, deadlines that stop jobs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, app_positional: bool = True) -> None:
        if app_positional:
            p.add_argument(
                "app",
                metavar="MODULE[:ATTR]",
                nargs="?",
                help="module defining your vaultq.App (default: $VAULTQ_APP, or the Django "
                "settings' app when DJANGO_SETTINGS_MODULE is set)",
            )
        p.add_argument("--broker", help="broker URL (overrides the app's and $VAULTQ_BROKER)")
        p.add_argument(
            "--log-level",
            type=_log_level,
            default="INFO",
            help="DEBUG, INFO, WARNING, ERROR (default INFO)",
        )

    w = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run jobs of the app's tasks until SIGTERM/SIGINT. The first signal stops "
        "fetching and lets running jobs finish within --grace; a second hands them back.",
    )
    common(w)
    w.add_argument("--queues", help="comma-separated queues, earlier first (default: all)")
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        default=config.DEFAULT_CONCURRENCY,
        help=f"jobs at once per process (default {config.DEFAULT_CONCURRENCY})",
    )
    w.add_argument(
        "--processes", type=_positive_int, default=1, help="supervised worker processes (1)"
    )
    w.add_argument(
        "--grace",
        type=_seconds,
        default=config.DEFAULT_GRACE,
        help=f"seconds to let running jobs finish at shutdown (default {config.DEFAULT_GRACE:g})",
    )
    w.add_argument(
        "--lease",
        type=_positive_seconds,
        default=None,
        help="seconds a job stays leased without renewal; a dead worker's jobs come back "
        f"after it (default {config.DEFAULT_LEASE:g})",
    )
    w.add_argument(
        "--max-abandoned-threads",
        type=_positive_int,
        default=config.DEFAULT_MAX_ABANDONED_THREADS,
        help="sync jobs past their deadline whose threads still run; beyond this, sync jobs "
        f"are handed back until some finish (default {config.DEFAULT_MAX_ABANDONED_THREADS})",
    )
    w.set_defaults(func=cmd_worker)

    e = sub.add_parser(
        "enqueue",
        help="enqueue one job",
        description="Validate JSON against the task's payload type, seal and enqueue it; "
        "print the job id (and with --wait, the result as JSON).",
    )
    common(e)
    e.add_argument("task", help="task name (full, or the function name if unique)")
    e.add_argument("payload", help="payload as JSON, e.g. '{\"order_id\": 7}'")
    e.add_argument("--delay", type=_seconds, default=None, help="seconds before the job may run")
    e.add_argument("--wait", action="store_true", help="wait for and print the result")
    e.add_argument("--timeout", type=_seconds, default=60.0, help="seconds --wait waits (60)")
    e.add_argument("--principal", help="principal id the job runs for")
    e.add_argument("--role", action="append", help="principal role (repeatable)")
    e.add_argument("--permission", action="append", help="principal permission (repeatable)")
    e.set_defaults(func=cmd_enqueue)

    c = sub.add_parser("cancel", help="cancel a job by id")
    c.add_argument("job_id", help="the job id printed by enqueue")
    c.add_argument("--app", help="MODULE[:ATTR] of the app (default $VAULTQ_APP)")
    c.add_argument("--queue", help="the job's queue (default: every queue of the app)")
    common(c, app_positional=False)
    c.set_defaults(func=cmd_cancel)

    s = sub.add_parser("status", help="queue statistics: ready, delayed, running, dead")
    common(s)
    s.add_argument("--queues", help="comma-separated queues (default: all of the app's)")
    s.set_defaults(func=cmd_status)

    d = sub.add_parser("dead", help="list or purge dead letters")
    d.add_argument("action", choices=["list", "purge"])
    common(d)
    d.add_argument("--queue", default=config.DEFAULT_QUEUE, help="queue (default 'default')")
    d.add_argument("--limit", type=_positive_int, default=50, help="rows to list (50)")
    d.set_defaults(func=cmd_dead)

    k = sub.add_parser(
        "check",
        help="look for unsafe configuration",
        description="Check keys, broker URL and policies. --deploy adds production checks: "
        "plaintext Redis off this host, tasks relying on the default policy. Exit 1 on errors.",
    )
    common(k)
    k.add_argument("--deploy", action="store_true", help="also run the production checks")
    k.set_defaults(func=cmd_check)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    from vaultq.cli_keys import add_keys_parser

    add_keys_parser(sub)
    try:
        from vaultq.demo import add_demo_parser
    except ImportError:  # pragma: no cover - demo lands with the quickstart
        return
    add_demo_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "log_level", "INFO"))
    try:
        result: int = args.func(args)
        return result
    except VaultqError as exc:
        print(f"vaultq: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # errors raised inside the worker's task group arrive wrapped
        matched, rest = group.split(VaultqError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            print(f"vaultq: error: {leaf}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
