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

The code: this module (connection, scripts in flight, enqueue, fetch, extend, settle),
``redis_layout.py`` (key names, Lua loading, decoding stored fields), ``redis_ops.py``
(results, job state, statistics, dead letters, operator tools), ``redis_schedules.py``
(periodic ticks, unique keys), ``redis_monitor.py`` (worker heartbeats, job events),
``redis_urls.py`` (clients from URLs) and ``lua/`` (the scripts).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from vaultq import config
from vaultq.brokers.base import (
    Ack,
    BrokerCapabilities,
    Bury,
    Delivery,
    Drop,
    EnqueueItem,
    Release,
    Retry,
    Settlement,
)
from vaultq.brokers.redis_chords import CHORD_SCRIPTS, RedisChords
from vaultq.brokers.redis_layout import (
    GROUP,
    LEVEL_SUFFIX,
    QueueKeys,
    attempt_of,
    check_name,
    lease_args,
    load_script,
    ms,
    seconds_of,
    slot_groups,
    tag_entry,
    tag_level,
    text,
)
from vaultq.brokers.redis_monitor import RedisMonitoring
from vaultq.brokers.redis_ops import RedisOperatorTools
from vaultq.brokers.redis_schedules import RedisSchedules
from vaultq.brokers.redis_urls import (
    URL_FORMS,
    URL_SCHEMES,
    Client,
    block_limit,
    client_from_url,
)
from vaultq.brokers.redis_writes import (
    ENQUEUE_DEDUP_WINDOW,
    RedisSyncWriter,
    boundary,
    enqueue_calls,
    unique_call,
)
from vaultq.config import mask_url
from vaultq.errors import ConfigurationError
from vaultq.priority import FetchRotation

__all__ = ["ENQUEUE_DEDUP_WINDOW", "GROUP", "QueueKeys", "RedisBroker"]

logger = logging.getLogger("vaultq.brokers.redis")

_CAPABILITIES: Final = BrokerCapabilities(shared=True, priorities=True)
_PROMOTE_LIMIT: Final = 500
"""Delayed jobs promoted per fetch call at most, to bound the time one script runs."""
_SCRIPTS: Final = (
    "enqueue",
    "fetch",
    "extend",
    "settle",
    "cancel",
    "cancelled",
    "stats",
    "purge_dead",
    "forget_consumer",
    "cancel_queued",
    "retry_dead",
    "enqueue_unique",
    "counters",
    "claim_tick",
    "mark_schedule",
    "enqueue_keyed",
    "limit",
    *CHORD_SCRIPTS,
    "tombstone",
)


_CLUSTER_CALLS: Final = 16
"""Script calls of one batch in flight at once on a cluster client (no pipelining)."""


