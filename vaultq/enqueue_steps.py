"""The steps of an enqueue that need I/O, as values: :func:`vaultq.enqueue.flow` yields
them and its driver takes them (the async one on the event loop, the sync one in the
caller's thread), so the flow itself never does I/O and both drivers run one code path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from vaultq.brokers.base import EnqueueItem
from vaultq.clock import describe_offset
from vaultq.policy import PendingPolicy

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "AwaitPolicy",
    "MeasureClock",
    "Step",
    "Write",
    "WriteKeyed",
    "WriteUnique",
    "warn_clock",
]

log = logging.getLogger("vaultq")


class AwaitPolicy(msgspec.Struct, frozen=True):
    """Await an async policy's answer; the reply is its :class:`Decision`."""

    pending: PendingPolicy


class MeasureClock(msgspec.Struct, frozen=True):
    """Measure the offset to the broker's clock now (warn when it is off); no reply."""


class Write(msgspec.Struct, frozen=True):
    """``broker.enqueue(items)``, retried through a blip; no reply."""

    items: list[EnqueueItem]


class WriteUnique(msgspec.Struct, frozen=True):
    """``broker.enqueue_unique(item, ttl=ttl)``, retried; the reply is the bool."""

    item: EnqueueItem
    ttl: float


class WriteKeyed(msgspec.Struct, frozen=True):
    """``broker.enqueue_keyed(...)``, retried; the reply is the holder's job id."""

    item: EnqueueItem
    key: str
    key_ttl: float
    ttl: float


Step = AwaitPolicy | MeasureClock | Write | WriteUnique | WriteKeyed
"""What a flow may ask of its driver."""


def warn_clock(app: App, offset: float) -> None:
    """Warn when this host's clock is off the broker's by more than half the skew the
    workers allow (``offset``: just measured)."""
    if abs(offset) > app.clock_skew / 2:
        log.warning(
            "this producer's clock is %s the broker's; workers refuse jobs sealed more "
            "than clock_skew=%g s in the future (they wait) or past their expiry: fix "
            "this host's clock (NTP)",
            describe_offset(offset),
            app.clock_skew,
        )
