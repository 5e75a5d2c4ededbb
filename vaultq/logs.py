"""Logging for operators: logger names, the JSON line format, safe task tracebacks.

The library only *emits* records; configuring handlers is the application's job. Every
vaultq logger hangs below ``vaultq``, which carries a ``NullHandler`` (set in
``vaultq/__init__.py``) so a producer script that configured no logging does not get
audit denials printed on its stderr by Python's last-resort handler.

Logger names an operator may want to tune (all below ``vaultq``):

* ``vaultq.jobs`` -- one INFO line per finished job (id, task, queue, attempt,
  duration, outcome). ``logging.getLogger("vaultq.jobs").setLevel(logging.WARNING)``
  turns it off.
* ``vaultq.tracebacks`` -- the traceback of a task that raised (WARNING). Frame locals
  are never rendered; ``Secret`` values of the job's payload are masked in exception
  messages.
* ``vaultq.audit`` -- authorization decisions: denials at WARNING, allows at DEBUG.
* ``vaultq.worker``, ``vaultq.brokers.*``, ``vaultq.django`` -- the rest.

Structured fields travel in ``record.vaultq`` (a dict of ids and names, never payload
values); :class:`JsonFormatter` lifts the common ones to top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from vaultq.payload import Secret

__all__ = [
    "JOBS_LOGGER",
    "LOG_FORMATS",
    "TRACEBACKS_LOGGER",
    "JsonFormatter",
    "TextFormatter",
    "has_handlers",
    "payload_texts",
    "render_traceback",
    "secret_texts",
    "setup_logging",
]

JOBS_LOGGER = "vaultq.jobs"
TRACEBACKS_LOGGER = "vaultq.tracebacks"
LOG_FORMATS = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_FIELDS = ("job_id", "task", "queue", "attempt", "outcome")
_MASK = "***"
_MAX_TRACEBACK = 8000
_MAX_SECRET_DEPTH = 32


class TextFormatter(logging.Formatter):
    """The CLI's human format; timestamps in UTC so they match the JSON lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self.converter = time.gmtime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then ``job_id``, ``task``, ``queue``, ``attempt``, ``outcome`` (null when
    the record is not about one job), then the record's other safe structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "vaultq", None)
        fields = fields if isinstance(fields, dict) else {}
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "time": f"{when}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _FIELDS:
            out[key] = fields.get(key)
        for key, value in fields.items():
            if key not in out:
                out[key] = value
        if record.exc_info:
            # Only vaultq's own errors reach here with exc_info (internal errors): task
            # exceptions are rendered by render_traceback, masked, into ``traceback``.
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=True)


def has_handlers(logger: logging.Logger) -> bool:
    """True when a record of ``logger`` would reach a real (non-Null) handler."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure logging for a vaultq command.

    When the process already routes vaultq's records somewhere (Django's ``LOGGING``,
    an embedding application), only the ``vaultq`` logger's level is set: adding a
    second handler would print every line twice. When a framework configured its own
    loggers (``manage.py vaultq_worker``: Django's ``django`` logger has handlers), one
    stderr handler goes on the ``vaultq`` logger only, so the framework's lines are not
    printed a second time through the root logger. Otherwise it goes on the root logger.
    """
    library = logging.getLogger("vaultq")
    numeric = getattr(logging, level.upper(), logging.INFO)
    library.setLevel(numeric)
    if has_handlers(library):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if logging.getLogger("django").handlers:
        library.addHandler(handler)
        return
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > numeric or root.level == logging.NOTSET:
        root.setLevel(numeric)


# -- task tracebacks ---------------------------------------------------------------------


def secret_texts(value: Any) -> set[str]:
    """The text forms of every ``Secret`` inside ``value`` (a payload), to mask them."""
    found: set[str] = set()
    for inner, is_secret in _values(value, 0):
        if is_secret:
            found.update(_texts(inner, 1))
    return found


def payload_texts(value: Any) -> set[str]:
    """What ``render_traceback`` masks: every ``Secret`` value whatever its length, and
    every other string or bytes value of the payload of at least ``MIN_MASKED`` characters
    (shorter ones would mask ordinary words and digits of the traceback)."""
    found: set[str] = set()
    for inner, is_secret in _values(value, 0):
        found.update(_texts(inner, 1 if is_secret else MIN_MASKED))
    return found


MIN_MASKED = 4
"""Plain (non-``Secret``) payload strings shorter than this are not masked."""


def _texts(value: Any, least: int) -> set[str]:
    if isinstance(value, bytes | bytearray):
        forms = {bytes(value).decode("utf-8", "replace"), repr(bytes(value))}
    elif isinstance(value, str):
        forms = {value, repr(value)}
    elif _is_number(value):
        forms = {str(value), repr(value)}
    else:
        return set()
    return {text for text in forms if len(text) >= least}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _values(value: Any, depth: int, secret: bool = False) -> Iterator[tuple[Any, bool]]:
    """Every scalar of a payload, with whether it sits inside a ``Secret``."""
    if depth > _MAX_SECRET_DEPTH:
        return
    if isinstance(value, Secret):
        yield from _values(value.reveal(), depth + 1, True)
        return
    if isinstance(value, str | bytes | bytearray):
        yield value, secret
        return
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Numbers are masked only inside a Secret: order ids and counts in a message
        # are what an operator debugs with, and masking "7" would garble line numbers.
        if secret:
            yield value, secret
        return
    fields = getattr(type(value), "__struct_fields__", None)
    if fields is not None:
        for name in fields:
            yield from _values(getattr(value, name, None), depth + 1, secret)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _values(key, depth + 1, secret)
            yield from _values(item, depth + 1, secret)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _values(item, depth + 1, secret)


def _mask(text: str, secrets: set[str]) -> str:
    # Longest first, so a secret containing another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<message unavailable>"


def render_traceback(exc: BaseException, payload: Any) -> str:
    """The traceback of a task's exception, for the operator's log.

    Frames show file, line, function and source line -- never local variables. In every
    exception message of the chain, the payload's values are masked (``***``): each
    ``Secret`` value, and each other string of at least ``MIN_MASKED`` characters.
    Numbers outside a ``Secret`` and shorter strings are left as they are.
    """
    secrets = payload_texts(payload)
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    lines: list[str] = []
    for i, item in enumerate(reversed(chain)):
        if i:
            lines.append(
                "The above exception was the direct cause of the following exception:"
                if item.__cause__ is not None
                else "During handling of the above exception, another exception occurred:"
            )
        lines.append("Traceback (most recent call last):")
        stack = traceback.StackSummary.extract(
            traceback.walk_tb(item.__traceback__), capture_locals=False
        )
        lines.extend(line.rstrip("\n") for line in stack.format())
        cls = type(item)
        name = cls.__qualname__
        if cls.__module__ != "builtins":
            name = f"{cls.__module__}.{name}"
        message = _mask(_message(item), secrets)
        lines.append(f"{name}: {message}" if message else name)
    text = "\n".join(lines)
    if len(text) > _MAX_TRACEBACK:
        text = "...\n" + text[-_MAX_TRACEBACK:]
    return text
