"""The Redis broker's chord operation (:class:`vaultq.brokers.chords.ChordStore`): one
Lua script (``lua/chord.lua``) on the callback queue's slot, a hash per chord
(``vaultq:{<ns>:<queue>}:chord:<workflow>``, member index -> sealed result) that
expires with the workflow.

Internal to :mod:`vaultq.brokers.redis`; the names here are not public API.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vaultq.brokers.chords import check_member
from vaultq.brokers.redis_layout import QueueKeys, as_bytes, text
from vaultq.brokers.redis_urls import Client

__all__ = ["CHORD_SCRIPTS", "RedisChords"]

CHORD_SCRIPTS = ("chord",)


class RedisChords:
    """``chord_arrive`` / ``chord_results``, through the broker's own scripts and error
    mapping (declared here for the type checker)."""

    if TYPE_CHECKING:

        def keys(self, queue: str) -> QueueKeys: ...

        async def _ready(self) -> Client: ...

        def _boundary(self, operation: str) -> contextlib.AbstractContextManager[None]: ...

        async def _run_batch(self, calls: list[tuple[str, QueueKeys, list[Any]]]) -> list[Any]: ...

    async def chord_arrive(
        self, queue: str, chord: str, member: int, result: bytes, *, total: int, until: float
    ) -> bool:
        check_member(member, total)
        args = [chord, str(member), str(total), result, str(int(until * 1000))]
        with self._boundary("chord_arrive"):
            (done,) = await self._run_batch([("chord", self.keys(queue), args)])
        return bool(done)

    async def chord_results(self, queue: str, chord: str) -> dict[int, bytes]:
        with self._boundary("chord_results"):
            client = await self._ready()
            raw = await client.hgetall(self.keys(queue).prefix + "chord:" + chord)
        return {int(text(k)): as_bytes(v) or b"" for k, v in raw.items()}
