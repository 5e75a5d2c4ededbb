"""Settings objects: every option of an App and of a worker, declared once.

:class:`AppSettings` holds the options of ``vaultq.App(...)`` and :class:`WorkerSettings`
those of a worker process (``vaultq worker``, ``manage.py vaultq_worker``,
``Worker(...)``). Each field carries, next to it, its default, the rule a value must
meet and its help text (a ``msgspec.Meta``). Everything else is generated from that:

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
import math
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from vaultq import config
from vaultq.errors import ConfigurationError

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


def _option(
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple[Any, ...] | None = None,
    seconds: bool = False,
    name_like: bool = False,
    positional: bool = False,
    secret_value: bool = False,
) -> msgspec.Meta:
    """The one declaration of an option: its help, its rule, its flag."""
    extra: dict[str, Any] = {"seconds": seconds}
    for key, value in (
        ("flag", flag),
        ("metavar", metavar),
        ("at_least", at_least),
        ("above", above),
        ("at_most", at_most),
        ("choices", choices),
    ):
        if value is not None:
            extra[key] = value
    extra["name_like"] = name_like
    extra["positional"] = positional
    extra["secret_value"] = secret_value
    return msgspec.Meta(description=help, extra=extra)


@dataclass(frozen=True)
class OptionInfo:
    """One field of a settings class, as the generators see it."""

    name: str
    help: str
    default: Any
    kind: type
    """``int``, ``float``, ``bool``, ``str`` or ``tuple`` (of str)."""
    optional: bool
    """``None`` is allowed (it means "take the default from elsewhere")."""
    flag: str | None
    metavar: str | None
    at_least: float | None
    above: float | None
    at_most: float | None
    choices: tuple[Any, ...] | None
    seconds: bool
    name_like: bool
    positional: bool
    secret_value: bool

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks this option's rule (a phrase after "it"), or None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be a whole number"
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "must be a number" + (" of seconds" if self.seconds else "")
            if not math.isfinite(value):
                what = "must be a finite number" + (" of seconds" if self.seconds else "")
                if self.at_least is not None and self.at_most is None:
                    return f"{what} >= {self.at_least:g}"
                if self.above is not None:
                    return f"{what} > {self.above:g}"
                return self._range_problem(value) or what
        elif self.kind is str:
            if not isinstance(value, str):
                return "must be a string"
            if self.name_like and not _is_name(value):
                return "must be a non-empty name of letters, digits, '-' and '_'"
        elif self.kind is tuple:
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                return "must be a tuple of names"
            if self.name_like and not all(_is_name(v) for v in value):
                return "must hold names of letters, digits, '-' and '_'"
        if self.choices is not None and value not in self.choices:
            return "must be one of " + ", ".join(str(c) for c in self.choices)
        return self._range_problem(value)

    def _range_problem(self, value: Any) -> str | None:
        unit = " seconds" if self.seconds else ""
        lo, hi = self.at_least, self.at_most
        if lo is not None and hi is not None and not lo <= value <= hi:
            return f"must be between {lo:g} and {hi:g}{unit}"
        if lo is not None and not value >= lo:
            if self.seconds:
                return f"must be a finite number of seconds >= {lo:g}"
            return f"must be at least {lo:g}"
        if self.above is not None and not value > self.above:
            return f"must be more than {self.above:g}{unit}"
        return None

    def parse(self, text: str) -> Any:
        """A command-line value: parsed, then checked by the same rule as the field.
        Raises ``argparse.ArgumentTypeError`` (argparse prints it and exits 2)."""
        value: Any
        if self.kind is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        elif self.kind is float:
            try:
                value = float(text)
            except ValueError:
                what = "a number of seconds" if self.seconds else "a number"
                raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        elif self.kind is tuple:
            value = tuple(q for q in text.split(",") if q)
        elif self.choices is not None:
            # Case-insensitive where the choices are upper-case words (log levels).
            value = text.upper() if text.upper() in self.choices else text
            if value not in self.choices:
                shown = ", ".join(str(c) for c in self.choices)
                raise argparse.ArgumentTypeError(f"{text!r} is not one of {shown}")
        else:
            value = text
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value


def _is_name(text: str) -> bool:
    return bool(text) and text.replace("-", "").replace("_", "").isalnum() and text.isascii()


def options_of(cls: type[msgspec.Struct]) -> list[OptionInfo]:
    """The fields of a settings class with their declared help and rules, in order."""
    found = _OPTIONS.get(cls)
    if found is None:
        found = _OPTIONS[cls] = list(_read_options(cls))
    return found


_OPTIONS: dict[type, list[OptionInfo]] = {}


def _read_options(cls: type[msgspec.Struct]) -> Iterator[OptionInfo]:
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = dict(
        zip(
            cls.__struct_fields__[len(cls.__struct_fields__) - len(cls.__struct_defaults__) :],
            cls.__struct_defaults__,
            strict=True,
        )
    )
    for name in cls.__struct_fields__:
        hint = hints[name]
        if typing.get_origin(hint) is not Annotated:
            raise TypeError(f"{cls.__name__}.{name} has no help text")  # a bug here, not user input
        inner, meta = typing.get_args(hint)[0], typing.get_args(hint)[1]
        base, optional = inner, False
        if isinstance(inner, types.UnionType) or typing.get_origin(inner) is typing.Union:
            members = typing.get_args(inner)
            optional = type(None) in members
            base = next(a for a in members if a is not type(None))
        if typing.get_origin(base) is Literal:
            kind: type = type(typing.get_args(base)[0])
        elif typing.get_origin(base) is tuple:
            kind = tuple
        else:
            kind = base
        extra = meta.extra or {}
        yield OptionInfo(
            name=name,
            help=meta.description or "",
            default=defaults[name],
            kind=kind,
            optional=optional,
            flag=extra.get("flag"),
            metavar=extra.get("metavar"),
            at_least=extra.get("at_least"),
            above=extra.get("above"),
            at_most=extra.get("at_most"),
            choices=extra.get("choices"),
            seconds=bool(extra.get("seconds")),
            name_like=bool(extra.get("name_like")),
            positional=bool(extra.get("positional")),
            secret_value=bool(extra.get("secret_value")),
        )


def _validate(settings: msgspec.Struct) -> None:
    """Check every field of ``settings`` against its declared rule."""
    cls = type(settings)
    for option in options_of(cls):
        value = getattr(settings, option.name)
        problem = option.problem(value)
        if problem is not None:
            shown = "" if option.secret_value or isinstance(value, str) else f" (got {value!r})"
            where = f" ({option.flag})" if option.flag else ""
            raise ConfigurationError(
                f"{cls.__name__}.{option.name}{where} {problem}{shown}: fix the value where "
                "it is set (docs/configuration.md lists every option)"
            )


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
        _option(
            f"broker URL; None: ${ENV_BROKER}, else {config.DEFAULT_BROKER_URL} in the "
            "working directory. A Broker instance goes to App(broker=...) instead",
            secret_value=True,
        ),
    ] = None
    queue: Annotated[
        str, _option("queue of tasks that set none; letters, digits, '-', '_'", name_like=True)
    ] = config.DEFAULT_QUEUE
    clock_skew: Annotated[
        float,
        _option(
            "tolerance between a producer's clock and the broker's for not-before and "
            "expiry checks; hosts more than half of it off get a warning",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_CLOCK_SKEW
    max_envelope_size: Annotated[
        int,
        _option("bytes; larger envelopes are rejected before any parsing", at_least=1024),
    ] = config.DEFAULT_MAX_ENVELOPE_SIZE
    policy_timeout: Annotated[
        float,
        _option("a policy slower than this denies (fail closed)", above=0, seconds=True),
    ] = config.DEFAULT_POLICY_TIMEOUT
    lease: Annotated[
        float,
        _option(
            "how long a fetched job stays leased without renewal (on the broker's clock); "
            "renewed every lease/5, an attempt not renewed for 0.7 x lease is cancelled",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_LEASE
    enqueue_retry: Annotated[
        float,
        _option(
            "seconds enqueue retries a briefly unavailable broker before it raises "
            "BrokerUnavailable; 0 disables",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_ENQUEUE_RETRY
    envelope_version: Annotated[
        int,
        _option(
            "format new jobs are sealed with: 2 (XAES-256-GCM); 1 only while some workers "
            "read only v1 (needs accept_envelope_v1)",
            choices=(1, 2),
        ),
    ] = config.DEFAULT_ENVELOPE_VERSION
    accept_envelope_v1: Annotated[
        bool,
        _option("read v1 jobs and results (the migration window); False refuses them"),
    ] = config.DEFAULT_ACCEPT_ENVELOPE_V1
    timeout: Annotated[
        float,
        _option("default for tasks: seconds one attempt may run", above=0, seconds=True),
    ] = config.DEFAULT_TIMEOUT
    retries: Annotated[
        int,
        _option(
            "default for tasks: retries after the first attempt (0: a retry repeats the "
            "failed attempt's side effects, so tasks opt in once idempotent)",
            at_least=0,
        ),
    ] = config.DEFAULT_RETRIES
    expires: Annotated[
        float,
        _option(
            "default for tasks: latest start, counted from the job's not-before time",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_EXPIRES
    backoff: Annotated[
        float,
        _option(
            "default for tasks: base of the exponential retry backoff (full jitter)",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_BACKOFF
    max_backoff: Annotated[
        float,
        _option("default for tasks: cap of one backoff wait", at_least=0, seconds=True),
    ] = config.DEFAULT_MAX_BACKOFF
    result_ttl: Annotated[
        float,
        _option("default for tasks: how long results are kept", above=0, seconds=True),
    ] = config.DEFAULT_RESULT_TTL

    def __post_init__(self) -> None:
        _validate(self)
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


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The options of one worker process; every field is a ``vaultq worker`` flag and a
    ``manage.py vaultq_worker`` option (their help is the text below)."""

    app: Annotated[
        str | None,
        _option(
            f"module defining your vaultq.App (default: ${ENV_APP}, or the Django "
            "settings' app when DJANGO_SETTINGS_MODULE is set)",
            metavar="MODULE[:ATTR]",
            positional=True,
        ),
    ] = None
    broker: Annotated[
        str | None,
        _option(
            f"broker URL (overrides the app's and ${ENV_BROKER})",
            flag="--broker",
            metavar="URL",
            secret_value=True,
        ),
    ] = None
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        _option(
            "DEBUG, INFO, WARNING, ERROR (default INFO)",
            flag="--log-level",
            metavar="LEVEL",
            choices=LOG_LEVELS,
        ),
    ] = "INFO"
    log_format: Annotated[
        Literal["text", "json"],
        _option(
            "text (default) or json: one JSON object per line (time in UTC, level, logger, "
            "message, job_id, task, queue, attempt, outcome)",
            flag="--log-format",
            metavar="{text,json}",
            choices=LOG_FORMATS,
        ),
    ] = "text"
    queues: Annotated[
        tuple[str, ...],
        _option(
            "comma-separated queues, earlier first (default: all)",
            flag="--queues",
            metavar="Q1,Q2",
            name_like=True,
        ),
    ] = ()
    concurrency: Annotated[
        int,
        _option(
            f"jobs at once per process (default {config.DEFAULT_CONCURRENCY})",
            flag="--concurrency",
            metavar="N",
            at_least=1,
        ),
    ] = config.DEFAULT_CONCURRENCY
    processes: Annotated[
        int,
        _option("supervised worker processes (1)", flag="--processes", metavar="N", at_least=1),
    ] = 1
    grace: Annotated[
        float,
        _option(
            f"seconds to let running jobs finish at shutdown (default {config.DEFAULT_GRACE:g})",
            flag="--grace",
            metavar="S",
            at_least=0,
            seconds=True,
        ),
    ] = config.DEFAULT_GRACE
    lease: Annotated[
        float | None,
        _option(
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
        _option(
            "sync jobs past their deadline whose threads still run; beyond this, sync jobs "
            f"are handed back until some finish (default {config.DEFAULT_MAX_ABANDONED_THREADS})",
            flag="--max-abandoned-threads",
            metavar="N",
            at_least=1,
        ),
    ] = config.DEFAULT_MAX_ABANDONED_THREADS
    stall_warning: Annotated[
        float,
        _option(
            "seconds a job may block the event loop before a warning names it "
            f"(default {config.DEFAULT_STALL_WARNING:g})",
            flag="--stall-warning",
            metavar="S",
            above=0,
            seconds=True,
        ),
    ] = config.DEFAULT_STALL_WARNING
    health_file: Annotated[
        str | None, _option(_HEALTH_FILE_HELP, flag="--health-file", metavar="PATH")
    ] = None
    health_interval: Annotated[
        float,
        _option(
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
        _option(
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
        _option(
            "address the metrics server binds (default 127.0.0.1; 0.0.0.0 in a container "
            "scraped from outside)",
            flag="--metrics-address",
            metavar="ADDRESS",
        ),
    ] = "127.0.0.1"
    events: Annotated[
        bool,
        _option(
            "append job events to the broker's bounded event stream (`vaultq events`)",
            flag="--events",
        ),
    ] = False

    def __post_init__(self) -> None:
        _validate(self)


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


# -- command-line generation -----------------------------------------------------------


def add_worker_flags(
    parser: argparse.ArgumentParser,
    *,
    skip: tuple[str, ...] = (),
    defaults_from_settings: bool = True,
) -> None:
    """Add one flag per :class:`WorkerSettings` field (but ``skip``) to ``parser``.

    The destination of each flag is the field's name; with ``defaults_from_settings``
    the parser's defaults are the fields' defaults, otherwise None (a command that merges
    other sources, such as ``settings.VAULTQ``, tells "not given" from a value)."""
    for option in options_of(WorkerSettings):
        if option.name in skip:
            continue
        default = option.default if defaults_from_settings else None
        if option.positional:
            parser.add_argument(
                option.name, metavar=option.metavar, nargs="?", default=default, help=option.help
            )
            continue
        if option.flag is None:
            raise TypeError(f"WorkerSettings.{option.name} has no flag")  # a bug, not input
        if option.kind is tuple and default == ():
            default = None if not defaults_from_settings else ()
        if option.kind is bool:
            # A switch: given means True; not given keeps the default (None: "not given").
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="store_true",
                default=default,
                help=option.help,
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=_parser_of(option),
            default=default,
            metavar=option.metavar,
            help=option.help,
        )


def _parser_of(option: OptionInfo) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return option.parse(text)

    # argparse names the type in "invalid <name> value" messages; ours say more.
    parse.__name__ = option.name
    return parse


def settings_from_flags(
    args: argparse.Namespace, *, base: WorkerSettings | None = None, **fixed: Any
) -> WorkerSettings:
    """A :class:`WorkerSettings` from parsed flags: values given (not None) win over
    ``base`` (defaults), then ``fixed`` over both."""
    values: dict[str, Any] = {}
    for option in options_of(WorkerSettings):
        value = getattr(args, option.name, None)
        if value is not None:
            values[option.name] = value
    values.update(fixed)
    if base is None:
        return WorkerSettings(**values)
    return msgspec.structs.replace(base, **values)
