"""One connected broker per event loop, all made from the app's configured broker.

Connections belong to the loop that opened them, so every loop gets its own: the first
loop the configured instance itself, every later one (the sync facade's thread, a second
``asyncio.run``) a clone. Loops are held weakly: a finished loop's broker goes with it.

Sync callers (``enqueue_sync``) write without a loop, through the configured broker's
synchronous writer: one per process, made on first use, made again in a forked child
and whenever the broker is replaced.
"""

from __future__ import annotations

import asyncio
import threading
import weakref

from vaultq.brokers.base import Broker
from vaultq.brokers.writer import SyncWriter, SyncWrites, fork_generation
from vaultq.errors import ConfigurationError

__all__ = ["LoopBrokers"]


class _LoopBroker:
    __slots__ = ("broker", "connected", "lock")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connected = False
        self.lock = asyncio.Lock()


class LoopBrokers:
    """The configured broker (``template``) and the connected one of each event loop."""

    def __init__(self, template: Broker) -> None:
        self.template = template
        self._taken = False
        self._writer_lock = threading.Lock()
        self._writer: tuple[Broker, int, SyncWriter | None] | None = None
        self._brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBroker] = (
            weakref.WeakKeyDictionary()
        )

    def replace(self, broker: Broker) -> None:
        """Use ``broker`` instead, before any loop took the configured one."""
        if self._taken:
            raise ConfigurationError("set_broker() must be called before the app is used")
        self.template = broker
        self._writer = None

    def swap(self, broker: Broker) -> Broker:
        """Use ``broker`` from now on, even after use; return the previous template.
        Brokers connected in other loops are forgotten, not closed."""
        previous, self.template = self.template, broker
        # Clones only: the instance given may be connected in another loop already.
        self._taken = True
        self._brokers = weakref.WeakKeyDictionary()
        self._writer = None  # forgotten, not closed, like the loops' brokers
        return previous

    def sync_writer(self) -> SyncWriter | None:
        """The configured broker's synchronous writer in this process (None: the broker
        has none, so sync callers go through the loop thread)."""
        made = self._writer
        generation = fork_generation()
        if made is not None and made[0] is self.template and made[1] == generation:
            return made[2]
        with self._writer_lock:
            made = self._writer
            if made is None or made[0] is not self.template or made[1] != generation:
                # A forked child gets its own writer; the parent's is left alone.
                template = self.template
                writer = template.sync_writer() if isinstance(template, SyncWrites) else None
                made = self._writer = (template, generation, writer)
            return made[2]

    def close_writer(self) -> None:
        """Close this process's synchronous writer (the next sync call makes another)."""
        with self._writer_lock:
            made, self._writer = self._writer, None
        if made is not None and made[1] == fork_generation() and made[2] is not None:
            made[2].close()

    def _for_new_loop(self) -> Broker:
        if not self._taken:
            self._taken = True
            return self.template
        return self.template.clone()

    async def current(self) -> Broker:
        """The running loop's broker, connected on first use."""
        loop = asyncio.get_running_loop()
        entry = self._brokers.get(loop)
        if entry is None:
            entry = _LoopBroker(self._for_new_loop())
            self._brokers[loop] = entry
        if not entry.connected:
            async with entry.lock:
                if not entry.connected:
                    await entry.broker.connect()
                    entry.connected = True
        return entry.broker

    async def close_current(self) -> None:
        """Close and forget the running loop's broker, if it has one."""
        entry = self._brokers.pop(asyncio.get_running_loop(), None)
        if entry is not None and entry.connected:
            await entry.broker.close()
