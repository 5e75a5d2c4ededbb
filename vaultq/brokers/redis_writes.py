"""The Redis broker's enqueue writes, built once for both clients.

:func:`enqueue_calls`, :func:`unique_call` and :func:`keyed_call` turn enqueue items into
the script calls (name, queue keys, arguments) that the asyncio broker
(``vaultq/brokers/redis.py``) and the synchronous writer (:class:`RedisSyncWriter`, for
``task.enqueue_sync``) both send; :func:`boundary` maps redis-py's exceptions for both.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TypeAlias

import redis.cluster
import redis.exceptions

from vaultq.brokers.base import EnqueueItem
from vaultq.brokers.redis_layout import QueueKeys, load_script, ms, text
from vaultq.brokers.redis_urls import sync_client_from_url
from vaultq.brokers.writer import fork_generation
from vaultq.errors import BrokerError, BrokerUnavailable

__all__ = [
    "ENQUEUE_DEDUP_WINDOW",
    "Call",
    "RedisSyncWriter",
    "boundary",
    "enqueue_calls",
    "enqueue_digest",
    "keyed_call",
    "unique_call",
]

ENQUEUE_DEDUP_WINDOW: Final = 15.0
"""Seconds ``enqueue`` remembers the digest of each job it wrote, so that sending the same
sealed job again (a producer retrying after an unreadable reply) is a no-op. It covers a
write that landed while its reply timed out (``socket_timeout``, 5 s) plus the retry budget
(``enqueue_retry``, 2 s); the cost is one small key (~100 bytes) per job enqueued in the
window."""

Call: TypeAlias = "tuple[str, QueueKeys, list[Any]]"
"""One script call: the script's name, the queue's keys, the arguments after the prefix."""

_WRITE_SCRIPTS: Final = ("enqueue", "enqueue_unique", "enqueue_keyed")


def enqueue_digest(envelope: bytes) -> bytes:
    """What the ``enqueue`` script's dedup marker holds for ``envelope``: its SHA-1
    (20 bytes). It only tells a retry of the same sealed bytes from a new sealing (a
    new random nonce, so new bytes); it protects nothing. Computed here so that Redis's
    one thread does not hash every envelope (~0.5 µs for a small job, ~50 µs for
    100 KB, on the server every producer and worker shares)."""
    return hashlib.sha1(envelope, usedforsecurity=False).digest()


def _not_before(item: EnqueueItem) -> str:
    return "" if item.not_before is None else repr(float(item.not_before))


def enqueue_calls(keys: Callable[[str], QueueKeys], items: Sequence[EnqueueItem]) -> list[Call]:
    """The ``enqueue`` script calls writing ``items``: one per queue and priority level
    (each level has its own stream; atomic per call). ``keys`` maps a queue name to its
    :class:`QueueKeys` (``broker.keys``)."""
    by_queue: dict[tuple[str, int], list[Any]] = {}
    for item in items:
        # The token only names a delayed job's entry in the delayed set: none is drawn
        # (a getrandom call) for a job that goes straight to the stream.
        token = "" if item.not_before is None else secrets.token_hex(6)
        by_queue.setdefault((item.queue, item.priority), []).extend(
            (item.job_id, item.envelope, _not_before(item), token, enqueue_digest(item.envelope))
        )
    at = f"{time.time():.6f}"
    window = ms(ENQUEUE_DEDUP_WINDOW)
    return [
        ("enqueue", keys(queue).at(level), [window, at, *args])
        for (queue, level), args in by_queue.items()
    ]


def _job_args(item: EnqueueItem) -> list[Any]:
    """The job's arguments of the one-job write scripts: id, envelope, not-before, the
    time now and the token naming its entry."""
    return [
        item.job_id,
        item.envelope,
        _not_before(item),
        f"{time.time():.6f}",
        secrets.token_hex(6),
    ]


def unique_call(keys: Callable[[str], QueueKeys], item: EnqueueItem, ttl: float) -> Call:
    """The ``enqueue_unique`` script call writing ``item`` unless its id exists."""
    args = [*_job_args(item), ms(ttl)]
    return ("enqueue_unique", keys(item.queue).at(item.priority), args)


def keyed_call(
    keys: Callable[[str], QueueKeys], item: EnqueueItem, key: str, key_ttl: float, ttl: float
) -> Call:
    """The ``enqueue_keyed`` script call writing ``item`` under the unique key ``key``."""
    args = [key, *_job_args(item), ms(ttl), ms(key_ttl)]
    return ("enqueue_keyed", keys(item.queue).at(item.priority), args)


def _resp_args(args: Sequence[Any]) -> bytes:
    """Bulk strings of ``args`` in RESP (bytes as they are; str as UTF-8; int and float
    as their decimal text, as redis-py writes them)."""
    parts: list[bytes] = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@contextlib.contextmanager
def boundary(url: str, operation: str) -> Iterator[None]:
    """Map redis-py exceptions to the vaultq error tree (``url`` is the masked URL)."""
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
            f"Redis at {url} is unavailable during {operation} "
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


class RedisSyncWriter:
    """The enqueue writes of a Redis broker for synchronous callers
    (:class:`vaultq.brokers.writer.SyncWriter`).

    One redis-py synchronous client per process. On a single node (``redis://``,
    ``rediss://``, ``unix://``) a call takes an idle connection from the writer's own
    small pool (made with the client's settings: credentials, TLS, timeouts), sends its
    command and puts the connection back: any number of threads write at once, a
    short-lived thread leaves nothing behind, and the ~12 µs of redis-py's client and
    pool bookkeeping per command are saved (a third of a plain call). Sentinel and
    Cluster go through the client (failover, slot routing). After a fork the child
    makes its own client and connections; the parent's sockets are never shut down
    from the child (redis-py checks the pid). A script call is one EVALSHA; a script
    missing from the server's cache (restart, failover) is sent with EVAL, which loads
    it."""

    def __init__(self, url: str, masked: str, namespace: str) -> None:
        self._url = url
        self._masked = masked
        self._namespace = namespace
        self._lock = threading.Lock()
        self._client: Any = None
        self._helpers: list[Any] = []
        self._generation = -1
        self._direct = False
        self._idle: list[Any] = []
        self._scripts = {name: load_script(name) for name in _WRITE_SCRIPTS}
        # SHA1 names the script in Redis' cache (EVALSHA); it protects nothing.
        self._shas = {
            name: hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
            for name, body in self._scripts.items()
        }
        self._keys: dict[str, QueueKeys] = {}
        self._heads: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"RedisSyncWriter({self._masked!r}, namespace={self._namespace!r})"

    def keys(self, queue: str) -> QueueKeys:
        found = self._keys.get(queue)
        if found is None:
            found = self._keys[queue] = QueueKeys(self._namespace, queue)
        return found

    def _ready(self) -> Any:
        client = self._client
        if client is not None and self._generation == fork_generation():
            return client
        with self._lock:
            if self._client is None or self._generation != fork_generation():
                # After a fork the parent's client is left alone (closing it would close
                # the parent's sockets): the child starts its own.
                self._client, self._helpers = sync_client_from_url(self._url, self._masked)
                self._direct = type(self._client) is redis.Redis and not self._helpers
                self._idle = []
                self._generation = fork_generation()
            return self._client

    def _command(self, *args: Any, packed: bytes | None = None) -> Any:
        """One command and its reply, on a pooled connection (or through the client).
        ``packed``: the same command already in RESP (sent as is on a pooled
        connection)."""
        client = self._ready()
        if not self._direct:
            return client.execute_command(*args)
        try:
            conn = self._idle.pop()  # atomic: no lock needed for a list pop/append
            fresh = False
        except IndexError:
            pool = client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            fresh = True
        try:
            if packed is None:
                conn.send_command(*args)
            else:
                conn.send_packed_command([packed])
            reply = conn.read_response()
        except redis.exceptions.ResponseError:
            self._idle.append(conn)  # an error reply: the connection is fine
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            conn.disconnect()
            if fresh:
                raise
            # An idle connection the server dropped (a restart, an idle timeout): once
            # more on a new one, as redis-py's own client does. Writes are idempotent.
            return self._command(*args, packed=packed)
        except BaseException:
            conn.disconnect()  # mid-reply: unusable
            raise
        if self._generation == fork_generation():
            self._idle.append(conn)
        return reply

    def _run(self, calls: list[Call], operation: str) -> list[Any]:
        # Each call is atomic on its own (one queue); a batch of several queues is rare
        # (one enqueue_many names one queue), so they go one after the other.
        with boundary(self._masked, operation):
            return [self._call(call) for call in calls]

    def _call(self, call: Call) -> Any:
        name, keys, args = call
        head = (self._shas[name], 1, keys.stream, keys.prefix)
        try:
            packed = self._packed(name, keys, args) if self._direct else None
            return self._command("EVALSHA", *head, *args, packed=packed)
        except redis.exceptions.NoScriptError:
            # EVAL loads the script into the cache as it runs it.
            return self._command("EVAL", self._scripts[name], 1, keys.stream, keys.prefix, *args)

    def _packed(self, name: str, keys: QueueKeys, args: list[Any]) -> bytes:
        """``EVALSHA <sha> 1 <stream> <prefix> *args`` in RESP. The part up to the
        prefix is the same for every call of a script on a queue: packed once. redis-py
        packs every argument anew, through a generic path (~2-3 µs per enqueue)."""
        head = self._heads.get((name, keys.stream))
        if head is None:
            fixed = (b"EVALSHA", self._shas[name].encode(), b"1", keys.stream.encode())
            head = _resp_args((*fixed, keys.prefix.encode()))
            self._heads[(name, keys.stream)] = head
        return b"*%d\r\n%b%b" % (5 + len(args), head, _resp_args(args))

    def enqueue(self, items: Sequence[EnqueueItem]) -> None:
        if items:
            self._run(enqueue_calls(self.keys, items), "enqueue")

    def enqueue_unique(self, item: EnqueueItem, *, ttl: float) -> bool:
        (written,) = self._run([unique_call(self.keys, item, ttl)], "enqueue")
        return bool(written)

    def enqueue_keyed(self, item: EnqueueItem, *, key: str, key_ttl: float, ttl: float) -> str:
        (holder,) = self._run([keyed_call(self.keys, item, key, key_ttl, ttl)], "enqueue")
        return text(holder)

    def time(self) -> float:
        with boundary(self._masked, "time"):
            seconds, micros = self._command("TIME")
        return int(seconds) + int(micros) / 1_000_000

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            helpers, self._helpers = self._helpers, []
            idle, self._idle = self._idle, []
            mine = self._generation == fork_generation()
        if client is not None and mine:
            for conn in idle:
                conn.disconnect()
            client.close()
            for helper in helpers:
                helper.close()
