"""Priorities within a queue: three fixed levels and the one rule every broker fetches by.

A job has one of three levels, ``low`` (-1), ``normal`` (0, the default) and ``high`` (1).
A worker's fetch takes ready jobs of a queue level by level, highest first, oldest first
within a level (FIFO), so a high job enqueued behind any number of normal or low ones is
in the very next fetch.

Anti-starvation (:func:`fetch_plan`): every :data:`BOOST_EVERY`-th fetch that delivers
something gives its first delivery to a lower level, alternating ``normal`` and ``low``
(the 10th fetch boosts ``normal``, the 20th ``low``, the 30th ``normal`` ...); the rest of
that batch is taken in the usual order. So under a steady stream of high jobs a waiting
normal or low job still starts within ``2 * BOOST_EVERY`` fetches of its worker, and a
high job waits at most one extra fetch (only when the boosted fetch asks for one job).
The counter belongs to the fetching broker object (each worker process has its own); the
rule is the same pure function in the Redis, SQLite and in-memory brokers.

The level is routing data, stored beside the sealed envelope, not inside its signed
header: it decides *when* a job is fetched, never *whether* it may run (the worker
authorizes every job from the signed header alone). Whoever can write to the broker can
reorder or delay jobs anyway, so signing the level would protect nothing
(``docs/scheduling.md``, "Priorities").
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from vaultq.errors import ConfigurationError, InvalidArgument

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.tasks import Task

__all__ = [
    "BOOST_EVERY",
    "LEVELS",
    "FetchRotation",
    "Priority",
    "PriorityLike",
    "choose_priority",
    "django_priority",
    "fetch_plan",
    "level_of",
    "parse_priority",
    "task_level",
]


class Priority(enum.IntEnum):
    """The three priority levels of a job within its queue (higher runs first)."""

    LOW = -1
    NORMAL = 0
    HIGH = 1


PriorityLike = Priority | int | str
"""What ``priority=`` accepts: a :class:`Priority`, its value (-1, 0, 1) or its name
(``"low"``, ``"normal"``, ``"high"``, any case)."""

LEVELS: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
"""The levels in the order a fetch takes them (highest first)."""

BOOST_EVERY: Final = 10
"""Every this many fetches that deliver, the first delivery goes to a lower level."""

_BOOSTED: Final = (Priority.NORMAL, Priority.LOW)
_BY_VALUE: Final = {int(p): p for p in Priority}


def parse_priority(value: object, *, what: str = "priority") -> Priority:
    """``value`` as a :class:`Priority`. Raises :class:`~vaultq.errors.InvalidArgument`
    naming the accepted values for anything else (``True``, ``5``, ``"urgent"``)."""
    if isinstance(value, Priority):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value in (-1, 0, 1):
            return Priority(value)
    elif isinstance(value, str):
        found = Priority.__members__.get(value.strip().upper())
        if found is not None:
            return found
    raise InvalidArgument(
        f"{what} must be 'low', 'normal' or 'high' (or vaultq.Priority.LOW/NORMAL/HIGH, "
        f"-1/0/1), not {value!r}; vaultq has three levels per queue: map finer scales "
        "onto them (docs/scheduling.md, 'Priorities')"
    )


def choose_priority(
    given: object, default: Priority, *, task: str, supported: Callable[[], bool], broker: str
) -> Priority:
    """The level of a job of ``task``: ``given`` (``enqueue(priority=...)``) or the task's
    ``default``. Raises ``InvalidArgument`` for a value that is no level and
    ``ConfigurationError`` for a level other than normal on a broker that does not
    declare ``capabilities.priorities`` (it would be ignored silently otherwise);
    ``supported`` is asked only then, so a normal job costs nothing more."""
    level = default if given is None else parse_priority(given)
    if level != Priority.NORMAL and not supported():
        raise ConfigurationError(
            f"task {task!r}: priority {level.name.lower()!r} needs a broker that honours "
            f"priorities, and the broker {broker} does not declare them "
            "(BrokerCapabilities.priorities): enqueue at normal priority, use a separate "
            "queue for urgent work, or use the Redis, SQLite or memory broker"
        )
    return level


def task_level(app: App, task: Task[Any, Any], given: object) -> Priority:
    """:func:`choose_priority` for a job of ``task`` on ``app``'s broker."""
    return choose_priority(
        given,
        task.priority,
        task=task.name,
        supported=lambda: app.broker_capabilities.priorities,
        broker=app.broker_url,
    )


def level_of(value: int) -> Priority:
    """A broker's reading of ``EnqueueItem.priority``: the level, an out-of-range number
    clamped to the nearest one (the producer validated it; a broker never fails on it)."""
    found = _BY_VALUE.get(value)  # once per job written: no enum call on the usual path
    return found if found is not None else Priority(max(-1, min(1, int(value))))


def django_priority(value: int) -> Priority:
    """Django Tasks' integer priority (-100..100, default 0, higher first) as a level:
    negative -> low, 0 -> normal, positive -> high. The sign keeps Django's promise that
    a higher priority never runs after a lower one of the same queue; finer steps within
    one sign share a level (FIFO)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"a Django task priority must be an int, not {value!r}")
    if value < 0:
        return Priority.LOW
    return Priority.HIGH if value > 0 else Priority.NORMAL


def fetch_plan(number: int, count: int) -> tuple[tuple[Priority, int], ...]:
    """The levels fetch number ``number`` (1-based, counting fetches that delivered) takes
    from, in order, each with the most it may take from that level (the batch as a whole
    stays within ``count``): highest first, except that every :data:`BOOST_EVERY`-th
    fetch first takes one job of a lower level, alternating normal and low."""
    if count <= 0:
        return ()
    plan = tuple((level, count) for level in LEVELS)
    if number <= 0 or number % BOOST_EVERY:
        return plan
    boosted = _BOOSTED[(number // BOOST_EVERY - 1) % len(_BOOSTED)]
    return ((boosted, 1), *plan)


class FetchRotation:
    """The anti-starvation counter of one fetching broker object: :meth:`plan` for the
    next fetch, then :meth:`delivered` with how many jobs it returned. Not shared between
    processes (each worker rotates on its own); callers serialise their fetches."""

    __slots__ = ("served",)

    def __init__(self) -> None:
        self.served = 0

    def plan(self, count: int) -> tuple[tuple[Priority, int], ...]:
        return fetch_plan(self.served + 1, count)

    def delivered(self, n: int) -> None:
        if n > 0:
            self.served += 1
