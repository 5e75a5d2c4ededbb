"""The test kit: run your tasks in tests through vaultq's real pipeline.

- ``memory://`` (:mod:`vaultq.brokers.memory`): the in-memory broker, not durable and
  not shared across processes, which passes the same contract suite as Redis and SQLite.
- :class:`TestWorker` / :func:`run_pending`: run queued jobs in-process -- sealed, opened,
  verified, authorized by the task's policy, bounded by its deadline, settled -- and see
  what ran; :meth:`TestWorker.enqueued` gives the typed payloads enqueued for a task.
- ``vaultq.testing.pytest_plugin`` (installed as a pytest plugin): fixtures
  ``vaultq_app`` and ``vaultq_worker``.
- ``vaultq.testing.django``: :class:`~vaultq.testing.django.vaultq_jobs` for Django
  tests (``TestCase``, ``override_settings``, ``enqueue_on_commit``).

See docs/testing.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vaultq.testing.worker import EnqueuedJob, Ran, TestWorker, run_pending, run_pending_sync

__all__ = ["EnqueuedJob", "Ran", "TestWorker", "run_pending", "run_pending_sync"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: pytest imports vaultq.testing.pytest_plugin (this package
    # first) in every session of a project that has vaultq installed, tests or not.
    if name in __all__:
        from vaultq.testing import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'vaultq.testing' has no attribute {name!r}")
