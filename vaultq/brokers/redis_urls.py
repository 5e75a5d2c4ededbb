"""Redis clients from URLs: single node, ``unix://``, Cluster and Sentinel.

The broker (``vaultq/brokers/redis.py``) asks :func:`client_from_url` for its client;
the URL forms are documented in ``docs/redis.md``.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from vaultq.errors import ConfigurationError

__all__ = ["URL_FORMS", "URL_SCHEMES", "Client", "block_limit", "client_from_url"]

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


def client_from_url(url: str, masked: str) -> tuple[Client, list[aioredis.Redis]]:
    """The client for ``url``, and helper clients to close with it (Sentinel's)."""
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
    extra["retry"] = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), _CONNECTION_RETRIES)
    try:
        if scheme in _PLAIN_SCHEMES:
            return aioredis.Redis.from_url(url, decode_responses=False, **extra), []
        userinfo, _, hosts = parts.netloc.rpartition("@")
        tls = scheme.startswith("rediss")
        if scheme in _CLUSTER_SCHEMES:
            return _cluster_client(userinfo, hosts, parts.path, parts.query, tls, extra), []
        return _sentinel_client(userinfo, hosts, parts.path, parts.query, tls, extra)
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


def _connect_kwargs(userinfo: str, db: str, query: str, tls: bool) -> dict[str, Any]:
    """redis-py connection options from the credentials, db and query of a URL (parsed
    by redis-py itself, so option names and types match ``redis://`` URLs)."""
    credentials = f"{userinfo}@" if userinfo else ""
    single = f"{'rediss' if tls else 'redis'}://{credentials}localhost/{db}?{query}"
    kwargs: dict[str, Any] = dict(parse_url(single))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def _cluster_client(
    userinfo: str, hosts: str, path: str, query: str, tls: bool, extra: dict[str, Any]
) -> RedisCluster:
    kwargs = _connect_kwargs(userinfo, path.strip("/"), query, tls)
    if kwargs.pop("db", 0):
        raise ValueError("Redis Cluster has only database 0")
    nodes = [ClusterNode(host, port) for host, port in _host_list(hosts, None)]
    # max_connections is per node on a cluster client.
    return RedisCluster(startup_nodes=nodes, decode_responses=False, **extra, **kwargs)


def _sentinel_client(
    userinfo: str, hosts: str, path: str, query: str, tls: bool, extra: dict[str, Any]
) -> tuple[aioredis.Redis, list[aioredis.Redis]]:
    service, _, db = unquote(path.strip("/")).partition("/")
    if not service:
        raise ValueError("the path must name the Sentinel service: /service_name[/db]")
    kwargs = {**extra, **_connect_kwargs(userinfo, db, query, tls)}
    # Credentials in the URL are the master's; Sentinels with their own ACL user or
    # password take ?sentinel_username= / ?sentinel_password=. Socket (and, for
    # rediss+sentinel, TLS) options apply to both.
    sentinel_kwargs = {
        k: v for k, v in kwargs.items() if k.startswith("socket_") or (tls and k.startswith("ssl"))
    }
    for name in ("username", "password"):
        value = kwargs.pop(f"sentinel_{name}", None)
        if value:
            sentinel_kwargs[name] = value
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        _host_list(hosts, _SENTINEL_PORT), sentinel_kwargs=sentinel_kwargs, **kwargs
    )
    master: aioredis.Redis = sentinel.master_for(service, redis_class=aioredis.Redis)
    helpers: list[aioredis.Redis] = list(sentinel.sentinels)
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
