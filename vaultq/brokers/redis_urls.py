"""Redis clients from URLs: single node, ``unix://``, Cluster and Sentinel.

The broker (``vaultq/brokers/redis.py``) asks :func:`client_from_url` for its client;
the URL forms are documented in ``docs/redis.md``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Final, NamedTuple, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.connection
import redis.retry
import redis.sentinel
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialWithJitterBackoff

from vaultq.errors import ConfigurationError

__all__ = [
    "URL_FORMS",
    "URL_SCHEMES",
    "Client",
    "block_limit",
    "client_from_url",
    "sync_client_from_url",
]

Client: TypeAlias = "aioredis.Redis | RedisCluster"
"""A single-node (or Sentinel-managed) client, or a Redis Cluster client."""

_DEFAULT_MAX_CONNECTIONS: Final = 1024
"""Blocking reads (fetch when idle, wait_result) hold a connection each; connections
are opened lazily, so a generous ceiling costs nothing until it is used."""
_PLAIN_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_CLUSTER_SCHEMES: Final = frozenset({"redis+cluster", "rediss+cluster"})
_SENTINEL_SCHEMES: Final = frozenset({"redis+sentinel", "rediss+sentinel"})
URL_SCHEMES: Final = _PLAIN_SCHEMES | _CLUSTER_SCHEMES | _SENTINEL_SCHEMES
_SENTINEL_PORT: Final = 26379
URL_FORMS: Final = (
    "redis://[[user]:password@]host[:port][/db], rediss://..., unix:///path/to/socket, "
    "redis+cluster://[[user]:password@]host:port[,host:port...][/?options] or "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"
)


_CONNECTION_RETRIES = 1

# redis-py's asyncio and sync clients mirror each other class for class: one URL parser
# below builds either from the same options.
_ASYNC = SimpleNamespace(
    Redis=aioredis.Redis,
    RedisCluster=redis.asyncio.cluster.RedisCluster,
    ClusterNode=redis.asyncio.cluster.ClusterNode,
    Sentinel=redis.asyncio.sentinel.Sentinel,
    Retry=redis.asyncio.retry.Retry,
    SSLConnection=redis.asyncio.connection.SSLConnection,
    parse_url=redis.asyncio.connection.parse_url,
)
_SYNC = SimpleNamespace(
    Redis=redis.Redis,
    RedisCluster=redis.cluster.RedisCluster,
    ClusterNode=redis.cluster.ClusterNode,
    Sentinel=redis.sentinel.Sentinel,
    Retry=redis.retry.Retry,
    SSLConnection=redis.connection.SSLConnection,
    parse_url=redis.connection.parse_url,
)


def client_from_url(url: str, masked: str) -> tuple[Client, list[aioredis.Redis]]:
    """The client for ``url``, and helper clients to close with it (Sentinel's)."""
    client, helpers = _from_url(_ASYNC, url, masked)
    return client, helpers


def sync_client_from_url(url: str, masked: str) -> tuple[Any, list[Any]]:
    """:func:`client_from_url` with redis-py's synchronous classes (``redis.Redis``,
    ``redis.cluster.RedisCluster``), for the synchronous enqueue writer: a thread-safe
    client whose pool gives each calling thread its own connection."""
    return _from_url(_SYNC, url, masked)


def _from_url(kind: SimpleNamespace, url: str, masked: str) -> tuple[Any, list[Any]]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = {k.lower() for k, _ in parse_qsl(parts.query)}
    extra: dict[str, Any] = {}
    # Defaults that matter for a queue, unless the URL says otherwise.
    if "max_connections" not in options:
        extra["max_connections"] = _DEFAULT_MAX_CONNECTIONS
    if "socket_connect_timeout" not in options:
        extra["socket_connect_timeout"] = 5.0
    if "socket_keepalive" not in options:
        extra["socket_keepalive"] = True
    # One quick retry on a connection error: after a server restart every pooled
    # connection is dead, and the first command on each would otherwise fail with
    # "Connection closed by server" although the server is back.
    extra["retry"] = kind.Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5), _CONNECTION_RETRIES
    )
    try:
        if scheme in _PLAIN_SCHEMES:
            return kind.Redis.from_url(url, decode_responses=False, **extra), []
        userinfo, _, hosts = parts.netloc.rpartition("@")
        multi = _MultiUrl(userinfo, hosts, parts.path, parts.query, scheme.startswith("rediss"))
        if scheme in _CLUSTER_SCHEMES:
            return _cluster_client(kind, multi, extra), []
        return _sentinel_client(kind, multi, extra)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"invalid Redis URL {masked} ({str(exc)[:200]}); use {URL_FORMS}"
        ) from exc


