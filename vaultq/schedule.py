"""Periodic jobs: when a schedule ticks, which tick is "missed", and the id of each tick.

A :class:`Schedule` is pure arithmetic over time; nothing here talks to a broker. The
scheduler loop (``vaultq/runtime/scheduler.py``) asks a schedule for its due ticks and
claims each one in the broker, atomically, by (schedule name, tick time).

Rules every scheduler follows, so that any number of them agree on the same ticks:

* **Ticks are instants** (Unix seconds, whole seconds). ``every=`` ticks at multiples of
  the interval counted from the Unix epoch (``every=timedelta(hours=1)`` ticks at the top of
  each UTC hour), so it never meets a DST change. ``cron=`` (5 fields, or croniter's
  6th field for seconds) is read in wall-clock time of ``tz`` (default UTC).
* **DST, spring forward** (a wall-clock time that does not exist that day, e.g. 02:30 in
  Europe/Paris on the last Sunday of March): the tick fires once, at the instant the clocks
  jump (03:00 local). Several such times (``*/15`` inside the gap) fire as that one tick.
* **DST, fall back** (a wall-clock time that occurs twice, e.g. 02:30 on the last Sunday of
  October in Europe/Paris): the tick fires once, at its first occurrence. An hourly cron job
  therefore runs once for the repeated hour; use ``every=`` for exact elapsed intervals.
  These two rules make the wall-time -> instant mapping monotonic, so ticks come out in order.
* **On time or missed.** A tick at most ``grace`` seconds old is on time and fires, however
  late the scheduler is within that. Older ticks (the scheduler was down) are missed and
  follow ``missed``: ``"skip"`` drops them; ``"run_once"`` collapses all of them into one
  run, fired at once for the newest missed tick unless an on-time tick fires in the same
  pass (that run is the catch-up).

This module imports croniter only when a ``cron=`` schedule is defined (the ``cron`` extra).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vaultq.errors import ConfigurationError
from vaultq.principal import Principal

if TYPE_CHECKING:
    from vaultq.tasks import Task

__all__ = [
    "DEFAULT_SCHEDULE_GRACE",
    "SCHEDULER_ID",
    "SCHEDULER_ROLE",
    "MissedTicks",
    "Schedule",
    "scheduler_principal",
    "tick_job_id",
]

MissedTicks = Literal["skip", "run_once"]

SCHEDULER_ID = "vaultq:scheduler"
"""Prefix of the principal id periodic jobs are sealed under: ``vaultq:scheduler:<name>``."""
SCHEDULER_ROLE = "vaultq:scheduler"
"""The role the scheduler's principal carries (``require_role("vaultq:scheduler")``)."""
DEFAULT_SCHEDULE_GRACE = 60.0
"""Seconds a tick may be late and still count as on time (not missed)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_TICKS = 1000
"""Ticks returned by one :meth:`Schedule.ticks` call at most (a pass is bounded)."""


def scheduler_principal(name: str, permissions: Iterable[str] = ()) -> Principal:
    """The system principal a schedule's jobs are sealed under, unless it names another:
    id ``vaultq:scheduler:<name>``, role ``vaultq:scheduler``, the given permissions."""
    return Principal(
        f"{SCHEDULER_ID}:{name}",
        roles=frozenset({SCHEDULER_ROLE}),
        permissions=frozenset(permissions),
        attrs={"schedule": name},
    )


def tick_job_id(name: str, tick: float) -> str:
    """The job id of ``name``'s tick at ``tick``: ``tick:<name>:<UTC time>``, e.g.
    ``tick:cleanup:20261201T101500Z``. Every scheduler derives the same id for the same tick."""
    stamp = datetime.fromtimestamp(int(tick), UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"tick:{name}:{stamp}"


class _Cron(Protocol):
    def get_next(self, ret_type: type[datetime]) -> datetime: ...
    def get_prev(self, ret_type: type[datetime]) -> datetime: ...


class Schedule:
    """One periodic job: ``task`` with ``payload``, every tick of ``cron`` or ``every``.

    Made by :meth:`vaultq.App.periodic` / :meth:`vaultq.App.schedule`; see the module
    docstring for the tick rules. ``principal`` defaults to :func:`scheduler_principal`.
    """

    def __init__(
        self,
        task: Task[Any, Any],
        *,
        payload: Any = None,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        name: str | None = None,
        principal: Principal | None = None,
        permissions: Iterable[str] = (),
        missed: MissedTicks = "skip",
        grace: float = DEFAULT_SCHEDULE_GRACE,
    ) -> None:
        self.task = task
        self.name = name if name is not None else task.name
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigurationError(
                f"schedule name {self.name!r} is not valid: give name='...' of 1-64 letters, "
                "digits, '.', '-' or '_' (the task's name is the default)"
            )
        if (cron is None) == (every is None):
            raise ConfigurationError(
                f"schedule {self.name!r}: give exactly one of cron='...' or every=timedelta(...)"
            )
        self.cron = cron
        self.every: int | None = None
        self.tz: ZoneInfo | None = None
        if every is not None:
            seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
            if not (math.isfinite(seconds) and seconds >= 1 and seconds == int(seconds)):
                raise ConfigurationError(
                    f"schedule {self.name!r}: every= must be a whole number of seconds >= 1"
                )
            if tz is not None:
                raise ConfigurationError(
                    f"schedule {self.name!r}: tz= applies to cron= only (every= counts "
                    "elapsed time, which no time zone changes)"
                )
            self.every = int(seconds)
        else:
            self.tz = _zone(self.name, tz or "UTC")
            self._croniter = _croniter_class(self.name)
            if not isinstance(cron, str) or not self._croniter.is_valid(cron):
                raise ConfigurationError(
                    f"schedule {self.name!r}: {cron!r} is not a valid cron expression "
                    "(minute hour day-of-month month day-of-week)"
                )
        if missed not in ("skip", "run_once"):
            raise ConfigurationError(
                f"schedule {self.name!r}: missed= must be 'skip' or 'run_once', not {missed!r}"
            )
        self.missed: MissedTicks = missed
        expires = task.options.expires
        if not (math.isfinite(grace) and 0 < grace <= expires):
            raise ConfigurationError(
                f"schedule {self.name!r}: grace must be > 0 and at most the task's expires "
                f"({expires:g} s): a later tick would expire before it could start"
            )
        self.grace = float(grace)
        if payload is None:
            try:
                payload = task.payload_type()
            except TypeError:
                raise ConfigurationError(
                    f"schedule {self.name!r}: task {task.name!r} needs payload=... (its "
                    f"{task.payload_type.__name__} has required fields)"
                ) from None
        # Checked now, so a schedule that could never seal fails at import, not at 3 a.m.
        task.check_payload(payload)
        self.payload = payload
        if principal is not None and not isinstance(principal, Principal):
            raise ConfigurationError(f"schedule {self.name!r}: principal must be a Principal")
        self.principal = principal or scheduler_principal(self.name, permissions)

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, task={self.task.name!r}, {self.describe()})"

    @property
    def queue(self) -> str:
        return self.task.queue

    def describe(self) -> str:
        """``every 300 s`` or ``cron '30 2 * * *' Europe/Paris``, plus the missed policy."""
        if self.every is not None:
            shape = f"every {self.every} s"
        else:
            shape = f"cron {self.cron!r} {self.tz}"
        return f"{shape}, missed={self.missed}"

    def job_id(self, tick: float) -> str:
        return tick_job_id(self.name, tick)

    # -- tick arithmetic ------------------------------------------------------------------

    def ticks(self, after: float, until: float) -> list[float]:
        """Ticks ``t`` with ``after < t <= until``, ascending (at most 1000)."""
        out: list[float] = []
        if until <= after:
            return out
        if self.every is not None:
            step = self.every
            n = (math.floor(after / step) + 1) * step
            while n <= until and len(out) < _MAX_TICKS:
                out.append(float(n))
                n += step
            return out
        it = self._iter(_wall(after, self._zone))
        while len(out) < _MAX_TICKS:
            t = self._instant(it.get_next(datetime))
            if t > until:
                break
            if t > after and (not out or t > out[-1]):  # gap times collapse to one tick
                out.append(t)
        return out

    def last_at_or_before(self, t: float) -> float | None:
        """The newest tick at or before ``t`` (None when there is none in ~30 years)."""
        if self.every is not None:
            return float(math.floor(t / self.every) * self.every)
        # get_prev is strictly before its start: start one second after t. The mapping is
        # monotonic, so the first wall time found maps to the newest instant <= t.
        start = _wall(math.floor(t) + 1, self._zone)
        it = self._iter(start)
        try:
            found = self._instant(it.get_prev(datetime))
        except (ValueError, OverflowError, KeyError):  # croniter's "no match" forms
            return None
        return found if found <= t else None

    def next_after(self, t: float) -> float | None:
        """The first tick after ``t`` (None when there is none in ~30 years)."""
        if self.every is not None:
            return float((math.floor(t / self.every) + 1) * self.every)
        it = self._iter(_wall(t, self._zone))
        for _ in range(4):  # gap times map back to the jump: step past ticks <= t
            try:
                found = self._instant(it.get_next(datetime))
            except (ValueError, OverflowError, KeyError):
                return None
            if found > t:
                return found
        return None

    @property
    def _zone(self) -> ZoneInfo:
        return self.tz or ZoneInfo("UTC")  # set for every cron schedule

    def _iter(self, start: datetime) -> _Cron:
        # Naive wall-clock datetimes: croniter does calendar arithmetic only, and the DST
        # rules are applied by _instant, in one place.
        it: _Cron = self._croniter(self.cron, start)
        return it

    def _instant(self, wall: datetime) -> float:
        return _instant(wall, self._zone)


def _zone(name: str, tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"schedule {name!r}: unknown time zone {tz!r}: use an IANA name such as "
            "'Europe/Paris' (install the tzdata package where the system has no zone files)"
        ) from None


def _croniter_class(name: str) -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigurationError(
            f"schedule {name!r} uses cron=, which needs croniter: pip install 'vaultq[cron]' "
            "(or use every=timedelta(...), which needs nothing)"
        ) from None
    return croniter


def _wall(t: float, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of instant ``t`` in ``zone``."""
    return datetime.fromtimestamp(t, zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: ZoneInfo) -> float:
    """The instant of naive wall time ``wall`` in ``zone`` under the DST rules above:
    an ambiguous time is its first occurrence (fold=0); a time inside a spring-forward gap
    is the instant the clocks jumped."""
    first = wall.replace(tzinfo=zone, fold=0)
    t = first.timestamp()
    if _wall(t, zone) == wall:
        return t
    # Inside a gap. fold=1 reads the wall time with the offset after the jump, which lands
    # before the jump; fold=0 with the offset before it, which lands after. The jump lies
    # between: find its exact second by bisection (zone offsets change on whole seconds).
    lo = math.floor(wall.replace(tzinfo=zone, fold=1).timestamp())
    hi = math.ceil(t)
    old = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return float(hi)  # the first second on the new offset: the jump
