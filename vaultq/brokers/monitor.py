"""What a broker stores for observers: worker heartbeats and a bounded job event stream.

Both hold safe fields only -- ids, names, counts, times, outcome codes -- never an
envelope, a payload value, a result, a principal's attributes or key material. They are
written by workers (and producers, for ``enqueued``) and read by ``vaultq status``,
``vaultq workers``, ``vaultq events`` and dashboards (:mod:`vaultq.monitor`).

* **Heartbeats.** Each worker process replaces its own :class:`WorkerBeat` every few
  seconds; the broker stamps it with *its* clock (so ages are comparable across hosts)
  and forgets a worker ``forget`` seconds after its last beat. A worker that stops
  cleanly removes its beat; one that was killed leaves a beat that ages, which readers
  flag as "stopped beating" until it is forgotten.
* **Events.** An append-only stream per namespace, trimmed to about ``maxlen`` newest
  events (Redis: ``XADD MAXLEN ~``; SQLite: the rows older than the newest ``maxlen``
  sequence numbers are deleted). Each event gets an opaque, increasing position
  (:attr:`JobEvent.id`) that a follower passes back as ``after``.

Whoever can write to the broker can write these records too: readers treat every field
as unauthenticated (escape before printing, skip what does not decode).

A broker that records them implements :class:`Monitoring` (both built-in brokers do);
:func:`monitoring` returns it, or None for a broker that does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import msgspec

__all__ = [
    "EVENTS_MAXLEN",
    "EVENT_KINDS",
    "WORKER_FORGET",
    "JobEvent",
    "Monitoring",
    "WorkerBeat",
    "decode_beat",
    "decode_event",
    "encode",
    "monitoring",
]

EVENTS_MAXLEN: Final = 10_000
"""Events kept per namespace by default (about 2 MB on Redis)."""
WORKER_FORGET: Final = 3600.0
"""Seconds after its last beat a worker that did not stop cleanly is forgotten."""

EVENT_KINDS: Final = frozenset(
    {"enqueued", "started", "succeeded", "retried", "dead", "cancelled", "handed_back"}
)
"""``dead`` carries the reason (``failed``, ``timed_out``, ``denied``, ``expired``,
``rejected:<why>``...), ``retried`` the reason of the failed attempt."""


class WorkerBeat(msgspec.Struct, frozen=True, omit_defaults=True):
    """One worker process's heartbeat."""

    worker: str
    """The worker's consumer name (``<host>-<pid>-<random>``): unique per process run."""
    host: str
    pid: int
    app: str
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    """Deliveries fetched and not yet settled."""
    done: int
    """Deliveries settled since the process started."""
    started_at: float
    version: str
    every: float
    """Seconds between two beats, as the worker promised."""
    at: float = 0.0
    """When the broker received the beat, on the broker's clock (set by the broker)."""

    def age(self, now: float) -> float:
        """Seconds since the last beat (``now`` on the broker's clock)."""
        return max(0.0, now - self.at)

    def alive(self, now: float) -> bool:
        """Beat within three promised periods (plus a second for the round trip)."""
        return self.age(now) <= 3 * self.every + 1


class JobEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """One step of a job's life. Never holds payloads, results or principal attributes."""

    kind: str
    """One of :data:`EVENT_KINDS`."""
    job_id: str
    queue: str
    task: str = ""
    attempt: int = 0
    at: float = 0.0
    """Wall-clock time of the writer (``time.time()``)."""
    worker: str = ""
    reason: str = ""
    duration: float | None = None
    """Seconds the attempt ran (finished events)."""
    id: str = ""
    """Position in the stream, set when read (opaque; pass it back as ``after``)."""


_beat_decoder = msgspec.json.Decoder(WorkerBeat)
_event_decoder = msgspec.json.Decoder(JobEvent)


def decode_beat(data: bytes, at: float) -> WorkerBeat | None:
    """A stored beat with the broker's time ``at``; None when it does not decode."""
    try:
        beat = _beat_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return msgspec.structs.replace(beat, at=at)


def decode_event(data: bytes, position: str) -> JobEvent | None:
    """A stored event at ``position``; None when it does not decode."""
    try:
        event = _event_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return msgspec.structs.replace(event, id=position)


@runtime_checkable
class Monitoring(Protocol):
    """The heartbeat and event operations of a broker (see the module docstring)."""

    async def beat(self, beat: WorkerBeat, *, forget: float = WORKER_FORGET) -> float:
        """Store ``beat`` (replacing the worker's previous one) stamped with the broker's
        clock, which is returned; forget workers silent for ``forget`` seconds."""
        ...

    async def forget_worker(self, worker: str) -> None:
        """Remove a worker's beat (it stopped cleanly)."""
        ...

    async def workers(self, *, forget: float = WORKER_FORGET) -> tuple[float, list[WorkerBeat]]:
        """``(broker time now, beats)``: every worker that beat in the last ``forget``
        seconds, oldest beat first."""
        ...

    async def add_events(self, events: Sequence[JobEvent], *, maxlen: int = EVENTS_MAXLEN) -> None:
        """Append ``events`` in order; keep about the newest ``maxlen``."""
        ...

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, block: float = 0.0
    ) -> list[JobEvent]:
        """Events oldest first. ``after=None``: the newest ``limit`` events; otherwise up
        to ``limit`` events after that position, waiting up to ``block`` seconds for the
        first one when there is none yet."""
        ...

    async def last_event_id(self) -> str:
        """The position of the newest event ("" when there is none): a follower that
        wants only what comes next starts after it."""
        ...


def monitoring(broker: object) -> Monitoring | None:
    """``broker`` as :class:`Monitoring`, or None when it does not record workers and events."""
    return broker if isinstance(broker, Monitoring) else None


def encode(record: WorkerBeat | JobEvent) -> bytes:
    """The stored form of a beat or event (JSON: readable by other languages' tools)."""
    return msgspec.json.encode(record)
