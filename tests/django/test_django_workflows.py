"""Workflows enqueued on commit (issue 16): ``enqueue_on_commit(chain)`` writes the chain
only when the transaction commits, never on rollback; the first step's policy is checked
at the call; a real worker process runs the committed chain."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from vqhelpers import queue_stats

from vaultq import Principal
from vaultq.errors import AuthorizationDenied, ConfigurationError
from vaultq.jobs import JobStatus

QUEUE = "vqflow"  # the queue of vqtestapp.flow_count and flow_label


class Boom(Exception):
    pass


def _principal(name: str, *, perm: bool) -> Principal:
    user = User.objects.create_user(name, password="x")  # noqa: S106
    if perm:
        user.user_permissions.add(Permission.objects.get(codename="run_report"))
        return Principal(f"user:{user.pk}", permissions={"vqtestapp.run_report"})
    return Principal(f"user:{user.pk}")


def test_a_chain_is_enqueued_on_commit_only(workers: Any, queue: str) -> None:
    from vqtestapp.jobs import Report, flow_count, flow_label
    from vqtestapp.models import Note

    from vaultq.django import enqueue_on_commit

    who = _principal(f"flow-{queue}", perm=True)
    before = queue_stats(QUEUE).ready
    # Rolled back: the handle exists, nothing reaches the broker, ever.
    with pytest.raises(Boom), transaction.atomic():
        note = Note.objects.create(key=f"rolled-{queue}")
        rolled = enqueue_on_commit(flow_count.s(Report(note.pk)).then(flow_label), principal=who)
        raise Boom
    assert queue_stats(QUEUE).ready == before
    # Committed: its first step is written at the commit, not before.
    with transaction.atomic():
        note = Note.objects.create(key=f"kept-{queue}")
        kept = enqueue_on_commit(flow_count.s(Report(note.pk)).then(flow_label), principal=who)
        assert queue_stats(QUEUE).ready == before
    assert queue_stats(QUEUE).ready == before + 1

    workers.start("--queues", QUEUE, "--concurrency", "2")
    assert kept.result_sync(timeout=60) == f"kept-{queue}:1"
    assert [s.status for s in kept.steps_sync()] == [JobStatus.SUCCEEDED] * 2
    assert [s.status for s in rolled.steps_sync()] == [JobStatus.PENDING] * 2


def test_a_workflow_refused_by_its_first_policy_registers_nothing(queue: str) -> None:
    from vqtestapp.jobs import Report, flow_count, flow_label
    from vqtestapp.models import Note

    from vaultq.django import enqueue_on_commit

    nobody = _principal(f"noflow-{queue}", perm=False)
    before = queue_stats(QUEUE).ready
    with transaction.atomic():
        note = Note.objects.create(key=f"refused-{queue}")
        with pytest.raises(AuthorizationDenied):
            enqueue_on_commit(flow_count.s(Report(note.pk)).then(flow_label), principal=nobody)
        with pytest.raises(ConfigurationError, match="takes no payload"):
            enqueue_on_commit(flow_count.s(Report(note.pk)), Report(note.pk))
    assert queue_stats(QUEUE).ready == before
