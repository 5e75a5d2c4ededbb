"""The Redis broker: one stream per queue with a consumer group, for many hosts.

How the protocol maps onto Redis (``docs/redis.md`` has the full key layout):

* a job is a stream entry (fields ``id``, ``env``, ``att``, ``at``) of the queue's
  stream, read by the consumer group ``vaultq``; settling removes it (XACK + XDEL), so
  the stream only ever holds jobs that are waiting or running;
* fetch runs one Lua script per queue that promotes due delayed jobs, reclaims entries
  whose lease ran out (XAUTOCLAIM), reads new ones (XREADGROUP), claims each job id
  (SET NX PX) and reports the finished/cancel flags: one round trip for a whole batch;
* delayed jobs and retries wait in a sorted set scored by their not-before time;
* results are one-element lists, so ``wait_result`` is a blocking BLMOVE;
* finished ids are remembered in one set per expiry hour that Redis expires itself.

Every key of a queue shares the hash tag ``{<namespace>:<queue>}``, so a queue lives in
one Redis Cluster slot and every script only touches keys of that slot. All key names
are built by :class:`QueueKeys` (the Lua scripts get the same names through a header
generated from it). On a cluster client (``redis+cluster://``) nothing spans two slots:
an enqueue batch is one MULTI per slot and an idle fetch waits on each slot's streams
concurrently; Sentinel (``redis+sentinel://``) is a plain client to the current master.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from vaultq import config
from vaultq.brokers.base import (
    JOB_INFO_DEAD_SCAN,
    RETRYABLE_REASONS,
    Ack,
    BrokerCapabilities,
    Bury,
    CancelState,
    DeadLetter,
    Delivery,
    Drop,
    EnqueueItem,
    JobInfo,
    QueuedEntry,
    QueueStats,
    Release,
    Retry,
    ScheduleMark,
    Settlement,
)
from vaultq.brokers.redis_monitor import RedisMonitoring
from vaultq.brokers.redis_urls import URL_FORMS, URL_SCHEMES, Client, client_from_url
from vaultq.config import mask_url
from vaultq.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["ENQUEUE_DEDUP_WINDOW", "GROUP", "QueueKeys", "RedisBroker"]

logger = logging.getLogger("vaultq.brokers.redis")

GROUP: Final = "vaultq"
"""Name of the consumer group every queue stream is read through."""

ENQUEUE_DEDUP_WINDOW: Final = 15.0
"""Seconds ``enqueue`` remembers the digest of each job it wrote, so that sending the same
sealed job again (a producer retrying after an unreadable reply) is a no-op. It covers a
write that landed while its reply timed out (``socket_timeout``, 5 s) plus the retry budget
(``enqueue_retry``, 2 s); the cost is one small key (~100 bytes) per job enqueued in the
window."""
_CAPABILITIES: Final = BrokerCapabilities(shared=True)
_PROMOTE_LIMIT: Final = 500
"""Delayed jobs promoted per fetch call at most, to bound the time one script runs."""
_SCRIPTS: Final = (
    "enqueue",
    "fetch",
    "extend",
    "ack",
    "requeue",
    "bury",
    "cancel",
    "cancelled",
    "stats",
    "purge_dead",
    "forget_consumer",
    "cancel_queued",
    "retry_dead",
    "drop",
    "enqueue_unique",
    "counters",
    "claim_tick",
    "mark_schedule",
    "enqueue_keyed",
)


class QueueKeys:
    """Every Redis key name of one queue, in one place.

    All names start with ``vaultq:{<namespace>:<queue>}:`` so they share a hash tag.
    """

    STREAM: Final = "stream"
    DELAYED: Final = "delayed"
    DELAYED_DATA: Final = "delayed:data"
    DEAD: Final = "dead"
    DONE: Final = "done"
    RECLAIM: Final = "reclaim"
    RESULT: Final = "result:"
    CLAIM: Final = "claim:"
    CANCEL: Final = "cancel:"
    ENQUEUED: Final = "enq:"
    JOB: Final = "job:"
    COUNTERS: Final = "counters"
    SCHEDULES: Final = "schedules"
    UNIQUE: Final = "unique:"

    __slots__ = ("prefix", "queue")

    def __init__(self, namespace: str, queue: str) -> None:
        _check_name("queue", queue)
        self.queue = queue
        self.prefix = f"vaultq:{{{namespace}:{queue}}}:"

    @property
    def stream(self) -> str:
        return self.prefix + self.STREAM

    @property
    def delayed(self) -> str:
        """Sorted set: member ``<job id>|<attempt>|<enqueued at>|<unique>``, score not-before."""
        return self.prefix + self.DELAYED

    @property
    def delayed_data(self) -> str:
        """Hash: delayed member -> sealed envelope."""
        return self.prefix + self.DELAYED_DATA

    @property
    def dead(self) -> str:
        return self.prefix + self.DEAD

    @property
    def done_index(self) -> str:
        """Sorted set of the hours that have a finished-id set."""
        return self.prefix + self.DONE

    def done(self, hour: int) -> str:
        """Set of ids finished with a remember-until time in ``hour`` (Unix hours)."""
        return f"{self.prefix}{self.DONE}:{hour}"

    @property
    def reclaim_cursor(self) -> str:
        return self.prefix + self.RECLAIM

    def result(self, job_id: str) -> str:
        return self.prefix + self.RESULT + job_id

    def claim(self, job_id: str) -> str:
        return self.prefix + self.CLAIM + job_id

    def cancel(self, job_id: str) -> str:
        return self.prefix + self.CANCEL + job_id

    def enqueued(self, job_id: str) -> str:
        """Marker of a job id written in the last :data:`ENQUEUE_DEDUP_WINDOW` seconds."""
        return self.prefix + self.ENQUEUED + job_id

    def job(self, job_id: str) -> str:
        """Reservation of an id written by ``enqueue_unique`` (until settled or expired)."""
        return self.prefix + self.JOB + job_id

    @property
    def counters(self) -> str:
        """Hash: reason -> entries removed without a dead letter (duplicates, replays)."""
        return self.prefix + self.COUNTERS

    @property
    def schedules(self) -> str:
        """Hash: ``m:<schedule>`` -> mark (newest tick claimed or passed over),
        ``f:<schedule>`` -> newest tick that enqueued a job."""
        return self.prefix + self.SCHEDULES

    def unique(self, key: str) -> str:
        """Lock of a unique key (a digest): the job id holding it (``enqueue_keyed``)."""
        return self.prefix + self.UNIQUE + key

    @classmethod
    def lua_header(cls) -> str:
        """Lua locals naming the same keys, prepended to every script (ARGV[1] = prefix)."""
        names = {
            "STREAM": "KEYS[1]",
            "DELAYED": f"P .. '{cls.DELAYED}'",
            "DELAYED_DATA": f"P .. '{cls.DELAYED_DATA}'",
            "DEAD": f"P .. '{cls.DEAD}'",
            "DONE": f"P .. '{cls.DONE}'",
            "RECLAIM": f"P .. '{cls.RECLAIM}'",
            "RESULT": f"P .. '{cls.RESULT}'",
            "CLAIM": f"P .. '{cls.CLAIM}'",
            "CANCEL": f"P .. '{cls.CANCEL}'",
            "ENQUEUED": f"P .. '{cls.ENQUEUED}'",
            "JOB": f"P .. '{cls.JOB}'",
            "COUNTERS": f"P .. '{cls.COUNTERS}'",
            "SCHEDULES": f"P .. '{cls.SCHEDULES}'",
            "UNIQUE": f"P .. '{cls.UNIQUE}'",
        }
        lines = ["local P = ARGV[1]", f"local GROUP = '{GROUP}'"]
        lines += [f"local {name} = {value}" for name, value in names.items()]
        return "\n".join(lines) + "\n"


def _check_name(what: str, name: str) -> None:
    # Braces would move the hash tag; ':' in a namespace would let "a"+"b:c" and
    # "a:b"+"c" share keys; whitespace and control characters make redis-cli painful.
    bad = set("{}") | ({":"} if what == "namespace" else set())
    if not name or any(c in bad or c.isspace() or not c.isprintable() for c in name):
        raise ConfigurationError(
            f"invalid {what} name {name!r}: use a non-empty name without braces, "
            f"whitespace{' or colons' if what == 'namespace' else ''}"
        )


def _load_script(name: str) -> str:
    lua = resources.files("vaultq.brokers").joinpath("lua")
    common = lua.joinpath("common.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return QueueKeys.lua_header() + common + body


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _fields(raw: Any) -> dict[str, bytes]:
    """A stream entry's fields (dict or flat list, depending on the reply parser)."""
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def _attempt(value: Any, *, least: int = 1) -> int:
    """An entry's attempt count. Fields are written by whoever can write to Redis: a
    value that is not a sane integer must not crash the worker (or ``vaultq dead list``)."""
    try:
        return max(least, int(value))
    except (TypeError, ValueError):
        return least


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _tag_entry(tag: str) -> str:
    """The stream entry id inside a delivery tag ``<entry id>/<nonce>``."""
    return tag.partition("/")[0]


