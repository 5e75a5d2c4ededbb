"""Sync attempts in reused daemon threads, and the count of those abandoned at a deadline.

A sync task cannot be interrupted: at its deadline the attempt is settled and its thread
is *abandoned* (it keeps running until the function returns). The guard counts them so
the worker can stop taking sync jobs when too many pile up (``max_abandoned_threads``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["ThreadGuard"]

log = logging.getLogger("vaultq.worker")

_IDLE_THREAD_SECONDS = 10.0
"""An idle sync thread exits after this long without work."""


class _DaemonThread(threading.Thread):
    """A reusable thread for sync attempts. A daemon, unlike anyio's worker threads: an
    abandoned attempt (``time.sleep(3600)``) must not keep the worker process alive at
    exit, since the interpreter joins every non-daemon thread before it exits."""

    def __init__(self, guard: ThreadGuard) -> None:
        super().__init__(name="vaultq-sync", daemon=True)
        self.guard = guard
        self.work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            try:
                job = self.work.get(timeout=_IDLE_THREAD_SECONDS)
            except queue.Empty:
                if self.guard._retire(self):
                    return
                continue  # taken from the idle list just now: its job is on the way
            job()
            self.guard._rest(self)


class ThreadGuard:
    """Runs sync attempts in reused daemon threads; counts attempts abandoned at their
    deadline whose threads still run."""

    def __init__(self, limit: int, tokens: int) -> None:
        self.limit = limit
        self.limiter = anyio.CapacityLimiter(tokens)
        self._lock = threading.Lock()
        self._idle: list[_DaemonThread] = []
        self.abandoned = 0

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            thread = self._idle.pop() if self._idle else None
        if thread is None:
            thread = _DaemonThread(self)
            thread.start()
        thread.work.put(job)

    def _retire(self, thread: _DaemonThread) -> bool:
        with self._lock:
            if thread in self._idle:
                self._idle.remove(thread)
                return True
            return False

    def _rest(self, thread: _DaemonThread) -> None:
        with self._lock:
            self._idle.append(thread)

    @property
    def full(self) -> bool:
        return self.abandoned >= self.limit

    async def run(self, fn: Callable[[], Any], label: str) -> Any:
        """Call ``fn`` in a daemon thread and wait for it; on cancellation, abandon it."""
        state = {"done": False, "abandoned": False}
        outcome: list[tuple[bool, Any]] = []
        finished = anyio.Event()
        token = anyio.lowlevel.current_token()

        def call() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the awaiting task, as to_thread does
                outcome.append((False, exc))
            finally:
                with self._lock:
                    state["done"] = True
                    abandoned = state["abandoned"]
                    if abandoned:
                        self.abandoned -= 1
                if abandoned:
                    log.info("abandoned thread of %s has finished", label)
                else:
                    # RuntimeError: the event loop is gone, so nobody is waiting any more.
                    with contextlib.suppress(RuntimeError):
                        anyio.from_thread.run_sync(finished.set, token=token)

        async with self.limiter:
            self._submit(functools.partial(contextvars.copy_context().run, call))
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                with self._lock:
                    if not state["done"]:
                        state["abandoned"] = True
                        self.abandoned += 1
                        log.warning(
                            "sync attempt of %s was stopped (deadline or cancel); its thread "
                            "keeps running (abandoned threads: %d of at most %d). Use "
                            "isolation='process' for code that must stop",
                            label,
                            self.abandoned,
                            self.limit,
                        )
                raise
        ok, value = outcome[0]
        if ok:
            return value
        raise value
