"""Cross-process wake-ups for the embedded broker: an enqueue wakes idle workers at once.

SQLite has no blocking read, so an idle worker polls (2 ms growing to 100 ms). To start
a job enqueued by another process within a millisecond or two, each waiting broker binds
a Unix datagram socket in a private directory beside the database (``<db>-wake/``, mode
0700, like ``-wal`` and ``-shm``), and every enqueue, once committed, sends one byte to
each socket there. The worker's event loop watches its socket and wakes the fetch that
waits, which then reads the database as usual.

A wake-up is only a hint: it carries no data (nothing to forge or to leak) and the
database stays the truth. Polling stays on underneath, so a lost or refused datagram
(a full socket buffer, a removed directory, a path too long for a socket, another event
loop than asyncio) costs latency, never a job. A socket left behind by a killed worker
is removed by the first sender that finds nobody listening on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["WAKE_SUFFIX", "WakeChannel", "WakeListener", "WakeSender", "wake_dir"]

logger = logging.getLogger("vaultq.brokers.sqlite")

WAKE_SUFFIX: Final = "-wake"
_SOCKET_SUFFIX: Final = ".sock"
_MAX_SOCKET_PATH: Final = 107
"""A Unix socket path holds at most 107 bytes on Linux (108 with its terminating NUL)."""
_RECENT_NS: Final = 2_000_000_000
"""A directory changed this recently is listed again on every wake: its mtime may be
coarser than the changes (two sockets bound within one tick share one mtime)."""


def wake_dir(db_path: Path) -> Path:
    """The directory of the wake-up sockets of the database at ``db_path``."""
    return db_path.with_name(db_path.name + WAKE_SUFFIX)


class WakeSender:
    """Sends wake-ups to every listener of one database. Thread-safe; after a fork the
    child opens its own socket."""

    def __init__(self, db_path: Path) -> None:
        self._dir = str(wake_dir(db_path))
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0
        self._targets: tuple[str, ...] = ()
        self._stamp = -1

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is not None and self._pid == os.getpid():
            return sock
        with self._lock:
            if self._sock is None or self._pid != os.getpid():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock, self._pid = sock, os.getpid()
            return self._sock

    def _listeners(self) -> tuple[str, ...]:
        try:
            stamp = os.stat(self._dir).st_mtime_ns
        except OSError:
            return ()  # nobody has listened yet (or the directory was removed)
        if stamp != self._stamp or time.time_ns() - stamp < _RECENT_NS:
            try:
                names = os.listdir(self._dir)
            except OSError:
                return ()
            self._targets = tuple(
                os.path.join(self._dir, name) for name in names if name.endswith(_SOCKET_SUFFIX)
            )
            self._stamp = stamp
        return self._targets

    def wake(self) -> None:
        """One byte to each listener; never raises, never blocks."""
        targets = self._listeners()
        if not targets:
            return
        try:
            sock = self._socket()
        except OSError:
            return
        for target in targets:
            try:
                sock.sendto(b"w", target)
            except BlockingIOError:
                pass  # its buffer is full: it has wake-ups waiting to be read already
            except ConnectionRefusedError:
                # Bound by a process that is gone (killed before it could tidy up).
                with contextlib.suppress(OSError):
                    os.unlink(target)
            except OSError:
                pass  # removed meanwhile, or not ours: that worker polls


class WakeListener:
    """One bound socket in the wake directory; :meth:`drain` reads what arrived."""

    def __init__(self, db_path: Path) -> None:
        directory = wake_dir(db_path)
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise OSError(f"{directory} is not a directory of this user")
        self.path = str(directory / f"{secrets.token_hex(6)}{_SOCKET_SUFFIX}")
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            raise OSError(f"the socket path {self.path} is too long for a Unix socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._pid = os.getpid()

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> None:
        while True:
            try:
                if not self._sock.recv(64):
                    return
            except OSError:  # BlockingIOError: read it all
                return

    def close(self) -> None:
        self._sock.close()
        if self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class WakeChannel:
    """A broker instance's end of the channel: sends after its enqueues, and listens
    while its fetches wait (on asyncio loops; other loops poll only)."""

    def __init__(self, db_path: Path | None) -> None:
        self._path = db_path
        self._sender = None if db_path is None else WakeSender(db_path)
        self._listener: WakeListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        if self._sender is not None:
            self._sender.wake()

    def listen(self, on_wake: Callable[[], None]) -> None:
        """Watch this broker's socket from the running loop, calling ``on_wake`` when a
        wake-up arrives (once per loop; a failure leaves the fetch polling)."""
        if self._path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): polling only
            return
        if loop is self._loop:
            return
        self.close()
        self._loop = loop
        try:
            listener = WakeListener(self._path)
        except OSError as exc:
            logger.debug("SQLite broker: no wake-up socket (%s); polling only", exc)
            return
        listener_ref = listener

        def woken() -> None:
            listener_ref.drain()
            on_wake()

        try:
            loop.add_reader(listener.fileno(), woken)
        except (NotImplementedError, OSError) as exc:
            listener.close()
            logger.debug("SQLite broker: cannot watch the wake-up socket (%s)", exc)
            return
        self._listener = listener

    def close(self) -> None:
        listener, self._listener = self._listener, None
        loop, self._loop = self._loop, None
        if listener is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.remove_reader(listener.fileno())
        listener.close()
