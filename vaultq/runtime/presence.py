"""A worker's presence in the broker: a heartbeat every few seconds, and the event writer.

``keep_registered`` runs in the worker's task group, so -- like the health file of
:mod:`vaultq.runtime.health` -- it stops beating when the event loop stops turning. The
beat carries the worker's identity and counters only (see
:class:`~vaultq.brokers.monitor.WorkerBeat`). A worker that stops cleanly removes its
beat; a killed one leaves a beat that ages and is flagged by ``vaultq status``.

:class:`EventLog` buffers job events in memory and appends them in batches from its own
task: a slow or unreachable broker never delays a job. The buffer is bounded; when it
is full, new events are dropped and counted (``dropped``), and one warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import anyio

from vaultq.brokers.monitor import EVENTS_MAXLEN, WORKER_FORGET, JobEvent, Monitoring, WorkerBeat
from vaultq.errors import BrokerError

__all__ = ["EVENT_BUFFER", "EventLog", "keep_registered"]

log = logging.getLogger("vaultq.worker")

EVENT_BUFFER = 10_000
"""Events held in memory while the broker is slow or away; beyond this they are dropped."""
_FLUSH_BATCH = 500
_FLUSH_EVERY = 0.1
_QUIET_FOR = 30.0


async def keep_registered(
    broker: Monitoring,
    make_beat: Callable[[], WorkerBeat],
    interval: float,
    *,
    forget: float = WORKER_FORGET,
) -> None:
    """Write ``make_beat()`` now and every ``interval`` seconds until cancelled; remove the
    worker's beat on the way out (shielded, bounded by a few seconds)."""
    worker = make_beat().worker
    warned_at = -_QUIET_FOR
    try:
        while True:
            try:
                await broker.beat(make_beat(), forget=forget)
            except BrokerError as exc:
                # The lease keeper and fetch loop report the outage; once in a while here.
                if time.monotonic() - warned_at >= _QUIET_FOR:
                    warned_at = time.monotonic()
                    log.warning("could not write the worker heartbeat (%s)", type(exc).__name__)
            await anyio.sleep(interval)
    finally:
        # On failure the beat ages out: flagged as silent, then forgotten.
        shielded = anyio.CancelScope(shield=True)
        with shielded, anyio.move_on_after(3.0), contextlib.suppress(BrokerError):
            await broker.forget_worker(worker)


class EventLog:
    """Job events on their way to the broker (see the module docstring)."""

    def __init__(
        self,
        *,
        maxlen: int = EVENTS_MAXLEN,
        buffer: int = EVENT_BUFFER,
    ) -> None:
        self.maxlen = maxlen
        self._pending: deque[JobEvent] = deque()
        self._buffer = buffer
        self._wake: anyio.Event | None = None  # made by run(), on the flushing loop
        self.dropped = 0
        self.written = 0

    def emit(self, event: JobEvent) -> None:
        """Queue ``event`` (never blocks, never raises)."""
        if len(self._pending) >= self._buffer:
            if self.dropped == 0:
                log.warning(
                    "job event buffer full (%d): dropping events until the broker catches up",
                    self._buffer,
                )
            self.dropped += 1
            return
        self._pending.append(event)
        if len(self._pending) >= _FLUSH_BATCH and self._wake is not None:
            self._wake.set()

    async def run(self, broker: Monitoring) -> None:
        """Flush until cancelled; then flush what is left (shielded, a few seconds)."""
        warned_at = -_QUIET_FOR
        try:
            while True:
                self._wake = anyio.Event()
                with anyio.move_on_after(_FLUSH_EVERY):
                    await self._wake.wait()
                try:
                    await self.flush(broker)
                except BrokerError as exc:
                    if time.monotonic() - warned_at >= _QUIET_FOR:
                        warned_at = time.monotonic()
                        log.warning("could not write job events (%s)", type(exc).__name__)
        finally:
            self._wake = None
            shielded = anyio.CancelScope(shield=True)
            with shielded, anyio.move_on_after(3.0), contextlib.suppress(BrokerError):
                await self.flush(broker)

    async def flush(self, broker: Monitoring) -> None:
        """Write every queued event, in batches, in order (kept on failure)."""
        while self._pending:
            # Taken out before the write, so two flushers (the worker's and a producer's
            # in the same process) never write one event twice; put back on failure.
            batch = [self._pending.popleft() for _ in range(min(_FLUSH_BATCH, len(self._pending)))]
            try:
                await broker.add_events(batch, maxlen=self.maxlen)
            except BaseException:
                self._pending.extendleft(reversed(batch))
                raise
            self.written += len(batch)
