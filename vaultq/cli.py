"""``vaultq`` command line: the parser, ``main``, ``worker`` and ``check``.

The other commands live beside it, one module per group: ``cli_jobs`` (enqueue, job,
cancel, status), ``cli_dead`` (dead letters), ``cli_keys`` (keyrings); shared argument
types, app loading and the exit codes are in ``cli_common``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus

from vaultq import __version__, config
from vaultq.cli_common import (
    EXIT_ERROR,
    EXIT_NO,
    EXIT_OK,
    add_common,
    app_spec,
    existing_broker,
    load_cli_app,
    positive_int,
    positive_seconds,
    print_json,
    seconds,
)
from vaultq.cli_dead import add_dead_parser
from vaultq.cli_health import (
    add_health_parser,
    add_health_worker_options,
    health_file_of,
    health_worker_argv,
)
from vaultq.cli_jobs import add_jobs_parsers
from vaultq.cli_monitor import add_monitor_parsers
from vaultq.errors import VaultqError
from vaultq.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("vaultq")

EPILOG = """\
environment:
  VAULTQ_BROKER   broker URL when the app does not set one (default sqlite:///vaultq.db)
  VAULTQ_KEYS     keyring JSON, or @/path/to/keyfile (see `vaultq keys --help`)
  VAULTQ_APP      MODULE[:ATTR] when a command is given no module

exit codes: 0 done, 1 done but "no" (check errors, job failed, retry refused),
  2 error, 3 job not finished (cancel: running; enqueue --wait: timeout),
  4 job already finished (cancel), 5 unknown job id, 130 interrupted

docs: docs/ in the vaultq repository (README.md to start)
"""


# -- worker ------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    if args.processes > 1:
        from vaultq.runtime.supervisor import supervise

        # Load the app and its keys once here: a typo in the module name or missing keys
        # is one clear error and exit 2, not N children crash-looping under the supervisor.
        load_cli_app(args.app, args.broker).keyring  # noqa: B018
        child = [sys.executable, "-m", "vaultq", *_worker_argv(args), "--processes", "1"]
        return supervise(child, args.processes, grace=args.grace)
    app = load_cli_app(args.app, args.broker)
    from vaultq.runtime.worker import Worker

    queues = [q for q in (args.queues or "").split(",") if q] or None
    health_file, health_interval = health_file_of(args)
    worker = Worker(
        app,
        queues=queues,
        concurrency=args.concurrency,
        grace=args.grace,
        lease=args.lease,
        max_abandoned_threads=args.max_abandoned_threads,
        health_file=health_file,
        health_interval=health_interval,
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
    # A worker that could no longer serve exits non-zero so its supervisor restarts it.
    if worker.failed:
        log.error("worker %s could not serve any more: exit status 1 (restart it)", worker.name)
        return 1
    return 0


def _worker_argv(args: argparse.Namespace) -> list[str]:
    spec = app_spec(args.app)
    if not spec:
        raise VaultqError("name the app module: MODULE[:ATTR] (or set VAULTQ_APP)")
    argv = ["worker", spec, "--concurrency", str(args.concurrency), "--grace", str(args.grace)]
    argv += ["--log-level", args.log_level, "--log-format", args.log_format]
    if args.queues:
        argv += ["--queues", args.queues]
    if args.broker:
        argv += ["--broker", args.broker]
    if args.lease is not None:
        argv += ["--lease", str(args.lease)]
    argv += ["--max-abandoned-threads", str(args.max_abandoned_threads)]
    return argv + health_worker_argv(args)


def cmd_check(args: argparse.Namespace) -> int:
    from vaultq.checks import check_app
    from vaultq.deps import dependency_report, dependency_summary

    app = load_cli_app(args.app, args.broker)
    findings = check_app(app, deploy=args.deploy)
    findings += _revoked_backlog(app)
    findings += _clock(app)
    errors = sum(1 for f in findings if f.level == "error")
    if args.json:
        print_json(
            {
                "app": app.name,
                "errors": errors,
                "findings": [
                    {"level": f.level, "code": f.code, "message": f.message} for f in findings
                ],
                "dependencies": [
                    {
                        "package": r.package,
                        "installed": r.installed,
                        "minimum": r.minimum,
                        "ok": r.ok,
                        "reason": r.reason,
                    }
                    for r in dependency_report()
                ],
            }
        )
    else:
        print(dependency_summary())
        for finding in findings:
            print(finding)
        print(f"{len(findings)} finding(s), {errors} error(s) for app {app.name}")
    return EXIT_NO if errors else EXIT_OK


def _revoked_backlog(app: Any) -> list[Any]:
    """VQ104 findings: jobs still queued under revoked keys (an existing broker only)."""
    from vaultq.checks import has_revoked_keys, revoked_backlog
    from vaultq.runtime.worker import _queues_of

    if not has_revoked_keys(app):
        return []
    try:
        existing_broker(app)
    except VaultqError:
        return []  # no database yet: nothing can be queued

    async def go() -> list[Any]:
        try:
            return await revoked_backlog(app, _queues_of(app))
        finally:
            await app.aclose()

    return anyio.run(go)


def _clock(app: Any) -> list[Any]:
    """VQ204 findings: this host's clock against a shared broker's (the embedded broker
    runs on this host's clock)."""
    from vaultq.checks import clock_findings

    try:
        if not app.shared_broker:
            return []
    except VaultqError:
        return []

    async def go() -> list[Any]:
        try:
            return await clock_findings(app)
        except VaultqError:
            return []  # an unreachable broker is reported by the worker and enqueue
        finally:
            await app.aclose()

    return anyio.run(go)


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaultq",
        description="vaultq: a hardened job queue. Typed payloads, sealed envelopes, "
        "policies before dispatch, deadlines that stop jobs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vaultq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run jobs of the app's tasks until SIGTERM/SIGINT. The first signal stops "
        "fetching and lets running jobs finish within --grace; a second hands them back.",
    )
    add_common(w)
    w.add_argument("--queues", help="comma-separated queues, earlier first (default: all)")
    w.add_argument(
        "--concurrency",
        type=positive_int,
        default=config.DEFAULT_CONCURRENCY,
        help=f"jobs at once per process (default {config.DEFAULT_CONCURRENCY})",
    )
    w.add_argument(
        "--processes", type=positive_int, default=1, help="supervised worker processes (1)"
    )
    w.add_argument(
        "--grace",
        type=seconds,
        default=config.DEFAULT_GRACE,
        help=f"seconds to let running jobs finish at shutdown (default {config.DEFAULT_GRACE:g})",
    )
    w.add_argument(
        "--lease",
        type=positive_seconds,
        default=None,
        help="seconds a job stays leased without renewal; a dead worker's jobs come back "
        f"after it (default {config.DEFAULT_LEASE:g})",
    )
    w.add_argument(
        "--max-abandoned-threads",
        type=positive_int,
        default=config.DEFAULT_MAX_ABANDONED_THREADS,
        help="sync jobs past their deadline whose threads still run; beyond this, sync jobs "
        f"are handed back until some finish (default {config.DEFAULT_MAX_ABANDONED_THREADS})",
    )
    add_health_worker_options(w)
    w.set_defaults(func=cmd_worker)

    add_jobs_parsers(sub)
    add_dead_parser(sub)
    add_monitor_parsers(sub)

    k = sub.add_parser(
        "check",
        help="look for unsafe configuration",
        description="Check keys, broker URL and policies. --deploy adds production checks: "
        "plaintext Redis off this host, tasks relying on the default policy. Exit 1 on errors.",
    )
    add_common(k)
    k.add_argument("--deploy", action="store_true", help="also run the production checks")
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.set_defaults(func=cmd_check)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    from vaultq.cli_keys import add_keys_parser

    add_keys_parser(sub)
    add_health_parser(sub)
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
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    try:
        result: int = args.func(args)
        return result
    except VaultqError as exc:
        print(f"vaultq: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BaseExceptionGroup as group:
        # errors raised inside the worker's task group arrive wrapped
        matched, rest = group.split(VaultqError)
        if matched is None or rest is not None:
            raise
        for leaf in _leaves(matched):
            print(f"vaultq: error: {leaf}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("vaultq: interrupted", file=sys.stderr)
        return 130


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