def _host_list(hosts: str, default_port: int | None) -> list[tuple[str, int]]:
    """``h1:p1,h2:p2`` (IPv6 in brackets) as (host, port) pairs."""
    out: list[tuple[str, int]] = []
    for part in hosts.split(","):
        if not part.strip():
            continue
        parsed = urlsplit("//" + part.strip())
        port = parsed.port or default_port
        if not parsed.hostname or port is None:
            raise ValueError(f"host {part.strip()!r} needs a port")
        out.append((unquote(parsed.hostname), port))
    if not out:
        raise ValueError("no host given")
    return out


class _MultiUrl(NamedTuple):
    """The parts of a Cluster or Sentinel URL (``hosts``: ``h1:p1,h2:p2``)."""

    userinfo: str
    hosts: str
    path: str
    query: str
    tls: bool


def _connect_kwargs(kind: SimpleNamespace, url: _MultiUrl, db: str) -> dict[str, Any]:
    """redis-py connection options from the credentials, ``db`` and query of a URL (parsed
    by redis-py itself, so option names and types match ``redis://`` URLs)."""
    credentials = f"{url.userinfo}@" if url.userinfo else ""
    single = f"{'rediss' if url.tls else 'redis'}://{credentials}localhost/{db}?{url.query}"
    kwargs: dict[str, Any] = dict(kind.parse_url(single))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is kind.SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def _cluster_client(kind: SimpleNamespace, url: _MultiUrl, extra: dict[str, Any]) -> Any:
    kwargs = _connect_kwargs(kind, url, url.path.strip("/"))
    if kwargs.pop("db", 0):
        raise ValueError("Redis Cluster has only database 0")
    nodes = [kind.ClusterNode(host, port) for host, port in _host_list(url.hosts, None)]
    # max_connections is per node on a cluster client.
    return kind.RedisCluster(startup_nodes=nodes, decode_responses=False, **extra, **kwargs)


def _sentinel_client(
    kind: SimpleNamespace, url: _MultiUrl, extra: dict[str, Any]
) -> tuple[Any, list[Any]]:
    service, _, db = unquote(url.path.strip("/")).partition("/")
    if not service:
        raise ValueError("the path must name the Sentinel service: /service_name[/db]")
    kwargs = {**extra, **_connect_kwargs(kind, url, db)}
    # Credentials in the URL are the master's; Sentinels with their own ACL user or
    # password take ?sentinel_username= / ?sentinel_password=. Socket (and, for
    # rediss+sentinel, TLS) options apply to both.
    sentinel_kwargs = {
        k: v
        for k, v in kwargs.items()
        if k.startswith("socket_") or (url.tls and k.startswith("ssl"))
    }
    for name in ("username", "password"):
        value = kwargs.pop(f"sentinel_{name}", None)
        if value:
            sentinel_kwargs[name] = value
    sentinel = kind.Sentinel(
        _host_list(url.hosts, _SENTINEL_PORT), sentinel_kwargs=sentinel_kwargs, **kwargs
    )
    master = sentinel.master_for(service, redis_class=kind.Redis)
    helpers: list[Any] = list(sentinel.sentinels)
    return master, helpers


_REDIS_PY_DEFAULT_SOCKET_TIMEOUT = 5.0
"""What redis-py >= 8 uses when the URL sets no ``socket_timeout`` (earlier: none)."""


def block_limit(client: Client) -> float:
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
