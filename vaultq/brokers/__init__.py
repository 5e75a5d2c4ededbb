"""Brokers: where sealed envelopes wait. ``broker_from_url`` picks one by URL scheme
(registered in :mod:`vaultq.brokers.registry`)."""

from __future__ import annotations

from vaultq.brokers.base import (
    Ack,
    Broker,
    BrokerCapabilities,
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
from vaultq.brokers.registry import (
    BUILTIN_BROKERS,
    ENTRY_POINT_GROUP,
    broker_from_url,
    registered_schemes,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Ack",
    "Broker",
    "BrokerCapabilities",
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
    "registered_schemes",
]

REDIS_SCHEMES = frozenset(s for s, t in BUILTIN_BROKERS.items() if t.endswith(":RedisBroker"))
"""The built-in Redis broker's schemes (kept for callers of the old name)."""
SQLITE_SCHEMES = frozenset(s for s, t in BUILTIN_BROKERS.items() if t.endswith(":SqliteBroker"))
MEMORY_SCHEMES = frozenset(s for s, t in BUILTIN_BROKERS.items() if t.endswith(":MemoryBroker"))
