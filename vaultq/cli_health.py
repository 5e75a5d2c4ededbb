"""``vaultq health``: exit 0 when the worker(s) in question beat recently.

Two signals, one command:

* **broker heartbeats** (``vaultq health APP`` or any of ``--pid``/``--host``/
  ``--worker``/``--any``/``--broker``): the beats every worker writes into the broker,
  the ones ``vaultq status`` and ``vaultq workers`` show (:func:`vaultq.monitor.worker_health`);
* **the heartbeat file** (bare ``vaultq health``, or ``--health-file``): the file a
  worker on this machine rewrites (:mod:`vaultq.runtime.health`). It stays the default
  without an app, so an existing ``HEALTHCHECK CMD ["vaultq", "health"]`` keeps working.

The worker's ``--health-file``/``--health-interval`` are :class:`WorkerSettings` fields
(``cli_worker``).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

import anyio

from vaultq.cli_common import EXIT_NO, EXIT_OK, add_common, existing_broker, load_cli_app
from vaultq.errors import BrokerError, VaultqError
from vaultq.options import options_of
from vaultq.runtime.health import check_health, default_health_file
from vaultq.settings import WorkerSettings, environment

__all__ = ["add_health_parser", "cmd_health"]

# The same text as the worker's --health-file (declared on WorkerSettings).
_FILE_HELP = next(o.help for o in options_of(WorkerSettings) if o.name == "health_file")
_BROKER_FLAGS = ("pid", "host", "worker", "any_worker")


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


def _pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if value < 1:
        raise argparse.ArgumentTypeError("a process id is at least 1")
    return value


def _from_broker(args: argparse.Namespace) -> bool:
    chosen = [f for f in _BROKER_FLAGS if getattr(args, f) not in (None, False)]
    if args.health_file is not None:
        if chosen or args.app or args.broker:
            raise VaultqError(
                "--health-file reads the heartbeat file; APP, --broker, --pid, --host, "
                "--worker and --any read the broker's heartbeats: choose one"
            )
        return False
    return bool(chosen or args.app or args.broker)


def _broker_health(args: argparse.Namespace) -> tuple[bool, str]:
    from vaultq.monitor import worker_health

    app = existing_broker(load_cli_app(args.app, args.broker))

    async def go() -> tuple[bool, str]:
        try:
            # A probe must answer, not hang on a broker that does not.
            with anyio.fail_after(args.timeout):
                verdict = await worker_health(
                    app,
                    worker=args.worker,
                    host=args.host,
                    pid=args.pid,
                    any_worker=args.any_worker,
                    max_age=args.max_age,
                )
            return verdict.healthy, verdict.line
        except TimeoutError:
            return False, (
                f"unhealthy: the broker did not answer within {args.timeout:g} s "
                "(raise --timeout, or check the broker)"
            )
        except BrokerError as exc:
            return False, f"unhealthy: cannot read heartbeats from the broker: {exc}"
        finally:
            with anyio.CancelScope(shield=True):
                await app.aclose()

    return anyio.run(go)


def cmd_health(args: argparse.Namespace) -> int:
    if _from_broker(args):
        healthy, line = _broker_health(args)
    else:
        healthy, line = check_health(_path(args.health_file), args.max_age)
    print(line)
    return EXIT_OK if healthy else EXIT_NO


_DESCRIPTION = """\
Exit 0 when the worker(s) in question beat recently; exit 1 with one line saying why
otherwise. For container HEALTHCHECKs and Kubernetes liveness probes.

From the broker (vaultq health APP ..., or --pid/--host/--worker/--any/--broker with the
app from $VAULTQ_APP): the heartbeats every worker process writes into the broker from
its event loop, the ones `vaultq status` and `vaultq workers` show. By default the
workers on this host (socket.gethostname(), the pod name in Kubernetes): healthy when
at least one beat within three of its beat periods + 1 s (--max-age to change) and every
one that stopped beating -- killed, or alive but stuck (a blocked event loop, SIGSTOP)
-- was replaced by a worker started after its last beat. --pid narrows that to one
process; --worker NAME checks exactly that worker; --any is healthy when any worker of
the app beats, wherever it runs.

From the heartbeat file (bare `vaultq health`, or --health-file): the file a worker on
this machine rewrites every --health-interval seconds; no broker round trip."""


def add_health_parser(sub: Any) -> None:
    h = sub.add_parser(
        "health",
        help="exit 0 if the worker(s) beat recently (for HEALTHCHECK / Kubernetes probes)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(h)
    which = h.add_argument_group("which workers (broker heartbeats)")
    only_one = which.add_mutually_exclusive_group()
    only_one.add_argument(
        "--pid",
        type=_pid,
        default=None,
        help="only this worker process (on --host, default this host); e.g. 1 for the "
        "container's main process (not with --processes N: its children have other pids)",
    )
    only_one.add_argument(
        "--worker",
        default=None,
        metavar="NAME",
        help="exactly this worker (its name, <host>-<pid>-<random>, from `vaultq workers`)",
    )
    only_one.add_argument(
        "--any",
        dest="any_worker",
        action="store_true",
        help="healthy when any worker of the app beats recently, on any host",
    )
    which.add_argument(
        "--host",
        default=None,
        help=f"the workers on this host name instead (default: this host, {socket.gethostname()})",
    )
    which.add_argument(
        "--timeout",
        type=_interval,
        default=5.0,
        metavar="S",
        help="seconds to wait for the broker before answering unhealthy (default 5)",
    )
    h.add_argument(
        "--health-file",
        default=None,
        metavar="PATH",
        help=f"read the worker's heartbeat file, not the broker: {_FILE_HELP}",
    )
    h.add_argument(
        "--max-age",
        type=_interval,
        default=None,
        metavar="S",
        help="seconds a beat may be old (default: 3 x the worker's beat period + 1)",
    )
    h.set_defaults(func=cmd_health)
