"""A Django view's enqueue goes to the broker from the request's thread: with a sync
policy, neither ``enqueue_on_commit`` (its enqueue-time authorization nor its write at
commit) nor the Tasks backend's ``task.enqueue`` hops onto the app's background event
loop. Checked by making that hop fail while they run. (An async policy, such as
``require_django_permission``, is still awaited on the loop thread.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from vqhelpers import queue_stats

from vaultq import Secret


class HopForbidden(AssertionError):
    pass


@pytest.fixture
def no_loop_hop() -> Iterator[list[str]]:
    from vaultq.django import get_app

    app = get_app()
    hops: list[str] = []

    def refuse(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        raise HopForbidden("a sync enqueue hopped onto the app's loop thread")

    app.run_sync = refuse  # type: ignore[method-assign]
    try:
        yield hops
    finally:
        del app.run_sync


def test_enqueue_on_commit_authorizes_and_writes_in_the_callers_thread(
    no_loop_hop: list[str],
) -> None:
    from vqtestapp.jobs import DashNote, dash

    from vaultq.django import enqueue_on_commit

    before = queue_stats("dash").ready  # (reads through App._run_sync, not patched)
    with transaction.atomic():
        first = enqueue_on_commit(dash, DashNote("in a transaction", Secret("s")))
    second = enqueue_on_commit(dash, DashNote("outside one", Secret("s")))
    assert no_loop_hop == []
    assert first != second
    assert queue_stats("dash").ready == before + 2


def test_the_tasks_backend_enqueues_in_the_callers_thread(no_loop_hop: list[str]) -> None:
    from vqtestapp.tasks import add

    before = queue_stats("djq").ready
    with transaction.atomic():
        add.using(queue_name="djq").enqueue(2, b=3)
    add.using(queue_name="djq").enqueue(4, b=5)
    assert no_loop_hop == []
    assert queue_stats("djq").ready == before + 2
