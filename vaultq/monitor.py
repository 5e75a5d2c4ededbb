"""Read what workers report about themselves: live workers and the job event stream.

The public API behind ``vaultq status``, ``vaultq workers`` and ``vaultq events``, and
for dashboards. Everything here is safe to show: ids, names, counts, times, outcome
codes -- never a payload, a result, a principal's attributes or key material (workers
never write them; see :mod:`vaultq.brokers.monitor`). Every field is broker data that
anyone with write access to the broker could have written: escape it before rendering
(``vaultq.policy.safe_id``) and do not base security decisions on it.

::

    for w in await vaultq.monitor.workers(app):
        print(w.beat.worker, "alive" if w.alive else f"silent {w.age:.0f} s")
    verdict = await vaultq.monitor.worker_health(app)  # this host's workers (`vaultq health`)
    async for event in vaultq.monitor.follow_events(app, last=20):
        print(event.kind, event.job_id, event.task, event.reason)
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import msgspec

from vaultq.brokers.monitor import WORKER_FORGET, JobEvent, Monitoring, WorkerBeat, monitoring
from vaultq.errors import ConfigurationError
from vaultq.policy import safe_id

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "JobEvent",
    "WorkerBeat",
    "WorkerHealth",
    "WorkerStatus",
    "events",
    "follow_events",
    "judge_health",
    "process_exists",
    "worker_health",
    "workers",
]


class WorkerStatus(msgspec.Struct, frozen=True):
    """One worker as seen now."""

    beat: WorkerBeat
    """Its last heartbeat."""
    age: float
    """Seconds since that beat (on the broker's clock)."""
    alive: bool
    """False: it stopped beating without stopping cleanly (killed, frozen, cut off)."""


async def _monitor(app: App) -> Monitoring:
    broker = await app.broker()
    found = monitoring(broker)
    if found is None:
        raise ConfigurationError(
            f"the broker {app.broker_url} does not record workers or job events; use the "
            "Redis or SQLite broker, or implement vaultq.brokers.monitor.Monitoring"
        )
    return found


async def workers(app: App, *, forget: float = WORKER_FORGET) -> list[WorkerStatus]:
    """Every worker of ``app`` that beat within ``forget`` seconds, oldest beat first.

    Raises ConfigurationError for a broker without monitoring, BrokerError when the
    broker fails.
    """
    now, beats = await (await _monitor(app)).workers(forget=forget)
    return [WorkerStatus(beat=b, age=b.age(now), alive=b.alive(now)) for b in beats]


async def events(app: App, *, after: str | None = None, limit: int = 100) -> list[JobEvent]:
    """The newest ``limit`` job events (``after=None``), or up to ``limit`` events after
    the position ``after`` (an event's ``id``); oldest first."""
    return await (await _monitor(app)).read_events(after=after, limit=limit)


async def follow_events(
    app: App, *, last: int = 0, after: str | None = None, poll: float = 1.0
) -> AsyncIterator[JobEvent]:
    """The newest ``last`` events, then every new event as it is written, forever (the
    caller cancels). ``after``: continue from that position instead."""
    monitor = await _monitor(app)
    if after is None:
        if last > 0:
            for event in await monitor.read_events(limit=last):
                after = event.id
                yield event
        if after is None:
            after = await monitor.last_event_id()
    while True:
        batch = await monitor.read_events(after=after, limit=500, block=poll)
        for event in batch:
            after = event.id
            yield event


# -- health: the verdict `vaultq health APP` prints ------------------------------------------


class WorkerHealth(msgspec.Struct, frozen=True):
    """Whether the selected workers beat recently enough (``vaultq health APP``)."""

    healthy: bool
    line: str
    """One line saying why, for a probe's log (worker names and hosts escaped)."""
    judged: tuple[WorkerStatus, ...] = ()
    """The selected workers, as judged (``alive`` against ``max_age`` when given)."""


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (as any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


def _why_silent(status: WorkerStatus, limit: float, this_host: str) -> str:
    b = status.beat
    where = f"worker {safe_id(b.worker)} (pid {b.pid} on {safe_id(b.host)})"
    if b.host != this_host:
        cause = "killed, frozen, or cut off from the broker"
    elif process_exists(b.pid):
        cause = f"pid {b.pid} still exists: its event loop is blocked or the process is frozen"
    else:
        cause = f"pid {b.pid} is gone: killed or crashed"
    return f"{where} stopped beating {status.age:.1f} s ago (max {limit:g} s): {cause}"


def judge_health(
    beats: Sequence[WorkerBeat],
    *,
    now: float,
    offset: float = 0.0,
    worker: str | None = None,
    host: str | None = None,
    pid: int | None = None,
    any_worker: bool = False,
    max_age: float | None = None,
    this_host: str | None = None,
) -> WorkerHealth:
    """The verdict on ``beats`` (read at broker time ``now``) for one selection:

    * ``worker``: that worker (its name from ``vaultq workers``) beat within its limit;
    * ``any_worker``: at least one worker of the app did;
    * otherwise the workers on ``host`` (default: this host), only process ``pid`` when
      given: at least one beat within its limit, and every one that stopped beating was
      *replaced* -- a worker selected the same way started after its last beat and,
      on this host, the silent one's process is gone (or its pid now belongs to that
      live worker). So a killed or stuck worker is unhealthy until something restarts
      it, and a restarted container (same host name, maybe the same pid 1) is healthy
      again once its new worker beats, although the old beat lingers for an hour. On
      another host, whose processes cannot be checked from here, a later worker counts
      as a replacement.

    A worker's limit is ``max_age`` or three of its promised beat periods plus a second.
    ``offset`` is the broker's clock minus this host's (to compare a start time, taken
    on the worker's host, with a last beat, stamped by the broker).
    """
    if any_worker and (worker is not None or host is not None or pid is not None):
        raise ConfigurationError("any_worker=True selects every worker: give no worker/host/pid")
    if worker is not None and (host is not None or pid is not None):
        raise ConfigurationError("a worker name selects one worker: give no host/pid with it")
    here = socket.gethostname() if this_host is None else this_host

    def limit(b: WorkerBeat) -> float:
        return 3 * b.every + 1 if max_age is None else max_age

    def status(b: WorkerBeat) -> WorkerStatus:
        return WorkerStatus(beat=b, age=b.age(now), alive=b.age(now) <= limit(b))

    if worker is not None:
        judged = tuple(status(b) for b in beats if b.worker == worker)
        what = f"worker {safe_id(worker)}"
    elif any_worker:
        judged = tuple(status(b) for b in beats)
        what = "any worker of the app"
    else:
        on = here if host is None else host
        judged = tuple(status(b) for b in beats if b.host == on and (pid is None or b.pid == pid))
        what = f"pid {pid} on {safe_id(on)}" if pid is not None else f"workers on {safe_id(on)}"
    if not judged:
        return WorkerHealth(
            False,
            f"unhealthy: no heartbeat from {what} in the broker: not started yet (or not "
            "connected to the broker yet), stopped, or another app, broker or host name",
        )
    alive = [s for s in judged if s.alive]
    if worker is not None or any_worker:
        if alive:
            newest = min(alive, key=lambda s: s.age)
            return WorkerHealth(
                True,
                f"healthy: {len(alive)} of {len(judged)} worker(s) beating; "
                f"{safe_id(newest.beat.worker)} beat {newest.age:.1f} s ago",
                judged,
            )
        silent = min(judged, key=lambda s: s.age)
        return WorkerHealth(
            False, f"unhealthy: {_why_silent(silent, limit(silent.beat), here)}", judged
        )
    # Host / pid: a silent worker counts unless a later one (same selection) replaced it.
    # On this host a silent worker whose process still runs is stuck, not replaced --
    # unless a live worker now has its pid (a restarted container's pid 1).
    live_pids = {a.beat.pid for a in alive}

    def replaced(s: WorkerStatus) -> bool:
        later = any(a.beat.started_at > s.beat.at - offset for a in alive)
        if not later or s.beat.host != here:
            return later
        return s.beat.pid in live_pids or not process_exists(s.beat.pid)

    unreplaced = [s for s in judged if not s.alive and not replaced(s)]
    if unreplaced:
        worst = max(unreplaced, key=lambda s: s.age)
        more = f" (and {len(unreplaced) - 1} more)" if len(unreplaced) > 1 else ""
        return WorkerHealth(
            False,
            f"unhealthy: {_why_silent(worst, limit(worst.beat), here)}{more}",
            judged,
        )
    newest = min(alive, key=lambda s: s.age)
    gone = len(judged) - len(alive)
    note = f"; {gone} earlier one(s) replaced" if gone else ""
    return WorkerHealth(
        True,
        f"healthy: {len(alive)} worker(s) beating ({what}); {safe_id(newest.beat.worker)} "
        f"beat {newest.age:.1f} s ago{note}",
        judged,
    )


async def worker_health(
    app: App,
    *,
    worker: str | None = None,
    host: str | None = None,
    pid: int | None = None,
    any_worker: bool = False,
    max_age: float | None = None,
    forget: float = WORKER_FORGET,
) -> WorkerHealth:
    """:func:`judge_health` on the heartbeats ``app``'s broker holds now (the selection
    is the same; by default this host's workers). Raises ConfigurationError for a broker
    without monitoring, BrokerError when the broker fails."""
    monitor = await _monitor(app)
    before = time.time()
    now, beats = await monitor.workers(forget=forget)
    local = (before + time.time()) / 2
    return judge_health(
        beats,
        now=now,
        offset=now - local,
        worker=worker,
        host=host,
        pid=pid,
        any_worker=any_worker,
        max_age=max_age,
    )
