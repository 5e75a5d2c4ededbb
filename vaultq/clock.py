"""One clock for scheduling: this host's clock, corrected by a measured offset to the
broker's clock.

Leases, delayed jobs and requeue times are kept by the broker on *its* clock (Redis
``TIME``; the embedded SQLite broker: this host's clock). A worker whose clock is behind
would otherwise find a job "not yet valid" and hand it back with a not-before time the
broker already considers due: a hot loop. So every time a worker (or a producer) asks
"what time is it?" for scheduling, it asks :meth:`Clock.now`, which adds the offset to
the broker measured by :meth:`Clock.measure` (one round trip, half of it assumed on each
leg, so the error is at most half the round-trip time).

What a producer *seals* (issued-at, not-before, expires-at) stays its own clock,
:meth:`Clock.local`: those times are signed claims of the producer and must not come
from the broker. A producer whose clock is off by more than ``clock_skew`` is told so
(a log line and ``vaultq check``) rather than silently corrected.

``offset`` is a test hook: it shifts this host's clock by a fixed number of seconds, so a
test can play a host with a skewed clock without patching ``time`` for everyone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vaultq.brokers.base import Broker

__all__ = ["MEASURE_INTERVAL", "Clock", "describe_offset"]

log = logging.getLogger("vaultq.clock")

MEASURE_INTERVAL = 60.0
"""Seconds between two measurements of the offset to the broker's clock."""


class Clock:
    """This host's clock and its measured offset to the broker's clock."""

    __slots__ = ("broker_offset", "measured_at", "offset", "round_trip")

    def __init__(self, *, offset: float = 0.0) -> None:
        self.offset = offset
        """Test hook: seconds added to this host's clock (a host whose clock is off)."""
        self.broker_offset = 0.0
        """Broker clock minus this host's clock, as last measured (0 until then)."""
        self.round_trip = 0.0
        """Round-trip time of the last measurement: the offset is within half of it."""
        self.measured_at: float | None = None
        """``time.monotonic()`` of the last measurement."""

    def __repr__(self) -> str:
        return f"Clock(broker_offset={self.broker_offset:+.3f})"

    def local(self) -> float:
        """This host's clock (Unix seconds): what a producer seals into its envelopes."""
        return time.time() + self.offset

    def now(self) -> float:
        """The broker's clock as estimated here (Unix seconds): for scheduling."""
        return self.local() + self.broker_offset

    def due(self, interval: float = MEASURE_INTERVAL) -> bool:
        """True when the offset was never measured or is older than ``interval``."""
        return self.measured_at is None or time.monotonic() - self.measured_at >= interval

    async def measure(self, broker: Broker) -> float:
        """Measure the offset to ``broker``'s clock (one round trip); returns it.

        Raises what ``broker.time()`` raises (BrokerError)."""
        reader = getattr(broker, "time", None)
        if reader is None:
            # A broker written before Broker.time() existed: assume it shares our clock.
            self.measured_at = time.monotonic()
            return self.broker_offset
        sent = time.monotonic()
        before = self.local()
        remote = await reader()
        return self._record(sent, before, remote)

    def measure_sync(self, reader: Callable[[], float]) -> float:
        """:meth:`measure` with a synchronous clock reader (``SyncWriter.time``)."""
        sent = time.monotonic()
        before = self.local()
        return self._record(sent, before, reader())

    def _record(self, sent: float, before: float, remote: float) -> float:
        rtt = time.monotonic() - sent
        self.broker_offset = remote - (before + rtt / 2)
        self.round_trip = rtt
        self.measured_at = time.monotonic()
        return self.broker_offset


def describe_offset(offset: float) -> str:
    """``"12.3 s behind"`` / ``"4.0 s ahead of"``: this host relative to the broker."""
    # broker_offset = broker - local: positive means this host is behind.
    word = "behind" if offset > 0 else "ahead of"
    return f"{abs(offset):.1f} s {word}"
