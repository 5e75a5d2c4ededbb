"""A delivery in flight (:class:`JobSlot`) and why a running attempt was stopped
(:class:`Stop`): the state the worker, its lease keeper and cancel watcher, and the
executor share for one job while it runs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import anyio

from vaultq.brokers.base import Delivery
from vaultq.envelope import OpenedJob
from vaultq.middleware import JobInfo

__all__ = ["JobSlot", "Stop"]


class Stop:
    """Why a running attempt's scope was cancelled from outside."""

    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    """The worker can no longer prove the delivery's lease: stop, and never settle."""


@dataclass(slots=True)
class JobSlot:
    """A delivery in flight; the worker keeps one per running job."""

    delivery: Delivery
    scope: anyio.CancelScope | None = None
    stop: str | None = None
    started: float = field(default_factory=time.time)
    task: str = ""
    """The task name once the envelope opened (for the finished-job log line)."""
    fence_at: float = math.inf
    """``time.monotonic()`` after which the lease is no longer proven (see runtime/leases.py)."""
    lost: str | None = None
    """Why the lease is lost (set by the lease keeper's thread); such a slot never settles."""
    settling: bool = False
    """Its settlement is on the way to the broker: a renewal that finds the claim gone may
    simply have raced the settle (the job finished), so it is no reason to warn."""
    job: JobInfo | None = None
    """What middleware may know of it, once the envelope opened (only when some
    middleware needs it)."""
    opened: OpenedJob | None = None
    """The envelope, opened with every check when the batch was fetched (Ed25519
    signers: runtime/preopen.py); the executor uses it while its time checks still pass."""

    def request_stop(self, why: str) -> None:
        if self.stop is None:
            self.stop = why
        if self.scope is not None:
            self.scope.cancel()
