"""``vaultq dashboard MODULE`` (serve the web dashboard) and ``vaultq dashboard
hash-password`` (make a password hash for its users file). Extra ``vaultq[dashboard]``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from vaultq.cli_common import EXIT_OK, add_common, existing_broker, load_cli_app
from vaultq.errors import ConfigurationError

__all__ = ["add_dashboard_parser", "cmd_dashboard"]


def _bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8765)")
    return host.strip("[]"), int(port)


def _hash_password() -> int:
    from vaultq.dashboard.auth import hash_password

    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise ConfigurationError("the two passwords differ; nothing printed")
    else:
        first = sys.stdin.readline().rstrip("\n")
    print(hash_password(first))
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    if args.app == "hash-password":
        return _hash_password()
    try:
        from vaultq.dashboard.server import check_bind, serve
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            f"the dashboard needs the dashboard extra: pip install 'vaultq[dashboard]' ({exc})"
        ) from None
    from vaultq.dashboard.auth import USERS_ENV, load_users

    host, port = args.bind
    tls = bool(args.tls_cert and args.tls_key)
    # Before loading anything: a refused bind should fail fast and say why.
    check_bind(host, tls=tls, behind_tls_proxy=args.behind_tls_proxy)
    users = load_users(args.users, os.environ.get(USERS_ENV))
    key = None
    if args.session_key_file:
        key = Path(args.session_key_file).read_bytes().strip()
        if len(key) < 32:
            raise ConfigurationError("--session-key-file must hold at least 32 bytes of secret")
    app = existing_broker(load_cli_app(args.app, args.broker))
    serve(
        app,
        users,
        host=host,
        port=port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        behind_tls_proxy=args.behind_tls_proxy,
        allow_decrypt=args.allow_decrypt,
        session_key=key,
    )
    return EXIT_OK


def add_dashboard_parser(sub: Any) -> None:
    d = sub.add_parser(
        "dashboard",
        help="serve the web dashboard (extra vaultq[dashboard]); hash-password for its users",
        description="Serve a read-mostly web dashboard of the app: queues, throughput, workers, "
        "jobs, dead letters (retry/purge with confirmation, audited), schedules. Sign-in "
        "required: users from --users FILE or $VAULTQ_DASHBOARD_USERS (NAME:PERMISSIONS:HASH "
        "lines; `vaultq dashboard hash-password` makes a HASH from stdin). Payloads and "
        "results are never shown unless --allow-decrypt. Plain HTTP only on loopback.",
    )
    add_common(d)
    d.add_argument(
        "--bind", type=_bind, default=("127.0.0.1", 8765), help="HOST:PORT (127.0.0.1:8765)"
    )
    d.add_argument("--users", metavar="FILE", help="users file (mode 600)")
    d.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    d.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    d.add_argument(
        "--behind-tls-proxy",
        action="store_true",
        help="allow plain HTTP on a non-loopback address: a proxy in front terminates TLS",
    )
    d.add_argument(
        "--allow-decrypt",
        action="store_true",
        help="let users with the 'decrypt' permission see a job's result (Secrets masked; "
        "audited per view)",
    )
    d.add_argument(
        "--session-key-file",
        metavar="FILE",
        help="secret for session cookies shared by replicas (default: random per process)",
    )
    d.set_defaults(func=cmd_dashboard)
