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
    async for event in vaultq.monitor.follow_events(app, last=20):
        print(event.kind, event.job_id, event.task, event.reason)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec

from vaultq.brokers.monitor import WORKER_FORGET, JobEvent, Monitoring, WorkerBeat, monitoring
from vaultq.errors import ConfigurationError

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["JobEvent", "WorkerBeat", "WorkerStatus", "events", "follow_events", "workers"]


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