def _lease_args(deliveries: Sequence[Delivery]) -> list[str]:
    """(entry id, tag, job id) of each delivery, flat: the extend script's arguments."""
    return [a for d in deliveries for a in (_tag_entry(d.tag), d.tag, d.job_id)]


_CLUSTER_CALLS: Final = 16
"""Script calls of one batch in flight at once on a cluster client (no pipelining)."""

_REDIS_PY_DEFAULT_SOCKET_TIMEOUT = 5.0
"""What redis-py >= 8 uses when the URL sets no ``socket_timeout`` (earlier: none)."""


def _block_limit(client: Client) -> float:
    """Longest blocking read that fits in the client's socket timeout (if it has one)."""
    if isinstance(client, RedisCluster):
        kwargs = client.get_connection_kwargs()
    else:
        kwargs = client.connection_pool.connection_kwargs
    # redis-py >= 8 gives connections a 5 s socket timeout without listing it in the pool's
    # kwargs: an absent key must not be read as "no timeout", or every blocking read
    # longer than 5 s (result(timeout=10), --wait) fails with a read timeout.
    socket_timeout = kwargs.get("socket_timeout", _REDIS_PY_DEFAULT_SOCKET_TIMEOUT)
    if not socket_timeout:
        return float("inf")
    return max(0.05, float(socket_timeout) / 2)


