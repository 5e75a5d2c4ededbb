"""``vaultq health``: is a worker's heartbeat fresh?

The worker's ``--health-file``/``--health-interval`` are :class:`WorkerSettings` fields
(``cli_worker``); the ``health`` command is :func:`add_health_parser`. The heartbeat
itself is :mod:`vaultq.runtime.health`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vaultq.options import options_of
from vaultq.runtime.health import check_health, default_health_file
from vaultq.settings import WorkerSettings, environment

__all__ = ["add_health_parser", "cmd_health"]

# The same text as the worker's --health-file (declared on WorkerSettings).
_FILE_HELP = next(o.help for o in options_of(WorkerSettings) if o.name == "health_file")


def _path(given: str | None) -> Path:
    text = given or environment().health_file
    return Path(text) if text else default_health_file()


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.05 and 3600 seconds")
    return value


def cmd_health(args: argparse.Namespace) -> int:
    healthy, line = check_health(_path(args.health_file), args.max_age)
    print(line)
    return 0 if healthy else 1


def add_health_parser(sub: Any) -> None:
    h = sub.add_parser(
        "health",
        help="exit 0 if a worker's heartbeat is fresh (for HEALTHCHECK / probes)",
        description="Read the heartbeat file a running `vaultq worker` refreshes from its "
        "event loop. Exit 0 when it is fresh; exit 1 with one line saying why otherwise "
        "(no file, stale beat: the loop is stuck or the process frozen, or its pid is gone).",
    )
    h.add_argument("--health-file", default=None, help=_FILE_HELP)
    h.add_argument(
        "--max-age",
        type=_interval,
        default=None,
        help="seconds a beat may be old (default: 3 x the worker's --health-interval + 1)",
    )
    h.set_defaults(func=cmd_health)
