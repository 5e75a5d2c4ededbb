"""ORM hygiene around every job: :class:`JobHygiene`, the middleware ``vaultq.django``
installs on its App.

- Sync task bodies run in worker threads: ``close_old_connections()`` before and after
  each job in that thread, as Django does around a request (honours ``CONN_MAX_AGE``).
- Async task bodies each get their own ``ThreadSensitiveContext``: the ORM's
  ``sync_to_async`` calls of one job share one thread (and so one connection and one
  transaction), and two concurrent jobs never share either. That thread ends with the job,
  so its connections are closed when the job ends, whatever ``CONN_MAX_AGE`` says.
- After a fork, connections inherited from the parent are dropped without a word to the
  server, which would otherwise see the parent's session torn down.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import close_old_connections, connections, reset_queries

from vaultq.middleware import JobInfo, Middleware

__all__ = [
    "JobHygiene",
    "around_async_job",
    "around_sync_job",
    "close_inherited_connections",
    "close_thread_connections",
]


def _before() -> None:
    reset_queries()
    close_old_connections()


def around_sync_job(call: Callable[[], Any]) -> Any:
    """Wraps one sync job, in the job's own thread."""
    _before()
    try:
        return call()
    finally:
        close_old_connections()


def close_thread_connections() -> None:
    """Close this thread's connections (its thread is about to end)."""
    connections.close_all()


async def around_async_job(call: Callable[[], Awaitable[Any]]) -> Any:
    """Wraps one async job: its ORM calls run in a thread of its own."""
    async with ThreadSensitiveContext():
        await sync_to_async(_before)()
        try:
            return await call()
        finally:
            await sync_to_async(close_thread_connections)()


class JobHygiene(Middleware):
    """:func:`around_sync_job` and :func:`around_async_job` as middleware: they run where
    the task runs (its thread; the child process under ``isolation="process"``)."""

    def around_sync(self, job: JobInfo, call: Callable[[], None]) -> None:
        around_sync_job(call)

    async def around_async(self, job: JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        await around_async_job(call)


def close_inherited_connections() -> None:
    """In a forked child: forget the parent's DB connections without closing them on the
    server side (close the file descriptor only), then reset Django's handles."""
    for conn in connections.all(initialized_only=True):
        raw = getattr(conn, "connection", None)
        if raw is None:
            continue
        fileno = getattr(raw, "fileno", None)
        if callable(fileno):
            with contextlib.suppress(OSError, TypeError, ValueError):
                os.close(fileno())
        # Drop the handle without a protocol-level close, which would end the parent's
        # session on the shared socket.
        conn.connection = None
        conn.closed_in_transaction = False
        conn.in_atomic_block = False
        conn.savepoint_ids = []
        conn.needs_rollback = False
        conn.run_on_commit = []
