"""Fetched deliveries on their way to the worker's consumers, one wake-up per idle
consumer that is needed rather than one task switch per job.

A memory object stream hands each item to a waiting receiver through its own event,
and every ``receive`` starts with a checkpoint: a batch of 200 fetched jobs cost 200
task switches before any job ran (docs/performance.md). Here the fetcher appends the
whole batch and wakes one idle consumer; a consumer that takes a slot while others are
still waiting makes sure one idle consumer is being woken before it runs its job, so a
job that awaits (I/O) never holds up the rest of the batch, and a consumer whose job
finished without awaiting takes the next slot at once, without a task switch. At most
one wake-up is pending at a time: a batch of no-op jobs costs one task switch per time
the running consumer yields, not one per job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import anyio

from vaultq.runtime.slots import JobSlot

__all__ = ["Dispatch"]


class Dispatch:
    """The slots fetched and not yet taken by a consumer. The worker's capacity bounds
    it: the fetcher never asks for more than the consumers that are free."""

    def __init__(self) -> None:
        self._ready: deque[JobSlot] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._waking = 0
        """Consumers woken that have not resumed yet (0 or 1, but at close)."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def put(self, slots: Iterable[JobSlot]) -> None:
        self._ready.extend(slots)
        if self._ready:
            self._wake_one()

    def close(self) -> None:
        """No more slots: consumers take what is left, then :meth:`get` returns None."""
        self._closed = True
        while self._idle:
            self._waking += 1
            self._idle.popleft().set()

    def _wake_one(self) -> None:
        if self._idle and not self._waking:
            self._waking += 1
            self._idle.popleft().set()

    async def get(self) -> JobSlot | None:
        """The next slot, waiting while there is none; None once closed and empty."""
        while True:
            if self._ready:
                slot = self._ready.popleft()
                if self._ready:
                    # Someone else takes the next one if this job awaits.
                    self._wake_one()
                return slot
            if self._closed:
                return None
            wake = anyio.Event()
            self._idle.append(wake)
            try:
                await wake.wait()
            except BaseException:
                # Cancelled while idle: leave the queue of idle consumers, and pass on a
                # wake-up meant for us, so no slot waits for a consumer that is gone.
                if wake.is_set():
                    self._waking -= 1
                    if self._ready:
                        self._wake_one()
                else:
                    self._idle.remove(wake)
                raise
            self._waking -= 1
