"""Settings objects: every option of an App and of a worker, declared once.

:class:`AppSettings` holds the options of ``vaultq.App(...)`` and :class:`WorkerSettings`
those of a worker process (``vaultq worker``, ``manage.py vaultq_worker``,
``Worker(...)``). Each field carries, next to it, its default, the rule a value must
meet and its help text (``Annotated[..., option(...)]``, see :mod:`vaultq.options`).
Everything else is generated from that:

- validation: constructing or decoding a settings object checks every field and raises
  :class:`vaultq.ConfigurationError` naming the option and what to do;
- the ``vaultq worker`` flags and the ``manage.py vaultq_worker`` options
  (:func:`add_worker_flags`): one new worker option is one new field here;
- the ``--processes N`` supervisor hands its children a ``WorkerSettings``, encoded as
  JSON, instead of an argument list rebuilt by hand;
- ``docs/configuration.md`` is checked against the fields (``tests/test_settings.py``).

Environment variables are read at the edges only, through :func:`environment`: the
``vaultq`` command line, the Django settings reader, and ``App`` itself when its caller
gave neither the option nor a settings object (the documented ``App("shop")`` +
``$VAULTQ_BROKER`` form). Nothing deeper in the core looks at ``os.environ`` for them.

Task options left unset fall back to the app's defaults through :data:`UNSET` (the
``msgspec`` sentinel, as httpx's ``USE_CLIENT_DEFAULT``): a task stores "not given",
never a copy of the default, so changing ``app.settings`` later reaches every task that
did not set the option itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from vaultq import config
from vaultq.errors import ConfigurationError
from vaultq.options import (
    OptionInfo,
    add_flags,
    check_fields,
    option,
    options_of,
    values_from_flags,
)

__all__ = [
    "UNSET",
    "AppSettings",
    "Environment",
    "OptionInfo",
    "UnsetType",
    "WorkerSettings",
    "add_worker_flags",
    "environment",
    "options_of",
    "settings_from_flags",
]

UNSET = msgspec.UNSET
"""An option not given: it takes the app's (or the worker's) default when it is read."""
UnsetType = msgspec.UnsetType

ENV_BROKER = "VAULTQ_BROKER"
ENV_KEYS = "VAULTQ_KEYS"
ENV_APP = "VAULTQ_APP"
ENV_HEALTH_FILE = "VAULTQ_HEALTH_FILE"


# -- the App's options -----------------------------------------------------------------


class AppSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The options of ``vaultq.App`` (all but ``name``, and the objects that are not
    plain values: a ``Broker`` instance, ``keyring``, ``default_policy``, middleware).

    ``App("shop", settings=AppSettings(timeout=60))`` and ``App("shop", timeout=60)``
    are the same App; keyword arguments given beside ``settings`` win over it.
    Task options (``timeout``, ``retries``, ``expires``, ``backoff``, ``max_backoff``,
    ``result_ttl``, ``queue``) are the defaults of tasks that leave them unset.
    """

    broker: Annotated[
        str | None,
        option(
            f"broker URL; None: ${ENV_BROKER}, else {config.DEFAULT_BROKER_URL} in the "
            "working directory. A Broker instance goes to App(broker=...) instead",
            secret_value=True,
        ),
    ] = None
    queue: Annotated[
        str, option("queue of tasks that set none; letters, digits, '-', '_'", name_like=True)
    ] = config.DEFAULT_QUEUE
    clock_skew: Annotated[
        float,
        option(
            "tolerance between a producer's clock and the broker's for not-before and "
            "expiry checks; hosts more than half of it off get a warning",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_CLOCK_SKEW
    max_envelope_size: Annotated[
        int,
        option("bytes; larger envelopes are rejected before any parsing", at_least=1024),
    ] = config.DEFAULT_MAX_ENVELOPE_SIZE
    policy_timeout: Annotated[
        float,
        option("a policy slower than this denies (fail closed)", above=0, seconds=True),
    ] = config.DEFAULT_POLICY_TIMEOUT
    lease: Annotated[
        float,
        option(
            "how long a fetched job stays leased without renewal (on the broker's clock); "
            "renewed every lease/5, an attempt not renewed for 0.7 x lease is cancelled",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_LEASE
    enqueue_retry: Annotated[
        float,
        option(
            "seconds enqueue retries a briefly unavailable broker before it raises "
            "BrokerUnavailable; 0 disables",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_ENQUEUE_RETRY
    envelope_version: Annotated[
        int,
        option(
            "format new jobs are sealed with: 2 (XAES-256-GCM); 1 only while some workers "
            "read only v1 (needs accept_envelope_v1)",
            choices=(1, 2),
        ),
    ] = config.DEFAULT_ENVELOPE_VERSION
    accept_envelope_v1: Annotated[
        bool,
        option("read v1 jobs and results (the migration window); False refuses them"),
    ] = config.DEFAULT_ACCEPT_ENVELOPE_V1
    batch_signatures: Annotated[
        bool,
        option(
            "sign the jobs of one enqueue_many call with ONE ed25519 signature over a Merkle "
            "root (docs/envelope.md, Batch signatures); upgrade every worker first"
        ),
    ] = config.DEFAULT_BATCH_SIGNATURES
    timeout: Annotated[
        float,
        option("default for tasks: seconds one attempt may run", above=0, seconds=True),
    ] = config.DEFAULT_TIMEOUT
    retries: Annotated[
        int,
        option(
            "default for tasks: retries after the first attempt (0: a retry repeats the "
            "failed attempt's side effects, so tasks opt in once idempotent)",
            at_least=0,
        ),
    ] = config.DEFAULT_RETRIES
    expires: Annotated[
        float,
        option(
            "default for tasks: latest start, counted from the job's not-before time",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_EXPIRES
    backoff: Annotated[
        float,
        option(
            "default for tasks: base of the exponential retry backoff (full jitter)",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_BACKOFF
    max_backoff: Annotated[
        float,
        option("default for tasks: cap of one backoff wait", at_least=0, seconds=True),
    ] = config.DEFAULT_MAX_BACKOFF
    result_ttl: Annotated[
        float,
        option("default for tasks: how long results are kept", above=0, seconds=True),
    ] = config.DEFAULT_RESULT_TTL

    def __post_init__(self) -> None:
        check_fields(self)
        if self.envelope_version == 1 and not self.accept_envelope_v1:
            raise ConfigurationError(
                "AppSettings.envelope_version must be 2 (or 1 during a migration, which "
                "needs accept_envelope_v1=True)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AppSettings:
        """``AppSettings(**options)`` with ``broker`` from ``$VAULTQ_BROKER`` when not
        given (an edge helper: the core never reads the environment itself)."""
        env = environment(environ)
        if options.get("broker") is None and env.broker:
            options["broker"] = env.broker
        return cls(**options)


# -- the worker's options --------------------------------------------------------------

_HEALTH_FILE_HELP = (
    f"heartbeat file (default: ${ENV_HEALTH_FILE}, else $XDG_RUNTIME_DIR/vaultq/worker.health "
    "or <tmp>/vaultq-<uid>/worker.health)"
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
LOOPS = ("asyncio", "uvloop")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The options of one worker process; every field is a ``vaultq worker`` flag and a
    ``manage.py vaultq_worker`` option (their help is the text below)."""

    app: Annotated[
        str | None,
        option(
            f"module defining your vaultq.App (default: ${ENV_APP}, or the Django "
            "settings' app when DJANGO_SETTINGS_MODULE is set)",
            metavar="MODULE[:ATTR]",
            positional=True,
        ),
    ] = None
    broker: Annotated[
        str | None,
        option(
            f"broker URL (overrides the app's and ${ENV_BROKER})",
            flag="--broker",
            metavar="URL",
            secret_value=True,
        ),
    ] = None
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        option(
            "DEBUG, INFO, WARNING, ERROR (default INFO)",
            flag="--log-level",
            metavar="LEVEL",
            choices=LOG_LEVELS,
        ),
    ] = "INFO"
    log_format: Annotated[
        Literal["text", "json"],
        option(
            "text (default) or json: one JSON object per line (time in UTC, level, logger, "
            "message, job_id, task, queue, attempt, outcome)",
            flag="--log-format",
            metavar="{text,json}",
            choices=LOG_FORMATS,
        ),
    ] = "text"
    queues: Annotated[
        tuple[str, ...],
        option(
            "comma-separated queues, earlier first (default: all)",
            flag="--queues",
            metavar="Q1,Q2",
            name_like=True,
        ),
    ] = ()
    concurrency: Annotated[
        int | None,
        option(
            "jobs at once per process (default "
            f"{config.DEFAULT_ASYNC_CONCURRENCY} when every task is async, else "
            f"{config.DEFAULT_CONCURRENCY})",
            flag="--concurrency",
            metavar="N",
            at_least=1,
        ),
    ] = None
    processes: Annotated[
        int,
        option("supervised worker processes (1)", flag="--processes", metavar="N", at_least=1),
    ] = 1
    grace: Annotated[
        float,
        option(
            f"seconds to let running jobs finish at shutdown (default {config.DEFAULT_GRACE:g})",
            flag="--grace",
            metavar="S",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_GRACE
    lease: Annotated[
        float | None,
        option(
            "seconds a job stays leased without renewal; a dead worker's jobs come back "
            f"after it (default: the app's lease, {config.DEFAULT_LEASE:g})",
            flag="--lease",
            metavar="S",
            above=0,
            seconds=True,
        ),
    ] = None
    max_abandoned_threads: Annotated[
        int,
        option(
            "sync jobs past their deadline whose threads still run; beyond this, sync jobs "
            f"are handed back until some finish (default {config.DEFAULT_MAX_ABANDONED_THREADS})",
            flag="--max-abandoned-threads",
            metavar="N",
            at_least=1,
        ),
    ] = config.DEFAULT_MAX_ABANDONED_THREADS
    stall_warning: Annotated[
        float,
        option(
            "seconds a job may block the event loop before a warning names it "
            f"(default {config.DEFAULT_STALL_WARNING:g})",
            flag="--stall-warning",
            metavar="S",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_STALL_WARNING
    health_file: Annotated[
        str | None, option(_HEALTH_FILE_HELP, flag="--health-file", metavar="PATH")
    ] = None
    health_interval: Annotated[
        float,
        option(
            f"seconds between heartbeats (default {config.DEFAULT_HEALTH_INTERVAL:g})",
            flag="--health-interval",
            metavar="S",
            at_least=0.05,
            at_most=3600,
            seconds=True,
        ),
    ] = config.DEFAULT_HEALTH_INTERVAL
    metrics_port: Annotated[
        int | None,
        option(
            "serve Prometheus metrics on http://ADDRESS:PORT/metrics (needs vaultq[metrics]); "
            "with --processes N the supervisor serves the sum of its processes on this port",
            flag="--metrics-port",
            metavar="PORT",
            at_least=1,
            at_most=65535,
        ),
    ] = None
    metrics_address: Annotated[
        str,
        option(
            "address the metrics server binds (default 127.0.0.1; 0.0.0.0 in a container "
            "scraped from outside)",
            flag="--metrics-address",
            metavar="ADDRESS",
        ),
    ] = "127.0.0.1"
    events: Annotated[
        bool,
        option(
            "append job events to the broker's bounded event stream (`vaultq events`)",
            flag="--events",
        ),
    ] = False
    loop: Annotated[
        Literal["asyncio", "uvloop"],
        option(
            "event loop: asyncio (default) or uvloop (needs vaultq[fast]; less CPU per job, "
            "see docs/performance.md)",
            flag="--loop",
            metavar="{asyncio,uvloop}",
            choices=LOOPS,
        ),
    ] = "asyncio"

    def __post_init__(self) -> None:
        check_fields(self)


# -- the environment (read at the edges only) ------------------------------------------


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    """The documented ``VAULTQ_*`` variables, read in one place."""

    broker: str | None = None
    keys: str | None = None
    """The keyring JSON itself, or ``@/path/to/keyfile``."""
    app: str | None = None
    health_file: str | None = None
    django_settings: str | None = None


def environment(environ: Mapping[str, str] | None = None) -> Environment:
    """Read the ``VAULTQ_*`` variables (and ``DJANGO_SETTINGS_MODULE``); empty = unset."""
    env = os.environ if environ is None else environ
    return Environment(
        broker=env.get(ENV_BROKER) or None,
        keys=env.get(ENV_KEYS) or None,
        app=env.get(ENV_APP) or None,
        health_file=env.get(ENV_HEALTH_FILE) or None,
        django_settings=env.get("DJANGO_SETTINGS_MODULE") or None,
    )


# -- command-line generation (vaultq.options does the work) ---------------------------


def add_worker_flags(
    parser: argparse.ArgumentParser,
    *,
    skip: tuple[str, ...] = (),
    defaults_from_settings: bool = True,
) -> None:
    """Add one flag per :class:`WorkerSettings` field (but ``skip``) to ``parser``; see
    :func:`vaultq.options.add_flags`."""
    add_flags(parser, WorkerSettings, skip=skip, defaults_from_settings=defaults_from_settings)


def settings_from_flags(
    args: argparse.Namespace, *, base: WorkerSettings | None = None, **fixed: Any
) -> WorkerSettings:
    """A :class:`WorkerSettings` from parsed flags: values given (not None) win over
    ``base`` (defaults), then ``fixed`` over both."""
    values = {**values_from_flags(args, WorkerSettings), **fixed}
    if base is None:
        return WorkerSettings(**values)
    return msgspec.structs.replace(base, **values)
