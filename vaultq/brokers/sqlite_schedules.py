"""The SQLite broker's scheduling operations: periodic ticks claimed once
(:class:`~vaultq.brokers.base.TickStore`, rows in ``sqlite_ticks.py``), unique-key
enqueues (:class:`~vaultq.brokers.base.UniqueKeys`, ``sqlite_unique.py``) and task limits
(:class:`~vaultq.brokers.base.Limits`, ``sqlite_limits.py``), each one
transaction, as a base class of :class:`~vaultq.brokers.sqlite.SqliteBroker`.

Internal to :mod:`vaultq.brokers.sqlite`; the names here are not public API.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from vaultq.brokers import sqlite_limits, sqlite_ticks, sqlite_unique
from vaultq.brokers.base import EnqueueItem, ScheduleMark
from vaultq.brokers.sqlite_file import immediate

__all__ = ["SqliteSchedules"]

T = TypeVar("T")


class SqliteSchedules:
    """Ticks and unique keys, through the broker's own connection plumbing (declared
    here for the type checker)."""

    _namespace: str

    if TYPE_CHECKING:

        async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _notify_enqueued(self) -> None: ...

    # -- schedules (TickStore) -------------------------------------------------------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        # ttl is not needed here: the job row reserves the id until it is settled, and
        # the finished-id memory takes over from then.
        ns = self._namespace
        written = await self._run(
            "claim_tick",
            partial(
                sqlite_ticks.claim_tick,
                immediate=immediate,
                ns=ns,
                item=item,
                schedule=schedule,
                tick=tick,
            ),
        )
        if written:
            self._notify_enqueued()
        return written

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        return await self._run(
            "mark_schedule",
            partial(
                sqlite_ticks.mark_schedule,
                immediate=immediate,
                ns=self._namespace,
                queue=queue,
                schedule=schedule,
                tick=tick,
                only_if_absent=only_if_absent,
            ),
        )

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        # ttl is not needed here: the job row reserves the id until it is settled.
        holder = await self._run(
            "enqueue",
            partial(
                sqlite_unique.enqueue_keyed,
                immediate=immediate,
                ns=self._namespace,
                item=item,
                key=key,
                key_ttl=key_ttl,
            ),
        )
        if holder == item.job_id:
            self._notify_enqueued()
        return holder

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        return await self._run(
            "schedule_marks", partial(sqlite_ticks.schedule_marks, ns=self._namespace, queue=queue)
        )

    # -- limits (Limits) -------------------------------------------------------------

    async def check_limits(
        self,
        queue: str,
        job_id: str,
        *,
        concurrency: tuple[str, int] | None,
        rate: tuple[str, float] | None,
        keep: float,
    ) -> float:
        return await self._run(
            "check_limits",
            partial(
                sqlite_limits.check_limits,
                immediate=immediate,
                ns=self._namespace,
                queue=queue,
                job_id=job_id,
                concurrency=concurrency,
                rate=rate,
                keep=keep,
            ),
        )
