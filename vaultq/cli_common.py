"""What every ``vaultq`` command shares: argument types, app loading, exit codes, JSON.

Exit codes (the same meaning in every command that uses them; ``docs/cli.md`` lists
them per command):

====  ==========================================================================
0     done
1     done, but the answer is "no": ``check`` found errors, ``enqueue --wait``'s job
      ended without succeeding, ``dead retry`` refused some letters
2     error: bad arguments, unknown app/task/queue, broker or key problem
3     the job has not finished: ``cancel`` of a running job (cancel requested),
      ``enqueue --wait`` whose ``--timeout`` passed first
4     the job had already finished: ``cancel`` changed nothing
5     unknown job id: ``cancel``, ``job``, ``dead retry --id``
130   interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import msgspec

from vaultq.errors import VaultqError
from vaultq.options import options_of
from vaultq.settings import WorkerSettings, add_worker_flags, environment

__all__ = [
    "EXIT_ERROR",
    "EXIT_FINISHED",
    "EXIT_NO",
    "EXIT_OK",
    "EXIT_UNFINISHED",
    "EXIT_UNKNOWN",
    "add_common",
    "app_spec",
    "existing_broker",
    "guarded",
    "load_cli_app",
    "log_level",
    "positive_int",
    "positive_seconds",
    "print_json",
    "run_interruptibly",
    "seconds",
    "split_app_and_id",
]

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2
EXIT_UNFINISHED = 3
EXIT_FINISHED = 4
EXIT_UNKNOWN = 5

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of seconds >= 0")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def log_level(text: str) -> str:
    if text.upper() not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LOG_LEVELS)}")
    return text.upper()


def add_common(p: argparse.ArgumentParser, app_positional: bool = True) -> None:
    """The app positional (optional: ``$VAULTQ_APP``), ``--broker``, ``--log-level`` and
    ``--log-format``: the same flags, help and checks as ``vaultq worker``'s (declared
    once, on :class:`vaultq.settings.WorkerSettings`)."""
    common = ("app", "broker", "log_level", "log_format")
    skip = tuple(o.name for o in options_of(WorkerSettings) if o.name not in common)
    add_worker_flags(p, skip=skip if app_positional else (*skip, "app"))


def app_spec(spec: str | None) -> str | None:
    if spec:
        return spec
    env = environment()
    if env.app:
        return env.app
    if env.django_settings:
        return "vaultq.django"
    return None


def load_cli_app(spec: str | None, broker: str | None = None) -> Any:
    from vaultq.loader import load_app

    spec = app_spec(spec)
    if not spec:
        raise VaultqError(
            "name the app module: MODULE[:ATTR] (or set VAULTQ_APP, or DJANGO_SETTINGS_MODULE "
            "for the app configured in settings.VAULTQ)"
        )
    app = load_app(spec)
    if broker:
        app.set_broker(broker)
    return app


def existing_broker(app: Any) -> Any:
    """For read-only commands: refuse to create an empty embedded database on a typo."""
    path = getattr(app.configured_broker, "path", None)
    if path is not None and not path.exists():
        raise VaultqError(
            f"no vaultq database at {path}: check --broker / VAULTQ_BROKER and the "
            "working directory (this command does not create one)"
        )
    return app


def split_app_and_id(
    first: str, second: str | None, legacy_app: str | None, command: str
) -> tuple[str | None, str]:
    """``MODULE JOB_ID`` (like every command), ``JOB_ID`` (app from the environment) or
    the deprecated ``JOB_ID --app MODULE``."""
    if legacy_app is not None:
        if second is not None:
            raise VaultqError(
                f"give the app once: `vaultq {command} MODULE JOB_ID` (--app is deprecated)"
            )
        print(
            f"vaultq: note: --app is deprecated; use `vaultq {command} MODULE JOB_ID`",
            file=sys.stderr,
        )
        return legacy_app, first
    if second is None:
        return None, first
    return first, second


def print_json(value: Any) -> None:
    """One JSON document on stdout (for ``--json``)."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


T = TypeVar("T")


def guarded(command: Callable[[], int]) -> int:
    """Run a command: a ``VaultqError`` (also inside an exception group, as the worker's
    task group raises them) is one line on stderr and exit 2, Ctrl-C exit 130."""
    try:
        return command()
    except VaultqError as exc:
        print(f"vaultq: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BaseExceptionGroup as group:
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


def run_interruptibly(func: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(func)``, where Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` for sure.

    asyncio's own handling cancels the main task once; a library that swallows that one
    ``CancelledError`` (redis-py's blocking reads did, now and then) left ``enqueue --wait``
    waiting forever after Ctrl-C. A cancelled anyio scope cancels again at every await
    until ``func`` has unwound."""
    if threading.current_thread() is not threading.main_thread():
        return anyio.run(func)  # signal handlers can only be set in the main thread
    interrupted = False
    result: list[T] = []

    async def guarded() -> None:
        with anyio.CancelScope() as scope:

            def on_sigint() -> None:
                nonlocal interrupted
                interrupted = True
                scope.cancel()

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            try:
                result.append(await func())
            finally:
                loop.remove_signal_handler(signal.SIGINT)

    anyio.run(guarded)
    if interrupted or not result:
        raise KeyboardInterrupt
    return result[0]