class RedisBroker(RedisOperatorTools, RedisSchedules, RedisMonitoring, RedisChords):
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
        check_name("namespace", namespace)
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
        self._dead_age_ms = ms(dead_letter_age)
        self._rotation = FetchRotation()

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
            scripts = {name: client.register_script(load_script(name)) for name in _SCRIPTS}
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
                    for keys in self.keys(queue).levels():
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

    def _boundary(self, operation: str) -> contextlib.AbstractContextManager[None]:
        """Map redis-py exceptions to the vaultq error tree."""
        return boundary(self._url, operation)

    async def _run_batch(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]:
        """Run several scripts in one pipelined round trip.

        Each call is atomic on its own; calls that hit NOSCRIPT (server restarted or
        flushed its script cache) are run again one by one, which loads the script.
        """
        client = await self._ready()
        if self._cluster or len(calls) == 1:
            # A cluster refuses EVALSHA in pipelines; and one script needs no pipeline:
            # a plain EVALSHA costs ~20 us less client CPU than a pipeline of one (a
            # single enqueue, a small settle, cancel, unique and tick calls).
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
        with self._boundary("enqueue"):
            await self._run_batch(enqueue_calls(self.keys, items))

    async def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        with self._boundary("enqueue"):
            (written,) = await self._run_batch([unique_call(self.keys, item, ttl)])
        return bool(written)

    def sync_writer(self) -> RedisSyncWriter | None:
        """The synchronous enqueue writer for ``enqueue_sync`` (None when the client was
        handed in: only a URL says how to make a synchronous twin of it)."""
        if self._factory is not None or (self._client is not None and not self._owns_client):
            return None
        return RedisSyncWriter(self._raw_url, self._url, self._namespace)

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
                    block_ms = ms(min(wait, block_limit(client)))
                    if self._cluster:
                        await self._wait_slots(client, after, block_ms)
                    else:
                        await client.xread(after, count=1, block=block_ms)  # type: ignore[arg-type]
                else:
                    await anyio.sleep(min(wait, 0.05))

    async def _wait_slots(self, client: Client, after: dict[str, str], block_ms: int) -> None:
        """The idle wait on a cluster: one XREAD BLOCK per slot (a multi-key XREAD must
        stay in one slot), concurrently; the first to return ends the others."""
        groups = slot_groups(list(after))
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
        plan = [a for lv, most in self._rotation.plan(count) for a in (LEVEL_SUFFIX[lv], most)]
        idle = True
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
                    ms(lease),
                    nonce,
                    _PROMOTE_LIMIT,
                    max_size,
                    self._dead_max,
                    self._dead_age_ms,
                    *plan,
                ],
            )
            queue_more, queue_wait, queue_after, flat = reply
            more = more or bool(queue_more)
            if queue_wait >= 0:
                wait_ms = queue_wait if wait_ms < 0 else min(wait_ms, queue_wait)
            if queue_after:
                for i in range(0, len(queue_after) - 1, 2):
                    after[text(queue_after[i])] = text(queue_after[i + 1])
            else:
                idle = False
            for i in range(0, len(flat), 8):
                tag, job_id, envelope, attempt, enqueued_at, redelivered, done, cancel = flat[
                    i : i + 8
                ]
                out.append(
                    Delivery(
                        queue=queue,
                        job_id=text(job_id),
                        envelope=bytes(envelope),
                        attempt=attempt_of(attempt),
                        tag=text(tag),
                        redelivered=bool(redelivered),
                        completed=bool(done),
                        cancel_requested=bool(cancel),
                        enqueued_at=seconds_of(enqueued_at),
                        leased_at=sent,
                    )
                )
        self._rotation.delivered(len(out))
        if not idle:
            after = {}  # not idle: some queue gave entries, so no blocking read follows
        return out, more, wait_ms, after

    async def extend(
        self, deliveries: Sequence[Delivery], *, consumer: str, lease: float
    ) -> set[str]:
        if not deliveries:
            return set()
        by_queue: dict[tuple[str, int], list[Delivery]] = {}
        for d in deliveries:
            by_queue.setdefault((d.queue, tag_level(d.tag)), []).append(d)
        calls = [
            (
                "extend",
                self.keys(queue[0]).at(queue[1]),
                [
                    consumer,
                    ms(lease),
                    *lease_args(ds),
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
        """One ``settle`` script call per queue and priority level in the batch (any mix
        of acks, retries, releases, dead letters and drops; each atomic with the rest of
        its call and fenced by its own claim), pipelined when there are several."""
        if not settlements:
            return
        groups: dict[tuple[str, int], list[Settlement]] = {}
        for s in settlements:
            d = s.delivery
            groups.setdefault((d.queue, tag_level(d.tag)), []).append(s)
        calls: list[tuple[str, QueueKeys, list[Any]]] = []
        for (queue, level), batch in groups.items():
            args: list[Any] = [self._dead_max, self._dead_age_ms]
            for s in batch:
                args += _settle_args(s)
            calls.append(("settle", self.keys(queue).at(level), args))
        with self._boundary("settle"):
            replies = await self._run_batch(calls)
        stale = [
            s.delivery.job_id
            for batch, flags in zip(groups.values(), replies, strict=True)
            for s, flag in zip(batch, flags, strict=True)
            if flag == -1
        ]
        if stale:
            logger.warning(
                "%d settlement(s) refused: the delivery no longer holds its lease (job %s%s); "
                "the job will run again on another delivery",
                len(stale),
                stale[0],
                " ..." if len(stale) > 1 else "",
            )


def _settle_args(s: Settlement) -> list[Any]:
    """One operation of the ``settle`` script: its kind and fields (``lua/settle.lua``)."""
    d = s.delivery
    tag = d.tag
    if isinstance(s, Ack):  # one per job: built in one expression
        result = s.result
        return [
            "ack",
            tag_entry(tag),
            tag,
            d.job_id,
            0 if result is None else 1,
            b"" if result is None else result,
            ms(s.result_ttl),
            repr(float(s.remember_until)),
        ]
    head: list[Any] = [tag_entry(tag), tag, d.job_id]
    if isinstance(s, Retry | Release):
        attempt = d.attempt + 1 if isinstance(s, Retry) else d.attempt
        return ["requeue", *head, attempt, repr(float(s.not_before)), secrets.token_hex(6)]
    if isinstance(s, Drop):
        return ["drop", *head, s.reason]
    bury: Bury = s
    return [
        "bury",
        *head,
        d.attempt,
        bury.reason,
        bury.detail,
        int(bury.result is not None),
        bury.result if bury.result is not None else b"",
        ms(bury.result_ttl),
        "" if bury.remember_until is None else repr(float(bury.remember_until)),
        int(bury.keep_envelope),
    ]
