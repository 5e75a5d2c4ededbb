"""Telling vaultq's own cancellations from a ``CancelledError`` that job code raised.

Awaiting a cancelled future is ordinary asyncio: it raises ``CancelledError`` in the
awaiting task although nobody cancelled that task. Taken for a shutdown, such an error
used to leave the job without an outcome and stop the worker from fetching. Only a
cancellation that was *issued* counts: the attempt's own scope was cancelled (deadline,
cancel by id, shutdown), or the task running it has a pending cancellation request
(the worker's task group is being torn down). Anything else is the job's failure.
"""

from __future__ import annotations

import asyncio

import anyio

__all__ = ["cancel_requested", "is_cancellation", "issued"]


def is_cancellation(exc: BaseException) -> bool:
    """``exc`` is (or a group holding) the event loop's cancellation exception."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)


def cancel_requested() -> bool:
    """The running task has a pending cancellation request (a scope around it is being
    cancelled). False outside asyncio."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not inside an asyncio loop
        return False
    # anyio cancels a scope by calling Task.cancel() and uncancels when the scope exits:
    # a positive count means some scope around us is cancelling this task right now.
    return task is not None and task.cancelling() > 0


def issued(exc: BaseException, scope: anyio.CancelScope) -> bool:
    """True when ``exc`` is a cancellation that someone issued: ``scope`` (the attempt's
    or the policy's) was cancelled, or the running task is being cancelled from outside.
    False for a ``CancelledError`` that job code raised on its own."""
    return is_cancellation(exc) and (scope.cancel_called or cancel_requested())
