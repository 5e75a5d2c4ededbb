"""Heartbeats and the job event stream on Redis (:mod:`vaultq.brokers.monitor`).

Keys (one per namespace, sharing the hash tag ``{<namespace>}`` so they live in one
Redis Cluster slot; queue keys use ``{<namespace>:<queue>}`` and never collide):

* ``vaultq:{<ns>}:workers`` -- hash: worker name -> beat (JSON);
* ``vaultq:{<ns>}:workers:seen`` -- sorted set: worker name, scored by the broker time
  of its last beat;
* ``vaultq:{<ns>}:events`` -- stream, one field ``e`` (the event as JSON), trimmed with
  ``MAXLEN ~``; a batch of events is one script call.

A beat is one Lua script: stamp it with ``TIME``, store it, drop workers silent for
longer than ``forget``, and set both keys to expire after ``forget`` so a namespace whose
workers are all gone leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

from vaultq.brokers.monitor import (
    EVENTS_MAXLEN,
    WORKER_FORGET,
    JobEvent,
    WorkerBeat,
    decode_beat,
    decode_event,
    encode,
)

if TYPE_CHECKING:
    from vaultq.brokers.redis_urls import Client

__all__ = ["MonitorKeys", "RedisMonitoring"]

_PRUNE: Final = """
local function prune(now, forget)
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - forget, 'LIMIT', 0, 100)
  for _, name in ipairs(old) do
    redis.call('HDEL', KEYS[1], name)
    redis.call('ZREM', KEYS[2], name)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_BEAT: Final = (
    _PRUNE
    + """
-- ARGV: worker name, beat JSON, forget seconds
local forget = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
prune(now, forget)
local ttl = math.max(1, math.ceil(forget))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return tostring(now)
"""
)

_WORKERS: Final = (
    _PRUNE
    + """
-- ARGV: forget seconds. Returns {now, name1, time1, beat1, name2, ...}
prune(now, tonumber(ARGV[1]))
local seen = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local out = {tostring(now)}
for i = 1, #seen, 2 do
  out[#out + 1] = seen[i]
  out[#out + 1] = seen[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[1], seen[i]) or ''
end
return out
"""
)

_ADD_EVENTS: Final = """
-- ARGV: maxlen, then one event (JSON) per argument: one command for a whole batch, far
-- cheaper for the client than a pipeline of XADDs.
local maxlen = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i])
end
return #ARGV - 1
"""

_EVENT_FIELD: Final = "e"
_BLOCK_MAX: Final = 1.0
"""Longest single blocking read (well inside any socket timeout); followers loop."""


class MonitorKeys:
    """The key names of one namespace's heartbeats and events."""

    __slots__ = ("events", "seen", "workers")

    def __init__(self, namespace: str) -> None:
        prefix = f"vaultq:{{{namespace}}}:"
        self.workers = prefix + "workers"
        self.seen = prefix + "workers:seen"
        self.events = prefix + "events"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _raw(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class RedisMonitoring:
    """The :class:`~vaultq.brokers.monitor.Monitoring` operations, mixed into RedisBroker.

    It relies on the broker's connection (``_ready``), error mapping (``_boundary``) and
    namespace; the scripts are registered on first use (redis-py reloads them after a
    server restart).
    """

    if TYPE_CHECKING:
        _namespace: str

        async def _ready(self) -> Client: ...

        def _boundary(self, operation: str) -> AbstractContextManager[None]: ...

    _monitor_scripts: dict[int, tuple[Any, Any, Any]] | None = None

    @property
    def monitor_keys(self) -> MonitorKeys:
        return MonitorKeys(self._namespace)

    def _scripts_for(self, client: Client) -> tuple[Any, Any, Any]:
        # Registered per client: a clone or a reconnect gets its own client.
        cache = self._monitor_scripts
        if cache is None:
            cache = self._monitor_scripts = {}
        scripts = cache.get(id(client))
        if scripts is None:
            cache.clear()
            scripts = cache[id(client)] = (
                client.register_script(_BEAT),
                client.register_script(_WORKERS),
                client.register_script(_ADD_EVENTS),
            )
        return scripts

    async def beat(self, beat: WorkerBeat, *, forget: float = WORKER_FORGET) -> float:
        keys = self.monitor_keys
        with self._boundary("beat"):
            client = await self._ready()
            script = self._scripts_for(client)[0]
            now = await script(
                keys=[keys.workers, keys.seen], args=[beat.worker, encode(beat), forget]
            )
        return float(_text(now))

    async def forget_worker(self, worker: str) -> None:
        keys = self.monitor_keys
        with self._boundary("forget_worker"):
            client = await self._ready()
            pipe = client.pipeline(transaction=False)
            pipe.hdel(keys.workers, worker)
            pipe.zrem(keys.seen, worker)
            await pipe.execute()

    async def workers(self, *, forget: float = WORKER_FORGET) -> tuple[float, list[WorkerBeat]]:
        keys = self.monitor_keys
        with self._boundary("workers"):
            client = await self._ready()
            script = self._scripts_for(client)[1]
            reply = await script(keys=[keys.workers, keys.seen], args=[forget])
        now = float(_text(reply[0]))
        beats = []
        for i in range(1, len(reply) - 2, 3):
            try:
                at = float(_text(reply[i + 1]))
            except ValueError:
                continue
            beat = decode_beat(_raw(reply[i + 2]), at)
            if beat is not None:
                beats.append(beat)
        return now, beats

    async def add_events(self, events: Sequence[JobEvent], *, maxlen: int = EVENTS_MAXLEN) -> None:
        if not events:
            return
        key = self.monitor_keys.events
        with self._boundary("add_events"):
            client = await self._ready()
            script = self._scripts_for(client)[2]
            await script(keys=[key], args=[max(1, maxlen), *map(encode, events)])

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, block: float = 0.0
    ) -> list[JobEvent]:
        key = self.monitor_keys.events
        limit = max(1, limit)
        with self._boundary("read_events"):
            client = await self._ready()
            if after is None:
                rows = list(reversed(list(await client.xrevrange(key, count=limit) or [])))
            elif block > 0:
                ms = max(1, int(min(block, _BLOCK_MAX) * 1000))
                reply = await client.xread({key: after or "0-0"}, count=limit, block=ms)
                rows = _stream_rows(reply)
            else:
                reply = await client.xread({key: after or "0-0"}, count=limit)
                rows = _stream_rows(reply)
        return list(_events(rows))

    async def last_event_id(self) -> str:
        key = self.monitor_keys.events
        with self._boundary("last_event_id"):
            client = await self._ready()
            rows = await client.xrevrange(key, count=1)
        return _text(rows[0][0]) if rows else ""


def _stream_rows(reply: Any) -> list[Any]:
    """The entries of the one stream in an XREAD reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [row for rows in reply.values() for row in rows]
    return [row for _, rows in reply for row in rows]


def _events(rows: Sequence[Any]) -> Iterator[JobEvent]:
    for entry_id, fields in rows:
        if isinstance(fields, dict):
            data = fields.get(_EVENT_FIELD.encode(), fields.get(_EVENT_FIELD))
        else:
            items = list(fields)
            pairs = {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}
            data = pairs.get(_EVENT_FIELD)
        if data is None:
            continue
        event = decode_event(_raw(data), _text(entry_id))
        if event is not None:
            yield event
