"""``task.enqueue_sync``: the producer's path for sync callers, in the caller's thread.

A Django view, a script or a thread enqueues without a hop onto the app's background
event loop: the same :func:`vaultq.enqueue.flow` (payload checks, the task's policy,
before/after hooks, sealing, unique keys, custom ids) is driven here, and its writes go
straight to the broker through the broker's synchronous writer
(:class:`vaultq.brokers.writer.SyncWriter`: a pooled redis-py sync client, or pooled
sqlite3 connections), thread-safe and fork-safe.

Two things still take the loop thread, because they need an event loop: an async policy
(its answer is awaited there; a sync policy, every built-in one, is called here), and a
broker without a synchronous writer (a client handed in, the memory broker, a
third-party broker), for which the whole enqueue runs there as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from vaultq.brokers.writer import SyncWriter
from vaultq.enqueue import enqueue, flow
from vaultq.enqueue_options import EnqueueOptions
from vaultq.enqueue_steps import AwaitPolicy, MeasureClock, Step, Write, WriteKeyed, warn_clock
from vaultq.enqueue_writes import retrying_sync
from vaultq.errors import BrokerError
from vaultq.jobs import JobHandle
from vaultq.policy import finish_evaluation

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.tasks import Task

__all__ = ["enqueue_sync"]

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")


def enqueue_sync(
    app: App, task: Task[P, R], payloads: Sequence[P], options: EnqueueOptions
) -> list[JobHandle[R]]:
    """:func:`vaultq.enqueue.enqueue` for sync callers, in the calling thread."""
    writer = app.sync_writer()
    if writer is None:
        handles: list[JobHandle[R]] = app.run_sync(enqueue, app, task, payloads, options)
        return handles
    steps = flow(app, task, payloads, options)
    reply: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                result: list[JobHandle[R]] = done.value
                return result
            reply = error = None
            try:
                reply = _take_step(app, writer, step)
            except BaseException as exc:  # handed to the flow (its hooks hear of it)
                error = exc
    finally:
        steps.close()


def _take_step(app: App, writer: SyncWriter, step: Step) -> Any:
    if isinstance(step, Write):
        # Safe to send again: the broker skips a job whose same sealed bytes it already
        # took (a write that landed although its reply was lost).
        retrying_sync(app, lambda: writer.enqueue(step.items))
        return True
    if isinstance(step, WriteKeyed):
        # Idempotent: the same envelope written again returns its own id.
        return retrying_sync(
            app,
            lambda: writer.enqueue_keyed(
                step.item, key=step.key, key_ttl=step.key_ttl, ttl=step.ttl
            ),
        )
    if isinstance(step, AwaitPolicy):
        # An async policy needs an event loop: its answer is awaited on the loop thread.
        return app.run_sync(finish_evaluation, step.pending)
    if isinstance(step, MeasureClock):
        try:
            offset = app.clock.measure_sync(writer.time)
        except BrokerError:
            return None  # the enqueue itself will say what is wrong with the broker
        warn_clock(app, offset)
        return None
    # WriteUnique. Idempotent too: the same envelope written again reports success.
    return retrying_sync(app, lambda: writer.enqueue_unique(step.item, ttl=step.ttl))
