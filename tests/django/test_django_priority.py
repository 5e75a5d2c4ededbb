"""Django's integer task priority on vaultq (``supports_priority = True``): negative ->
low, 0 -> the task's default, positive -> high, honoured by a real worker process."""

from __future__ import annotations

from typing import Any

from vqhelpers import Workers, wait_for

from vaultq import Priority
from vaultq.django import compat


def test_django_priorities_decide_which_job_a_worker_starts_first() -> None:
    from vqtestapp.tasks import add

    # Enqueued before any worker runs, in the worst order: lows, normals, then the high one.
    lows = [add.using(priority=-50).enqueue(i) for i in range(3)]
    normals = [add.enqueue(10 + i) for i in range(3)]
    high = add.using(priority=7).enqueue(100)
    workers = Workers()
    workers.start("--queues", "default", "--concurrency", "1", cli=True)
    try:

        def all_done() -> list[Any] | None:
            results = [add.get_result(r.id) for r in (*lows, *normals, high)]
            return results if all(r.is_finished for r in results) else None

        done = wait_for(all_done, 60, "the prioritised jobs")
    finally:
        workers.stop_all()
    assert all(r.status == compat.TaskResultStatus.SUCCESSFUL for r in done)
    started = {r.id: r.started_at for r in done}
    first_normal = min(started[r.id] for r in normals)
    assert started[high.id] <= first_normal
    assert max(started[r.id] for r in normals) <= min(started[r.id] for r in lows)
    assert [r.return_value for r in done][-1] == 101


def test_the_priority_option_sets_a_tasks_default_level() -> None:
    from types import SimpleNamespace

    from vaultq.django.apps import get_config
    from vaultq.django.backend import VaultqBackend
    from vaultq.priority import django_priority

    path = f"{__name__}.urgent"
    backend = VaultqBackend(
        "prio", {"QUEUES": ["default"], "OPTIONS": {"TASKS": {path: {"PRIORITY": "high"}}}}
    )
    fake = SimpleNamespace(func=urgent, queue_name="default", takes_context=False)
    binding = backend._register(get_config(), fake, path)
    try:
        assert binding.vaultq_task.priority is Priority.HIGH
    finally:
        get_config().bindings.pop(path, None)
        get_config().app._tasks.pop(path, None)
    assert [django_priority(p) for p in (-100, 0, 100)] == list(Priority)


def urgent(x: int) -> int:
    return x
