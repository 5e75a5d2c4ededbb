"""Brokers: where sealed envelopes wait. ``broker_from_url`` picks one by URL scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from vaultq.brokers.base import (
    Ack,
    Broker,
    Bury,
    CancelState,
    DeadLetter,
    Delivery,
    EnqueueItem,
    QueueStats,
    Release,
    Retry,
    Settlement,
)
from vaultq.errors import ConfigurationError

__all__ = [
    "Ack",
    "Broker",
    "Bury",
    "CancelState",
    "DeadLetter",
    "Delivery",
    "EnqueueItem",
    "QueueStats",
    "Release",
    "Retry",
    "Settlement",
    "broker_from_url",
]

REDIS_SCHEMES = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    }
)
SQLITE_SCHEMES = frozenset({"sqlite"})
MEMORY_SCHEMES = frozenset({"memory"})


def broker_from_url(url: str, *, namespace: str) -> Broker:
    """Build the broker for ``url``: ``redis://``, ``rediss://``, ``unix://``,
    ``redis+cluster://``, ``redis+sentinel://`` (and their ``rediss+`` TLS forms) or
    ``sqlite:///`` or ``memory://`` (in-memory, one process: tests; see
    ``vaultq/brokers/memory.py``).

    Raises ConfigurationError for an unknown scheme.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        from vaultq.brokers.redis import RedisBroker

        return RedisBroker(url, namespace=namespace)
    if scheme in SQLITE_SCHEMES:
        from vaultq.brokers.sqlite import SqliteBroker

        return SqliteBroker(url, namespace=namespace)
    if scheme in MEMORY_SCHEMES:
        from vaultq.brokers.memory import MemoryBroker

        return MemoryBroker(url, namespace=namespace)
    raise ConfigurationError(
        f"unsupported broker URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster://, redis+sentinel://, sqlite:///path/to/vaultq.db or memory:// (tests)"
    )
