"""A broker as a third party would ship it: its own package, registered for the scheme
``thirdparty://`` through the ``vaultq.brokers`` entry point (see the ``.dist-info``
beside this directory), using only vaultq's public broker protocol.

It keeps its jobs in the embedded SQLite store (``thirdparty:///path/db`` opens
``sqlite:///path/db``), reached through the protocol's methods only (it wraps, it does
not subclass), so the contract
suite run against it checks that registration, capabilities and every operation pass
through what a package outside vaultq can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vaultq.brokers import Broker, BrokerCapabilities
from vaultq.brokers.base import (
    CancelState,
    DeadLetter,
    Delivery,
    EnqueueItem,
    JobInfo,
    Limits,
    QueuedEntry,
    QueueStats,
    ScheduleMark,
    Settlement,
    TickStore,
    Tombstones,
    UniqueKeys,
)
from vaultq.brokers.chords import ChordStore
from vaultq.brokers.sqlite import SqliteBroker
from vaultq.errors import ConfigurationError

SCHEME = "thirdparty"


class ThirdPartyBroker:
    """``thirdparty:///path/to/db``: the embedded store behind a broker of another package."""

    def __init__(self, url: str, *, namespace: str, **options: Any) -> None:
        if not url.startswith(SCHEME + "://"):
            raise ConfigurationError(f"ThirdPartyBroker takes {SCHEME}:// URLs, not {url!r}")
        self._url = url
        self._options = options
        store = SqliteBroker("sqlite" + url[len(SCHEME) :], namespace=namespace, **options)
        self._store: Broker = store
        self._ticks: TickStore = store
        self._limits: Limits = store
        self._unique: UniqueKeys = store
        self._chords: ChordStore = store
        self._tombstones: Tombstones = store

    @property
    def url(self) -> str:
        return self._url

    @property
    def namespace(self) -> str:
        return self._store.namespace

    @property
    def capabilities(self) -> BrokerCapabilities:
        return self._store.capabilities

    def clone(self) -> ThirdPartyBroker:
        return ThirdPartyBroker(self._url, namespace=self.namespace, **self._options)

    async def connect(self) -> None:
        await self._store.connect()

    async def close(self) -> None:
        await self._store.close()

    async def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        await self._store.enqueue(items)

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        return await self._store.enqueue_unique(item, ttl=ttl)

    async def fetch(
        self,
        queues: Sequence[str],
        count: int,
        *,
        consumer: str,
        lease: float,
        block: float,
        max_size: int | None = None,
    ) -> list[Delivery]:
        return await self._store.fetch(
            queues, count, consumer=consumer, lease=lease, block=block, max_size=max_size
        )

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        return await self._store.extend(deliveries, consumer=consumer, lease=lease)

    async def time(self) -> float:
        return await self._store.time()

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        await self._store.settle(settlements)

    async def get_result(self, queue: str, job_id: str) -> bytes | None:
        return await self._store.get_result(queue, job_id)

    async def wait_result(self, queue: str, job_id: str, timeout: float) -> bytes | None:
        return await self._store.wait_result(queue, job_id, timeout)

    async def is_running(self, queue: str, job_id: str) -> bool:
        return await self._store.is_running(queue, job_id)

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState:
        return await self._store.cancel(queue, job_id, ttl=ttl)

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        return await self._store.cancelled(queue, job_ids)

    async def stats(self, queue: str) -> QueueStats:
        return await self._store.stats(queue)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self._store.dead_letters(queue, limit=limit)

    async def purge_dead(self, queue: str) -> int:
        return await self._store.purge_dead(queue)

    async def job_info(self, queue: str, job_id: str) -> JobInfo:
        return await self._store.job_info(queue, job_id)

    async def cancel_queued(
        self, info: JobInfo, *, result: bytes | None, result_ttl: float, remember_until: float
    ) -> bool:
        return await self._store.cancel_queued(
            info, result=result, result_ttl=result_ttl, remember_until=remember_until
        )

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        return await self._store.retry_dead(queue, tag)

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        return await self._store.queued(queue, limit=limit)

    async def counters(self, queue: str) -> dict[str, int]:
        return await self._store.counters(queue)

    # -- the optional protocols it offers too: periodic ticks, unique keys, limits --------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        return await self._ticks.claim_tick(item, schedule=schedule, tick=tick, ttl=ttl)

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        return await self._ticks.mark_schedule(queue, schedule, tick, only_if_absent=only_if_absent)

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        return await self._ticks.schedule_marks(queue)

    async def tombstone(
        self,
        queue: str,
        job_id: str,
        *,
        result: bytes,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        return await self._tombstones.tombstone(
            queue, job_id, result=result, result_ttl=result_ttl, remember_until=remember_until
        )

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        return await self._unique.enqueue_keyed(item, key=key, key_ttl=key_ttl, ttl=ttl)

    async def check_limits(
        self,
        queue: str,
        job_id: str,
        *,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        keep: float,
    ) -> float:
        return await self._limits.check_limits(
            queue, job_id, concurrency=concurrency, rate=rate, keep=keep
        )

    async def chord_arrive(
        self, queue: str, chord: str, member: int, result: bytes, *, total: int, until: float
    ) -> bool:
        return await self._chords.chord_arrive(
            queue, chord, member, result, total=total, until=until
        )

    async def chord_results(self, queue: str, chord: str) -> dict[int, bytes]:
        return await self._chords.chord_results(queue, chord)
