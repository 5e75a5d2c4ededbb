"""Fenced leases, kept from a thread the worker's event loop cannot freeze.

A delivery may run and settle only while its worker can *prove* its lease. The proof is
the time a fetch or a successful renewal was **sent** (``time.monotonic()``, before the
request left): the broker started or renewed the lease no earlier than that, on its own
clock, so the lease lasts at least until ``sent + lease``. The keeper allows each
delivery to run until ``sent + fence_after`` (``fence_after = lease * FENCE_FRACTION``)
and then *fences* it: the attempt's cancel scope is cancelled (an async task stops at
its next await; a process-isolated child is killed; a sync thread is abandoned) and its
settlement is dropped by the worker and refused by the broker (the tag, the fencing
token, no longer holds the claim). A renewal reported lost by the broker fences at once.

Why a thread: the event loop is shared with job code, and a job that blocks it
(``time.sleep`` in an ``async def``) used to freeze renewal, so the worker's *other*
jobs lost their leases and ran again elsewhere. The keeper runs its own event loop in a
daemon thread with its own broker connection (a clone), so it keeps renewing while the
worker's loop is stuck; it also watches the loop and names the task that blocks it.

The margin ``lease - fence_after`` (30 % of the lease) covers: the time a cancellation
takes to land, clock-rate differences between hosts, and one renewal lost by a broker
crash (``appendfsync everysec``): renewals are sent every ``lease * RENEW_FRACTION``
(20 %), so losing the last one leaves the broker's lease at least
``lease - renew period`` = 80 % past the previous proof, still after the fence at 70 %.
``docs/reliability.md`` argues the design and states its limits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from vaultq.errors import BrokerError

if TYPE_CHECKING:
    from vaultq.brokers.base import Broker
    from vaultq.runtime.execute import JobSlot

__all__ = ["FENCE_FRACTION", "RENEW_FRACTION", "LeaseKeeper"]

log = logging.getLogger("vaultq.worker")

FENCE_FRACTION = 0.7
"""A delivery whose lease was last proven this fraction of the lease ago is fenced."""
RENEW_FRACTION = 0.2
"""Renewals are sent every this fraction of the lease."""
_CHECK_PERIOD = 0.1
"""Seconds between two looks at the fence deadlines (and at the event loop)."""
_QUIET_FOR = 30.0


class LeaseKeeper:
    """Renews the leases of registered job slots from a daemon thread; fences the ones
    it can no longer prove; warns when the worker's event loop is blocked.

    ``on_fence(slot, why)`` is called from the keeper thread; it must be thread-safe
    (the worker hands it to its own loop with ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        consumer: str,
        lease: float,
        on_fence: Callable[[JobSlot, str], None],
        loop: asyncio.AbstractEventLoop | None = None,
        stall_warning: float = 1.0,
    ) -> None:
        self._broker = broker
        self.consumer = consumer
        self.lease = lease
        self.fence_after = lease * FENCE_FRACTION
        self.renew_every = max(0.02, lease * RENEW_FRACTION)
        self._on_fence = on_fence
        self._loop = loop
        self._stall_warning = stall_warning
        self._lock = threading.Lock()
        self._slots: dict[str, JobSlot] = {}
        self._running_in: dict[asyncio.Task[object], JobSlot] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = time.monotonic()
        self._stalled_since: float | None = None
        self._last_warned: dict[str, float] = {}
        self.renewals = 0
        """Successful renewal round trips (for tests and benchmarks)."""

    # -- called from the worker's loop ------------------------------------------------

    def proven(self, slot: JobSlot, sent: float) -> None:
        """Record a proof of ``slot``'s lease made by a request sent at ``sent``."""
        slot.fence_at = max(slot.fence_at, sent + self.fence_after)

    def add(self, slot: JobSlot, sent: float) -> None:
        """Keep ``slot``'s lease; ``sent`` is when the fetch that leased it was sent."""
        slot.fence_at = sent + self.fence_after
        with self._lock:
            self._slots[slot.delivery.tag] = slot

    def discard(self, slot: JobSlot) -> None:
        with self._lock:
            self._slots.pop(slot.delivery.tag, None)

    def running(self, task: asyncio.Task[object] | None, slot: JobSlot | None) -> None:
        """Note which asyncio task runs ``slot`` (``None``: it finished), so a blocked
        loop can be blamed on a job."""
        if task is None:
            return
        with self._lock:
            if slot is None:
                self._running_in.pop(task, None)
            else:
                self._running_in[task] = slot

    def heartbeat(self) -> None:
        """Called on the worker's loop: it is alive."""
        self._beat = time.monotonic()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="vaultq-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # the keeper must not die silently: leases would lapse
            log.exception("the lease keeper failed; running jobs will be fenced")
            with self._lock:
                slots = list(self._slots.values())
            for slot in slots:
                self._fence(slot, "the lease keeper failed")

    async def _serve(self) -> None:
        broker = self._broker.clone()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew_loop, broker)
                while not self._stop.is_set():
                    self._check()
                    await anyio.sleep(_CHECK_PERIOD)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await broker.close()

    # -- the keeper thread --------------------------------------------------------------

    async def _renew_loop(self, broker: Broker) -> None:
        connected = False
        while True:
            with self._lock:
                slots = list(self._slots.values())
            pause = self.renew_every
            if slots:
                sent = time.monotonic()
                try:
                    if not connected:
                        await broker.connect()
                        connected = True
                    lost = await broker.extend(
                        [s.delivery for s in slots], consumer=self.consumer, lease=self.lease
                    )
                except BrokerError as exc:
                    # Try again soon: every second without proof brings the fence closer.
                    pause = min(pause, 1.0)
                    self._warn("renew", "lease renewal failed (%s); retrying", type(exc).__name__)
                else:
                    self.renewals += 1
                    for slot in slots:
                        if slot.delivery.tag not in lost:
                            self.proven(slot, sent)
                        elif slot.settling:
                            # The renewal raced this job's own settle, which released the
                            # claim: the job finished; nothing was lost. (Had the lease
                            # really lapsed, the broker refuses the settle and says so.)
                            log.debug(
                                "job %s settled while its lease was renewed", slot.delivery.job_id
                            )
                        else:
                            self._fence(
                                slot,
                                "the broker no longer has this delivery's claim: the lease "
                                "lapsed, or the job was delivered to another worker",
                            )
            await anyio.sleep(pause)

    def _check(self) -> None:
        now = time.monotonic()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            # A slot being settled is not cancelled here: the worker drops its settlement
            # if the lease lapsed, and the broker refuses it.
            if slot.lost is None and not slot.settling and now > slot.fence_at:
                self._fence(
                    slot,
                    f"it could not be renewed for {self.fence_after:.1f} s "
                    f"(lease {self.lease:g} s); another worker may take the job after the lease",
                )
        self._watch_loop(now)

    def _fence(self, slot: JobSlot, why: str) -> None:
        if slot.lost is not None:
            return
        slot.lost = why
        log.warning(
            "job %s: lease lost (%s); cancelling the attempt, it will not be settled here",
            slot.delivery.job_id,
            why,
        )
        self._on_fence(slot, why)

    def _watch_loop(self, now: float) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        blocked = now - self._beat
        if blocked < self._stall_warning:
            if self._stalled_since is not None:
                log.warning("event loop unblocked after %.1f s", now - self._stalled_since)
                self._stalled_since = None
            try:
                loop.call_soon_threadsafe(self.heartbeat)
            except RuntimeError:  # the loop closed meanwhile
                return
            return
        if self._stalled_since is not None:
            return
        self._stalled_since = self._beat
        task = asyncio.current_task(loop)
        with self._lock:
            slot = self._running_in.get(task) if task is not None else None
        culprit = task.get_name() if task is not None else "(no task: a callback)"
        if slot is not None:
            culprit += f" running job {slot.delivery.job_id}"
        log.warning(
            "event loop blocked for %.1f s by %s: a job calls blocking code without "
            "awaiting (use a sync task, or isolation='process'); leases are still "
            "renewed from the lease thread",
            blocked,
            culprit,
        )

    def _warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warned.get(kind, -_QUIET_FOR) >= _QUIET_FOR:
            self._last_warned[kind] = now
            log.warning(message, *args)
