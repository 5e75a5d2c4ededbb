"""``vaultq health`` and the worker's ``--health-file``/``--health-interval`` options.

Kept apart from ``cli.py``: the worker command calls :func:`add_health_worker_options`,
:func:`health_file_of` and :func:`health_worker_argv`; the ``health`` command is
:func:`add_health_parser`. The heartbeat itself is :mod:`vaultq.runtime.health`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vaultq.runtime.health import DEFAULT_INTERVAL, check_health, default_health_file, prepare

__all__ = ["add_health_parser", "add_health_worker_options", "health_file_of", "health_worker_argv"]

ENV_VAR = "VAULTQ_HEALTH_FILE"

_FILE_HELP = (
    "heartbeat file (default: $VAULTQ_HEALTH_FILE, else $XDG_RUNTIME_DIR/vaultq/worker.health "
    "or <tmp>/vaultq-<uid>/worker.health)"
)


def _path(given: str | None) -> Path:
    text = given or os.environ.get(ENV_VAR)
    return Path(text) if text else default_health_file()


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.05 and 3600 seconds")
    return value


def add_health_worker_options(worker: argparse.ArgumentParser) -> None:
    """``--health-file`` and ``--health-interval`` on ``vaultq worker``."""
    worker.add_argument("--health-file", default=None, help=_FILE_HELP)
    worker.add_argument(
        "--health-interval",
        type=_interval,
        default=DEFAULT_INTERVAL,
        help=f"seconds between heartbeats (default {DEFAULT_INTERVAL:g})",
    )


def health_file_of(args: argparse.Namespace) -> tuple[Path, float]:
    """The worker's heartbeat file (checked writable now) and interval."""
    path = _path(args.health_file)
    prepare(path)
    return path, float(args.health_interval)


def health_worker_argv(args: argparse.Namespace) -> list[str]:
    """The same options for the children of ``--processes N`` (they share the file)."""
    path = str(_path(args.health_file))
    return ["--health-file", path, "--health-interval", str(args.health_interval)]


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