def _tick(tick: float) -> str:
    # Ticks are whole seconds; one spelling so Lua compares the numbers it stored.
    return str(int(tick))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _slot_groups(keys: Sequence[str]) -> list[list[str]]:
    """``keys`` grouped by Redis Cluster hash slot (first-seen order)."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return list(groups.values())


class RedisBroker(RedisMonitoring):
    """Redis Streams broker (also works with Valkey).

    ``url`` is ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
    ``unix:///path/to/redis.sock``, ``redis+cluster://[[user]:password@]host:port[,...]``
    (Redis Cluster, startup nodes; ``rediss+cluster://`` for TLS) or
    ``redis+sentinel://[[user]:password@]host:port[,...]/service_name[/db]`` (the master
    of ``service_name`` as reported by these Sentinels; ``rediss+sentinel://`` for TLS).
    Query options are passed to redis-py (``?socket_timeout=5``, ``?max_connections=200``
    ...). ``client_factory`` (used for this broker and each clone) or ``client`` hand it a
    ready-made ``redis.asyncio.Redis`` or ``RedisCluster`` instead.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        client: Client | None = None,
        client_factory: Callable[[], Client] | None = None,
        dead_letter_max: int = config.DEFAULT_DEAD_LETTER_MAX,
        dead_letter_age: float = config.DEFAULT_DEAD_LETTER_AGE,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if client is None and client_factory is None and scheme not in URL_SCHEMES:
            raise ConfigurationError(f"unsupported Redis URL scheme {scheme!r}: use {URL_FORMS}")
        _check_name("namespace", namespace)
        self._raw_url = url
        self._url = mask_url(url)
        self._namespace = namespace
        self._factory = client_factory
        self._client = client
        self._helpers: list[aioredis.Redis] = []
        self._cluster = isinstance(client, RedisCluster)
        self._owns_client = False
        self._scripts: dict[str, Any] = {}
        self._keys: dict[str, QueueKeys] = {}
        self._consumers: set[tuple[str, str]] = set()
        self._dead_max = max(1, int(dead_letter_max))
        self._dead_age_ms = _ms(dead_letter_age)

    def __repr__(self) -> str:
        return f"RedisBroker({self._url!r}, namespace={self._namespace!r})"

    @property
    def url(self) -> str:
        return self._url

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def capabilities(self) -> BrokerCapabilities:
        return _CAPABILITIES

    @property
    def shared(self) -> bool:
        """``capabilities.shared`` (kept for callers of the old name)."""
        return True

    def clone(self) -> RedisBroker:
        return RedisBroker(
            self._raw_url,
            namespace=self._namespace,
            client_factory=self._factory,
            dead_letter_max=self._dead_max,
            dead_letter_age=self._dead_age_ms / 1000,
        )

    def keys(self, queue: str) -> QueueKeys:
        """The key names of ``queue`` (for tools and tests)."""
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys(self._namespace, queue)
        return keys

    # -- connection ---------------------------------------------------------------

    async def connect(self) -> None:
        await self._ready()

    async def _ready(self) -> Client:
        client = self._client
        if client is not None and self._scripts:
            return client
        if client is None:
            if self._factory is not None:
                client = self._factory()
            else:
                client, self._helpers = client_from_url(self._raw_url, self._url)
            self._client = client
            self._cluster = isinstance(client, RedisCluster)
            self._owns_client = True
        with self._boundary("connect"):
            await client.ping()
            scripts = {name: client.register_script(_load_script(name)) for name in _SCRIPTS}
            # Load them now so the hot path never sees NOSCRIPT (it is still handled
            # after a server restart or a failover).
            if isinstance(client, RedisCluster):
                # SCRIPT LOAD has no key: the cluster client sends it to every primary.
                for script in scripts.values():
                    await client.script_load(script.script)
            else:
                pipe = client.pipeline(transaction=False)
                for script in scripts.values():
                    pipe.script_load(script.script)
                await pipe.execute()
        self._scripts = scripts
        return client

    async def close(self) -> None:
        client = self._client
        if client is None:
            return
        if self._scripts and self._consumers:
            try:
                for queue, consumer in sorted(self._consumers):
                    keys = self.keys(queue)
                    await self._scripts["forget_consumer"](
                        keys=[keys.stream], args=[keys.prefix, consumer]
                    )
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.debug("could not tidy consumers on close: %s", type(exc).__name__)
        self._consumers.clear()
        self._scripts = {}
        if self._owns_client:
            self._client = None
            self._owns_client = False
            helpers, self._helpers = self._helpers, []
            await client.aclose()
            for helper in helpers:
                await helper.aclose()

    @contextlib.contextmanager
    def _boundary(self, operation: str) -> Iterator[None]:
        """Map redis-py exceptions to the vaultq error tree."""
        try:
            yield
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            # A failover in progress: the node is a replica now (READONLY), or the cluster
            # is moving slots (TRYAGAIN, CLUSTERDOWN). Transient, like a refused connection.
            redis.exceptions.ReadOnlyError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
            OSError,
        ) as exc:
            raise BrokerUnavailable(
                f"Redis at {self._url} is unavailable during {operation} "
                f"({type(exc).__name__}: {str(exc)[:200]}); check the URL, the network "
                "and credentials, then retry"
            ) from exc
        except redis.exceptions.NoPermissionError as exc:
            raise BrokerError(
                f"Redis refused {operation} for this ACL user ({str(exc)[:200]}); grant the "
                "commands listed under ACLs in docs/redis.md"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise BrokerError(
                f"Redis {operation} failed ({type(exc).__name__}: {str(exc)[:200]}); "
                "check the server (Redis >= 7 or Valkey) and its logs"
            ) from exc

    async def _run_batch(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]:
        """Run several scripts in one pipelined round trip.

        Each call is atomic on its own; calls that hit NOSCRIPT (server restarted or
        flushed its script cache) are run again one by one, which loads the script.
        """
        client = await self._ready()
        if self._cluster:
            return await self._run_each(calls)
        pipe = client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._scripts[name].sha, 1, keys.stream, keys.prefix, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                name, keys, args = calls[i]
                replies[i] = await self._scripts[name](
                    keys=[keys.stream], args=[keys.prefix, *args]
                )
            elif isinstance(reply, Exception):
                raise reply
        return replies

    async def _run_each(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]:
        """``_run_batch`` on a cluster client, which refuses EVALSHA in pipelines: the
        scripts run as concurrent calls (each routed to its queue's slot by its key).
        Every call is atomic on its own and touches only its own entries and job ids,
        so their order does not matter."""
        if len(calls) == 1:
            name, keys, args = calls[0]
            return [await self._scripts[name](keys=[keys.stream], args=[keys.prefix, *args])]
        replies: list[Any] = [None] * len(calls)
        errors: list[Exception] = []
        limiter = anyio.CapacityLimiter(_CLUSTER_CALLS)

        async def run(i: int, name: str, keys: QueueKeys, args: list[Any]) -> None:
            async with limiter:
                try:
                    replies[i] = await self._scripts[name](
                        keys=[keys.stream], args=[keys.prefix, *args]
                    )
                except Exception as exc:  # re-raised below, outside the task group
                    errors.append(exc)

        async with anyio.create_task_group() as tg:
            for i, (name, keys, args) in enumerate(calls):
                tg.start_soon(run, i, name, keys, args)
        if errors:
            raise errors[0]
        return replies

    # -- producer side ---------------------------------------------------------------

    async def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        """One script call per queue (atomic per queue), idempotent for
        :data:`ENQUEUE_DEDUP_WINDOW` seconds: the same sealed job sent again (a producer,
        or redis-py, retrying after an error that hid whether the write landed) is
        skipped. The same job id sealed anew is written, as before."""
        if not items:
            return
        by_queue: dict[str, list[Any]] = {}
        for item in items:
            not_before = "" if item.not_before is None else repr(float(item.not_before))
            by_queue.setdefault(item.queue, []).extend(
                (item.job_id, item.envelope, not_before, secrets.token_hex(6))
            )
        at = f"{time.time():.6f}"
        window = _ms(ENQUEUE_DEDUP_WINDOW)
        calls = [
            ("enqueue", self.keys(queue), [window, at, *args]) for queue, args in by_queue.items()
        ]
        with self._boundary("enqueue"):
            await self._run_batch(calls)

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        keys = self.keys(item.queue)
        nb = "" if item.not_before is None else repr(float(item.not_before))
        args = [
            item.job_id,
            item.envelope,
            nb,
            f"{time.time():.6f}",
            secrets.token_hex(6),
            _ms(ttl),
        ]
        with self._boundary("enqueue"):
            (written,) = await self._run_batch([("enqueue_unique", keys, args)])
        return bool(written)

    # -- schedules (TickStore) ----------------------------------------------------------

    async def claim_tick(
        self, item: EnqueueItem, *, schedule: str, tick: float, ttl: float
    ) -> bool:
        args = [
            schedule,
            _tick(tick),
            item.job_id,
            item.envelope,
            f"{time.time():.6f}",
            _ms(ttl),
        ]
        with self._boundary("claim_tick"):
            (written,) = await self._run_batch([("claim_tick", self.keys(item.queue), args)])
        return bool(written)

    async def mark_schedule(
        self, queue: str, schedule: str, tick: float, *, only_if_absent: bool = False
    ) -> float:
        args = [schedule, _tick(tick), "1" if only_if_absent else ""]
        with self._boundary("mark_schedule"):
            (mark,) = await self._run_batch([("mark_schedule", self.keys(queue), args)])
        return _number(mark)

    async def enqueue_keyed(
        self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float
    ) -> str:
        nb = "" if item.not_before is None else repr(float(item.not_before))
        args = [
            key,
            item.job_id,
            item.envelope,
            nb,
            f"{time.time():.6f}",
            secrets.token_hex(6),
            _ms(ttl),
            _ms(key_ttl),
        ]
        with self._boundary("enqueue"):
            (holder,) = await self._run_batch([("enqueue_keyed", self.keys(item.queue), args)])
        return _text(holder)

    async def schedule_marks(self, queue: str) -> list[ScheduleMark]:
        with self._boundary("schedule_marks"):
            client = await self._ready()
            raw = await client.hgetall(self.keys(queue).schedules)
        fields = {_text(k): _number(v) for k, v in raw.items()}
        return [
            ScheduleMark(name=key[2:], mark=mark, fired=fields.get("f:" + key[2:]))
            for key, mark in sorted(fields.items())
            if key.startswith("m:")
        ]

    async def get_result(self, queue: str, job_id: str) -> bytes | None:
        with self._boundary("get_result"):
            client = await self._ready()
            value = await client.lindex(self.keys(queue).result(job_id), 0)
        return _as_bytes(value)

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
                wait: Any = max(0.01, min(remaining, _block_limit(client)))
                value = await client.blmove(key, key, wait, "LEFT", "LEFT")
                if value is not None:
                    return _as_bytes(value)

    async def is_running(self, queue: str, job_id: str) -> bool:
        with self._boundary("is_running"):
            client = await self._ready()
            return bool(await client.exists(self.keys(queue).claim(job_id)))

    async def cancel(self, queue: str, job_id: str, *, ttl: float) -> CancelState:
        keys = self.keys(queue)
        with self._boundary("cancel"):
            (reply,) = await self._run_batch([("cancel", keys, [job_id, _ms(ttl)])])
        return CancelState(_text(reply))

    async def cancelled(self, queue: str, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        keys = self.keys(queue)
        with self._boundary("cancelled"):
            (flags,) = await self._run_batch([("cancelled", keys, list(job_ids))])
        return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}

    # -- worker side -----------------------------------------------------------------

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
        if count <= 0 or not queues:
            return []
        deadline = time.monotonic() + max(0.0, block)
        limit = max(0, int(max_size or 0))
        with self._boundary("fetch"):
            client = await self._ready()
            while True:
                out, more, wait_ms, after = await self._fetch_once(
                    queues, count, consumer, lease, limit
                )
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                if more:
                    continue  # the read was full of duplicates still claimed: read on
                wait = remaining if wait_ms < 0 else min(remaining, wait_ms / 1000)
                if wait <= 0.001:
                    continue
                if after:
                    # Wake on the first entry added after what the group has delivered;
                    # a delayed job falling due ends the wait through ``wait``.
                    block_ms = _ms(min(wait, _block_limit(client)))
                    if self._cluster:
                        await self._wait_slots(client, after, block_ms)
                    else:
                        await client.xread(after, count=1, block=block_ms)  # type: ignore[arg-type]
                else:
                    await anyio.sleep(min(wait, 0.05))

    async def _wait_slots(self, client: Client, after: dict[str, str], block_ms: int) -> None:
        """The idle wait on a cluster: one XREAD BLOCK per slot (a multi-key XREAD must
        stay in one slot), concurrently; the first to return ends the others."""
        groups = _slot_groups(list(after))
        if len(groups) == 1:
            await client.xread(after, count=1, block=block_ms)  # type: ignore[arg-type]
            return
        errors: list[Exception] = []

        async def wait(streams: dict[str, str], scope: anyio.CancelScope) -> None:
            try:
                await client.xread(streams, count=1, block=block_ms)  # type: ignore[arg-type]
            except Exception as exc:  # re-raised below, outside the task group
                errors.append(exc)
            # Cancelling a blocked read makes redis-py drop that connection (it cannot be
            # reused mid-reply); it is reopened on demand. Only idle wake-ups pay this.
            scope.cancel()

        async with anyio.create_task_group() as tg:
            for group in groups:
                tg.start_soon(wait, {stream: after[stream] for stream in group}, tg.cancel_scope)
        if errors:
            raise errors[0]

    async def _fetch_once(
        self, queues: Sequence[str], count: int, consumer: str, lease: float, max_size: int
    ) -> tuple[list[Delivery], bool, int, dict[str, str]]:
        out: list[Delivery] = []
        more = False
        wait_ms = -1
        after: dict[str, str] = {}
        nonce = secrets.token_hex(6)
        for queue in queues:
            want = count - len(out)
            if want <= 0:
                break
            keys = self.keys(queue)
            self._consumers.add((queue, consumer))
            sent = time.monotonic()
            reply = await self._scripts["fetch"](
                keys=[keys.stream],
                args=[
                    keys.prefix,
                    consumer,
                    want,
                    _ms(lease),
                    nonce,
                    _PROMOTE_LIMIT,
                    max_size,
                    self._dead_max,
                    self._dead_age_ms,
                ],
            )
            queue_more, queue_wait, last_id, flat = reply
            more = more or bool(queue_more)
            if queue_wait >= 0:
                wait_ms = queue_wait if wait_ms < 0 else min(wait_ms, queue_wait)
            if last_id:
                after[keys.stream] = _text(last_id)
            for i in range(0, len(flat), 8):
                tag, job_id, envelope, attempt, enqueued_at, redelivered, done, cancel = flat[
                    i : i + 8
                ]
                out.append(
                    Delivery(
                        queue=queue,
                        job_id=_text(job_id),
                        envelope=bytes(envelope),
                        attempt=_attempt(attempt),
                        tag=_text(tag),
                        redelivered=bool(redelivered),
                        completed=bool(done),
                        cancel_requested=bool(cancel),
                        enqueued_at=_number(enqueued_at),
                        leased_at=sent,
                    )
                )
        if len(after) < len(queues):
            after = {}  # not idle: some queue gave entries, so no blocking read follows
        return out, more, wait_ms, after

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        if not deliveries:
            return set()
        by_queue: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_queue.setdefault(d.queue, []).append(d)
        calls = [
            (
                "extend",
                self.keys(queue),
                [
                    consumer,
                    _ms(lease),
                    *(a for d in ds for a in (_tag_entry(d.tag), d.tag, d.job_id)),
                ],
            )
            for queue, ds in by_queue.items()
        ]
        with self._boundary("extend"):
            replies = await self._run_batch(calls)
        lost: set[str] = set()
        for ds, flags in zip(by_queue.values(), replies, strict=True):
            lost.update(d.tag for d, flag in zip(ds, flags, strict=True) if not int(flag))
        return lost

    async def time(self) -> float:
        with self._boundary("time"):
            client = await self._ready()
            seconds, micros = await client.time()
        return int(seconds) + int(micros) / 1_000_000

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        if not settlements:
            return
        calls = [self._settle_call(s) for s in settlements]
        with self._boundary("settle"):
            replies = await self._run_batch(calls)
        stale = [s.delivery.job_id for s, r in zip(settlements, replies, strict=True) if r == -1]
        if stale:
            logger.warning(
                "%d settlement(s) refused: the delivery no longer holds its lease (job %s%s); "
                "the job will run again on another delivery",
                len(stale),
                stale[0],
                " ..." if len(stale) > 1 else "",
            )

    def _settle_call(self, s: Settlement) -> tuple[str, QueueKeys, list[Any]]:
        d = s.delivery
        keys = self.keys(d.queue)
        head: list[Any] = [_tag_entry(d.tag), d.tag, d.job_id]
        if isinstance(s, Ack):
            has = s.result is not None
            result = s.result if s.result is not None else b""
            args = [*head, int(has), result, _ms(s.result_ttl), repr(float(s.remember_until))]
            return ("ack", keys, args)
        if isinstance(s, Retry | Release):
            attempt = d.attempt + 1 if isinstance(s, Retry) else d.attempt
            args = [*head, attempt, repr(float(s.not_before)), secrets.token_hex(6)]
            return ("requeue", keys, args)
        if isinstance(s, Drop):
            return ("drop", keys, [*head, s.reason])
        bury: Bury = s
        has = bury.result is not None
        remember = "" if bury.remember_until is None else repr(float(bury.remember_until))
        args = [
            *head,
            d.attempt,
            bury.reason,
            bury.detail,
            int(has),
            bury.result if bury.result is not None else b"",
            _ms(bury.result_ttl),
            remember,
            int(bury.keep_envelope),
            self._dead_max,
            self._dead_age_ms,
        ]
        return ("bury", keys, args)

    # -- inspection --------------------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        keys = self.keys(queue)
        with self._boundary("stats"):
            ((length, pending, delayed, dead),) = await self._run_batch([("stats", keys, [])])
        return QueueStats(
            queue=queue,
            ready=max(0, int(length) - int(pending)),
            delayed=int(delayed),
            running=int(pending),
            dead=int(dead),
        )

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._boundary("dead_letters"):
            client = await self._ready()
            entries = await client.xrevrange(self.keys(queue).dead, count=limit)
        letters = []
        for entry_id, raw in entries or []:
            f = _fields(raw)
            letters.append(
                DeadLetter(
                    queue=queue,
                    job_id=_text(f.get("id", b"")),
                    reason=_text(f.get("reason", b"")),
                    detail=_text(f.get("detail", b"")),
                    attempt=_attempt(f.get("att", b"0"), least=0),
                    at=_number(f.get("at", b"0")),
                    tag=_text(entry_id),
                    size=int(_number(f.get("size", b"0"))),
                    stub="env" not in f,
                )
            )
        return letters

    async def counters(self, queue: str) -> dict[str, int]:
        keys = self.keys(queue)
        with self._boundary("counters"):
            (flat,) = await self._run_batch([("counters", keys, [])])
        pairs = _fields(flat)
        return {name: int(_number(value)) for name, value in pairs.items()}

    async def purge_dead(self, queue: str) -> int:
        keys = self.keys(queue)
        with self._boundary("purge_dead"):
            (count,) = await self._run_batch([("purge_dead", keys, [])])
        return int(count)

    # -- operator tools ------------------------------------------------------------------
    # These scan the queue's stream, delayed set and dead letters from the client in
    # pages (never one long script), so they cost O(queue length) round trips of
    # _SCAN_PAGE entries: fine for an operator's command, not for a hot path.

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
            found = await self._find_in_stream(client, keys, job_id)
            if found is not None:
                entry_id, f = found
                return msgspec.structs.replace(
                    base,
                    state="running" if claimed else "queued",
                    attempt=_attempt(f.get("att", b"1")),
                    enqueued_at=_number(f.get("at", b"0")),
                    tag=entry_id,
                    envelope=_as_bytes(f.get("env")) or b"",
                )
            member = await self._find_delayed(client, keys, job_id)
            if member is not None:
                name, score = member
                _, attempt, enqueued_at, _unique = name.rsplit("|", 3)
                envelope = await client.hget(keys.delayed_data, name)
                return msgspec.structs.replace(
                    base,
                    state="delayed",
                    attempt=_attempt(attempt),
                    enqueued_at=_number(enqueued_at),
                    not_before=score,
                    tag=name,
                    envelope=_as_bytes(envelope) or b"",
                )
            if claimed:
                return msgspec.structs.replace(base, state="running")
        return base

    async def _remembered(self, client: Client, keys: QueueKeys, job_id: str) -> bool:
        hour = int(time.time() // 3600)
        for raw in await client.zrangebyscore(keys.done_index, hour - 1, "+inf"):
            if await client.sismember(keys.done(int(_number(raw))), job_id):
                return True
        return False

    async def _find_in_stream(
        self, client: Client, keys: QueueKeys, job_id: str
    ) -> tuple[str, dict[str, bytes]] | None:
        low = "-"
        while True:
            entries = await client.xrange(keys.stream, min=low, max="+", count=_SCAN_PAGE)
            for entry_id, raw in entries or []:
                f = _fields(raw)
                if _text(f.get("id", b"")) == job_id:
                    return _text(entry_id), f
            if not entries or len(entries) < _SCAN_PAGE:
                return None
            low = "(" + _text(entries[-1][0])

    async def _find_delayed(
        self, client: Client, keys: QueueKeys, job_id: str
    ) -> tuple[str, float] | None:
        pattern = _glob_escape(job_id) + "|*"
        async for member, score in client.zscan_iter(keys.delayed, match=pattern):
            name = _text(member)
            if name.rsplit("|", 3)[0] == job_id:
                return name, float(score)
        return None

    async def _dead_of(
        self, client: Client, keys: QueueKeys, queue: str, job_id: str
    ) -> DeadLetter | None:
        high = "+"
        seen = 0
        while seen < JOB_INFO_DEAD_SCAN:
            entries = await client.xrevrange(keys.dead, max=high, min="-", count=_SCAN_PAGE)
            for entry_id, raw in entries or []:
                f = _fields(raw)
                if _text(f.get("id", b"")) == job_id:
                    return _dead_letter(queue, entry_id, f)
            if not entries or len(entries) < _SCAN_PAGE:
                return None
            seen += len(entries)
            high = "(" + _text(entries[-1][0])
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
        keys = self.keys(info.queue)
        kind = "stream" if info.state == "queued" else "delayed"
        args = [
            kind,
            info.tag,
            info.job_id,
            int(result is not None),
            result if result is not None else b"",
            _ms(result_ttl),
            repr(float(remember_until)),
        ]
        with self._boundary("cancel_queued"):
            (done,) = await self._run_batch([("cancel_queued", keys, args)])
        return bool(int(done))

    async def retry_dead(self, queue: str, tag: str) -> DeadLetter | None:
        keys = self.keys(queue)
        reasons = ",".join(sorted(RETRYABLE_REASONS))
        with self._boundary("retry_dead"):
            (reply,) = await self._run_batch([("retry_dead", keys, [tag, reasons])])
        if not reply or _text(reply[0]) != "ok":
            return None
        _, job_id, reason, detail, attempt, at = reply
        return DeadLetter(
            queue=queue,
            job_id=_text(job_id),
            reason=_text(reason),
            detail=_text(detail),
            attempt=_attempt(attempt, least=0),
            at=_number(at),
            tag=tag,
        )

    async def queued(self, queue: str, *, limit: int = 1000) -> list[QueuedEntry]:
        if limit <= 0:
            return []
        keys = self.keys(queue)
        with self._boundary("queued"):
            client = await self._ready()
            entries = await client.xrange(keys.stream, count=limit)
            out = [
                QueuedEntry(queue, _text(f.get("id", b"")), _as_bytes(f.get("env")) or b"")
                for f in (_fields(raw) for _, raw in entries or [])
            ]
            if len(out) < limit:
                # Delayed jobs and retries: member "<job id>|<attempt>|..." -> envelope.
                members: list[Any] = list(
                    await client.zrange(keys.delayed, 0, limit - len(out) - 1)
                )
                if members:
                    envelopes = await client.hmget(keys.delayed_data, members)
                    for member, env in zip(members, envelopes, strict=True):
                        data = _as_bytes(env)
                        if data is not None:
                            job_id = _text(member).partition("|")[0]
                            out.append(QueuedEntry(queue, job_id, data))
        return out


_SCAN_PAGE: Final = 500
"""Entries read per round trip by the operator tools' scans."""


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


def _dead_letter(queue: str, entry_id: Any, f: dict[str, bytes]) -> DeadLetter:
    return DeadLetter(
        queue=queue,
        job_id=_text(f.get("id", b"")),
        reason=_text(f.get("reason", b"")),
        detail=_text(f.get("detail", b"")),
        attempt=_attempt(f.get("att", b"0"), least=0),
        at=_number(f.get("at", b"0")),
        tag=_text(entry_id),
    )
