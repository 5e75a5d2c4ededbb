"""``vaultq`` command line: the parser, ``main`` and ``check``.

The other commands live beside it, one module per group: ``cli_worker`` (the worker,
its flags generated from ``vaultq.settings.WorkerSettings``, and the supervisor's
children), ``cli_jobs`` (enqueue, job, cancel, status), ``cli_dead`` (dead letters),
``cli_keys`` (keyrings); shared argument types, app loading and the exit codes are in
``cli_common``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from vaultq import __version__
from vaultq.cli_common import (
    EXIT_NO,
    EXIT_OK,
    add_common,
    existing_broker,
    guarded,
    load_cli_app,
    print_json,
)
from vaultq.cli_dead import add_dead_parser
from vaultq.cli_health import add_health_parser
from vaultq.cli_jobs import add_jobs_parsers
from vaultq.cli_monitor import add_monitor_parsers
from vaultq.cli_worker import add_worker_parser
from vaultq.errors import VaultqError
from vaultq.logs import setup_logging

__all__ = ["build_parser", "cmd_check", "main"]

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

    if not has_revoked_keys(app):
        return []
    try:
        existing_broker(app)
    except VaultqError:
        return []  # no database yet: nothing can be queued

    async def go() -> list[Any]:
        try:
            return await revoked_backlog(app, app.queues)
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

    add_worker_parser(sub)
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
    from vaultq.cli_dashboard import add_dashboard_parser
    from vaultq.cli_keys import add_keys_parser
    from vaultq.cli_schedule import add_scheduler_parser
    from vaultq.demo import add_demo_parser

    add_keys_parser(sub)
    add_health_parser(sub)
    add_scheduler_parser(sub)
    add_dashboard_parser(sub)
    add_demo_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    return guarded(lambda: int(args.func(args)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
