"""The Redis broker's result reads, job-state queries, statistics, dead letters and
operator tools (``vaultq stats``, ``vaultq dead``, ``vaultq job``, ``vaultq cancel``),
as a base class of :class:`~vaultq.brokers.redis.RedisBroker`: off the fetch and settle
path.

Internal to :mod:`vaultq.brokers.redis`; the names here are not public API.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from vaultq.brokers.base import (
    JOB_INFO_DEAD_SCAN,
    RETRYABLE_REASONS,
    CancelState,
    DeadLetter,
    JobInfo,
    QueuedEntry,
    QueueStats,
)
from vaultq.brokers.redis_layout import (
    SCAN_PAGE,
    QueueKeys,
    as_bytes,
    attempt_of,
    dead_letter,
    fields,
    glob_escape,
    info_tag,
    ms,
    number,
    seconds_of,
    split_info_tag,
    text,
)
from vaultq.brokers.redis_urls import Client, block_limit

__all__ = ["RedisOperatorTools"]


class RedisOperatorTools:
    """Results, job state and what :class:`RedisBroker` offers operators, through the
    broker's own connection, scripts and error mapping (declared here for the type
    checker)."""

    if TYPE_CHECKING:

        def keys(self, queue: str) -> QueueKeys: ...

        async def _ready(self) -> Client: ...

        def _boundary(self, operation: str) -> contextlib.AbstractContextManager[None]: ...

        async def _run_batch(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]: ...

    # -- results --------------------------------------------------------------------------

    async def get_result(self, queue: str, job_id: str) -> bytes | None:
        with self._boundary("get_result"):
            client = await self._ready()
            value = await client.lindex(self.keys(queue).result(job_id), 0)
        return as_bytes(value)

    async def wait_result(self, queue: str, job_id: str, timeout: float) -> bytes | None:
        if timeout <= 0:
            return await self.get_result(queue, job_id)
        key = self.keys(queue).result(job_id)
        deadline = time.monotonic() + timeout
        with self._boundary("wait_result"):
            client = await self._ready()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                # BLMOVE from the one-element result list to itself returns at once when
                # the result exists and otherwise blocks until it is written; the rotation
                # leaves the list (and its TTL) as it was, so every waiter sees it. redis-py
                # types the timeout as int; the server takes decimal seconds.
                wait: Any = max(0.01, min(remaining, block_limit(client)))
                value = await client.blmove(key, key, wait, "LEFT", "LEFT")
                if value is not None:
                    return as_bytes(value)

    # -- job state -----------------------------------------------------------------------

    async def is_running(self, queue: str, job_id: str) -> bool:
        with self._boundary("is_running"):
            client = await self._ready()
            return bool(await client.exists(self.keys(queue).claim(job_id)))

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState:
        keys = self.keys(queue)
        with self._boundary("cancel"):
            (reply,) = await self._run_batch([("cancel", keys, [job_id, ms(ttl)])])
        return CancelState(text(reply))

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        keys = self.keys(queue)
        with self._boundary("cancelled"):
            (flags,) = await self._run_batch([("cancelled", keys, list(job_ids))])
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    # -- inspection --------------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        # One stats call per priority level (each has its stream and delayed set).
        calls: list[tuple[str, QueueKeys, list[Any]]] = [
            ("stats", keys, []) for keys in self.keys(queue).levels()
        ]
        with self._boundary("stats"):
            replies = await self._run_batch(calls)
        ready = delayed = running = dead = 0
        for length, pending, waiting, buried in replies:
            ready += max(0, int(length) - int(pending))
            delayed += int(waiting)
            running += int(pending)
            dead = int(buried)  # the queue's one dead-letter stream, the same in each
        return QueueStats(queue=queue, ready=ready, delayed=delayed, running=running, dead=dead)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._boundary("dead_letters"):
            client = await self._ready()
            entries = await client.xrevrange(self.keys(queue).dead, count=limit)
        letters = []
        for entry_id, raw in entries or []:
            f = fields(raw)
            letters.append(
                DeadLetter(
                    queue=queue,
                    job_id=text(f.get("id", b"")),
                    reason=text(f.get("reason", b"")),
                    detail=text(f.get("detail", b"")),
                    attempt=attempt_of(f.get("att", b"0"), least=0),
                    at=seconds_of(f.get("at", b"0")),
                    tag=text(entry_id),
                    size=int(number(f.get("size", b"0"))),
                    stub="env" not in f,
                )
            )
        return letters

    async def counters(self, queue: str) -> dict[str, int]:
        keys = self.keys(queue)
        with self._boundary("counters"):
            (flat,) = await self._run_batch([("counters", keys, [])])
        pairs = fields(flat)
        return {name: int(number(value)) for name, value in pairs.items()}

    async def purge_dead(self, queue: str) -> int:
        keys = self.keys(queue)
        with self._boundary("purge_dead"):
            (count,) = await self._run_batch([("purge_dead", keys, [])])
        return int(count)

    # -- operator tools ------------------------------------------------------------------
    # These scan the queue's stream, delayed set and dead letters from the client in
    # pages (never one long script), so they cost O(queue length) round trips of
    # SCAN_PAGE entries: fine for an operator's command, not for a hot path.

    async def job_info(self, queue: str, job_id: str) -> JobInfo:
        keys = self.keys(queue)
        with self._boundary("job_info"):
            client = await self._ready()
            claimed = bool(await client.exists(keys.claim(job_id)))
            cancel = bool(await client.exists(keys.cancel(job_id)))
            finished = await self._remembered(client, keys, job_id)
            dead = await self._dead_of(client, keys, queue, job_id)
            base = JobInfo(
                queue=queue,
                job_id=job_id,
                state="absent",
                cancel_requested=cancel,
                finished=finished,
                dead=dead,
            )
            for at in keys.levels():
                found = await self._find_in_stream(client, at, job_id)
                if found is not None:
                    entry_id, f = found
                    return msgspec.structs.replace(
                        base,
                        state="running" if claimed else "queued",
                        attempt=attempt_of(f.get("att", b"1")),
                        enqueued_at=seconds_of(f.get("at", b"0")),
                        tag=info_tag(at.level, entry_id),
                        envelope=as_bytes(f.get("env")) or b"",
                    )
            for at in keys.levels():
                member = await self._find_delayed(client, at, job_id)
                if member is not None:
                    name, score = member
                    _, attempt, enqueued_at, _unique = name.rsplit("|", 3)
                    envelope = await client.hget(at.delayed_data, name)
                    return msgspec.structs.replace(
                        base,
                        state="delayed",
                        attempt=attempt_of(attempt),
                        enqueued_at=seconds_of(enqueued_at),
                        not_before=score,
                        tag=info_tag(at.level, name),
                        envelope=as_bytes(envelope) or b"",
                    )
            if claimed:
                return msgspec.structs.replace(base, state="running")
        return base

    async def _remembered(self, client: Client, keys: QueueKeys, job_id: str) -> bool:
        hour = int(time.time() // 3600)
        for raw in await client.zrangebyscore(keys.done_index, hour - 1, "+inf"):
            if await client.sismember(keys.done(int(number(raw))), job_id):
                return True
        return False

    async def _find_in_stream(
        self, client: Client, keys: QueueKeys, job_id: str
    ) -> tuple[str, dict[str, bytes]] | None:
        low = "-"
        while True:
            entries = await client.xrange(keys.stream, min=low, max="+", count=SCAN_PAGE)
            for entry_id, raw in entries or []:
                f = fields(raw)
                if text(f.get("id", b"")) == job_id:
                    return text(entry_id), f
            if not entries or len(entries) < SCAN_PAGE:
                return None
            low = "(" + text(entries[-1][0])

    async def _find_delayed(
        self, client: Client, keys: QueueKeys, job_id: str
    ) -> tuple[str, float] | None:
        pattern = glob_escape(job_id) + "|*"
        async for member, score in client.zscan_iter(keys.delayed, match=pattern):
            name = text(member)
            if name.rsplit("|", 3)[0] == job_id:
                return name, float(score)
        return None

    async def _dead_of(
        self, client: Client, keys: QueueKeys, queue: str, job_id: str
    ) -> DeadLetter | None:
        high = "+"
        seen = 0
        while seen < JOB_INFO_DEAD_SCAN:
            entries = await client.xrevrange(keys.dead, max=high, min="-", count=SCAN_PAGE)
            for entry_id, raw in entries or []:
                f = fields(raw)
                if text(f.get("id", b"")) == job_id:
                    return dead_letter(queue, entry_id, f)
            if not entries or len(entries) < SCAN_PAGE:
                return None
            seen += len(entries)
            high = "(" + text(entries[-1][0])
        return None

    async def cancel_queued(
        self,
        info: JobInfo,
        *,
        result: bytes | None,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        if info.state not in ("queued", "delayed") or not info.tag:
            return False
        level, tag = split_info_tag(info.tag)
        keys = self.keys(info.queue).at(level)
        kind = "stream" if info.state == "queued" else "delayed"
        args = [
            kind,
            tag,
            info.job_id,
            int(result is not None),
            result if result is not None else b"",
            ms(result_ttl),
            repr(float(remember_until)),
        ]
        with self._boundary("cancel_queued"):
            (done,) = await self._run_batch([("cancel_queued", keys, args)])
        return bool(int(done))

    async def tombstone(
        self,
        queue: str,
        job_id: str,
        *,
        result: bytes,
        result_ttl: float,
        remember_until: float,
    ) -> bool:
        args = [job_id, result, ms(result_ttl), repr(float(remember_until))]
        with self._boundary("tombstone"):
            (done,) = await self._run_batch([("tombstone", self.keys(queue), args)])
        return bool(int(done))

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        keys = self.keys(queue)
        reasons = ",".join(sorted(RETRYABLE_REASONS))
        with self._boundary("retry_dead"):
            (reply,) = await self._run_batch([("retry_dead", keys, [tag, reasons])])
        if not reply or text(reply[0]) != "ok":
            return None
        _, job_id, reason, detail, attempt, at = reply
        return DeadLetter(
            queue=queue,
            job_id=text(job_id),
            reason=text(reason),
            detail=text(detail),
            attempt=attempt_of(attempt, least=0),
            at=seconds_of(at),
            tag=tag,
        )

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        if limit <= 0:
            return []
        levels = self.keys(queue).levels()
        out: list[QueuedEntry] = []
        with self._boundary("queued"):
            client = await self._ready()
            for keys in levels:  # the streams of every priority level, highest first
                if len(out) < limit:
                    entries = await client.xrange(keys.stream, count=limit - len(out))
                    out += [
                        QueuedEntry(queue, text(f.get("id", b"")), as_bytes(f.get("env")) or b"")
                        for f in (fields(raw) for _, raw in entries or [])
                    ]
            for keys in levels:
                if len(out) < limit:
                    # Delayed jobs and retries: member "<job id>|<attempt>|..." -> envelope.
                    members: list[Any] = list(
                        await client.zrange(keys.delayed, 0, limit - len(out) - 1)
                    )
                    if members:
                        envelopes = await client.hmget(keys.delayed_data, members)
                        for member, env in zip(members, envelopes, strict=True):
                            data = as_bytes(env)
                            if data is not None:
                                job_id = text(member).partition("|")[0]
                                out.append(QueuedEntry(queue, job_id, data))
        return out
