"""The Redis broker's scheduling operations: periodic ticks claimed once
(:class:`~vaultq.brokers.base.TickStore`), unique-key enqueues
(:class:`~vaultq.brokers.base.UniqueKeys`) and task limits
(:class:`~vaultq.brokers.base.Limits`), each one Lua script on the queue's slot,
as a base class of :class:`~vaultq.brokers.redis.RedisBroker`.

Internal to :mod:`vaultq.brokers.redis`; the names here are not public API.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from vaultq.brokers.base import EnqueueItem, ScheduleMark
from vaultq.brokers.redis_layout import QueueKeys, ms, number, text, tick_arg
from vaultq.brokers.redis_urls import Client
from vaultq.brokers.redis_writes import keyed_call

__all__ = ["RedisSchedules"]


class RedisSchedules:
    """Ticks and unique keys, through the broker's own scripts and error mapping
    (declared here for the type checker)."""

    if TYPE_CHECKING:

        def keys(self, queue: str) -> QueueKeys: ...

        async def _ready(self) -> Client: ...

        def _boundary(self, operation: str) -> contextlib.AbstractContextManager[None]: ...

        async def _run_batch(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]: ...

    # -- schedules (TickStore) ----------------------------------------------------------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        args = [
            schedule,
            tick_arg(tick),
            item.job_id,
            item.envelope,
            f"{time.time():.6f}",
            ms(ttl),
        ]
        with self._boundary("claim_tick"):
            (written,) = await self._run_batch(
                [("claim_tick", self.keys(item.queue).at(item.priority), args)]
            )
        return bool(written)

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        args = [schedule, tick_arg(tick), "1" if only_if_absent else ""]
        with self._boundary("mark_schedule"):
            (mark,) = await self._run_batch([("mark_schedule", self.keys(queue), args)])
        return number(mark)

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        with self._boundary("enqueue"):
            (holder,) = await self._run_batch([keyed_call(self.keys, item, key, key_ttl, ttl)])
        return text(holder)

    # -- limits (Limits) ----------------------------------------------------------------

    async def check_limits(
        self,
        queue: str,
        job_id: str,
        *,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        keep: float,
    ) -> float:
        args = [
            job_id,
            "" if concurrency is None else concurrency[0],
            "0" if concurrency is None else str(int(concurrency[1])),
            "" if rate is None else rate[0],
            "0" if rate is None else str(ms(rate[1])),
            ms(keep),
        ]
        with self._boundary("check_limits"):
            (wait,) = await self._run_batch([("limit", self.keys(queue), args)])
        wait_ms = int(wait)
        return -1.0 if wait_ms < 0 else wait_ms / 1000

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        with self._boundary("schedule_marks"):
            client = await self._ready()
            raw = await client.hgetall(self.keys(queue).schedules)
        fields = {text(k): number(v) for k, v in raw.items()}
        return [
            ScheduleMark(name=key[2:], mark=mark, fired=fields.get("f:" + key[2:]))
            for key, mark in sorted(fields.items())
            if key.startswith("m:")
        ]
