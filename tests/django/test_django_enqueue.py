"""Views -> enqueue_on_commit -> real worker process, with the user as principal."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Group, Permission, User
from django.test import Client
from vqhelpers import queue_stats

from vaultq import Principal
from vaultq.errors import JobDenied, PayloadError
from vaultq.jobs import JobStatus


def make_user(name: str, *, perm: bool) -> Any:
    user = User.objects.create_user(name, password="x")  # noqa: S106
    if perm:
        user.user_permissions.add(Permission.objects.get(codename="run_report"))
    return user


def uname(queue: str, what: str) -> str:
    return f"{what}-{queue}"


def test_app_is_configured_and_jobs_autodiscovered() -> None:
    from django.apps import apps

    import vaultq.django
    from vaultq.django import app

    assert app is apps.get_app_config("vaultq").app
    assert app is vaultq.django.app
    names = set(app.tasks)
    assert {"vqtestapp.report", "vqtestapp.orm_write", "vqtestapp.tasks.add"} <= names
    assert app.keyring.can_sign
    assert app.keyring_source.endswith("vaultq.keys")


def test_commit_rollback_principal_and_revocation(workers: Any, queue: str) -> None:
    from vqtestapp.models import Note

    from vaultq.django import get_app

    app = get_app()
    alice = make_user(uname(queue, "alice"), perm=True)
    carol = make_user(uname(queue, "carol"), perm=True)
    bob = make_user(uname(queue, "bob"), perm=False)
    group = Group.objects.create(name=uname(queue, "auditors"))
    alice.groups.add(group)

    client = Client()
    client.force_login(alice)
    # Rolled back: the job id exists, nothing reaches the broker.
    rolled = client.post("/report/", {"key": "rolled", "queue": queue, "fail": "1"})
    assert rolled.status_code == 409
    assert queue_stats(queue).ready == 0
    # Committed: exactly one job.
    ok = client.post("/report/", {"key": "kept", "queue": queue})
    assert ok.status_code == 200
    assert queue_stats(queue).ready == 1
    assert not Note.objects.filter(key="rolled").exists()

    # A user without the permission is refused at enqueue: 403, no note, no job.
    client.force_login(bob)
    refused = client.post("/report/", {"key": "bob", "queue": queue})
    assert refused.status_code == 403
    assert not Note.objects.filter(key="bob").exists()
    assert queue_stats(queue).ready == 1

    # Carol may enqueue, then loses the permission before a worker runs the job.
    client.force_login(carol)
    revoked = client.post("/report/", {"key": "carol", "queue": queue})
    assert revoked.status_code == 200
    assert queue_stats(queue).ready == 2
    carol.user_permissions.clear()

    worker = workers.start("--queues", queue, "--concurrency", "2")
    good = app.job(ok.json()["job_id"], queue=queue)
    result = good.result_sync(timeout=60)
    assert result["principal"] == f"user:{alice.pk}"
    assert "vqtestapp.run_report" in result["permissions"]
    assert result["note_key"] == "kept"

    denied = app.job(revoked.json()["job_id"], queue=queue)
    with pytest.raises(JobDenied):
        denied.result_sync(timeout=30)
    assert denied.status_sync() == JobStatus.DENIED

    # The rolled-back job never reaches the worker: still unknown, nothing left queued.
    stats = queue_stats(queue)
    assert (stats.ready, stats.running) == (0, 0)
    assert app.job(rolled.json()["job_id"], queue=queue).status_sync() == JobStatus.PENDING
    assert "vaultq worker" in workers.log(worker)


def test_async_view_enqueues_as_the_user(workers: Any, queue: str) -> None:
    from vaultq.django import get_app

    app = get_app()
    dora = make_user(uname(queue, "dora"), perm=True)
    client = Client()
    client.force_login(dora)
    resp = client.post("/areport/", {"key": "async", "queue": queue})
    assert resp.status_code == 200
    assert queue_stats(queue).ready == 1
    client.force_login(make_user(uname(queue, "eve"), perm=False))
    assert client.post("/areport/", {"key": "eve", "queue": queue}).status_code == 403
    workers.start("--queues", queue, cli=True)  # `vaultq worker vaultq.django`
    result = app.job(resp.json()["job_id"], queue=queue).result_sync(timeout=60)
    assert result["principal"] == f"user:{dora.pk}"


def test_outside_a_transaction_enqueues_at_once(queue: str) -> None:
    from django.db import transaction
    from vqtestapp.jobs import Report, report

    from vaultq.django import enqueue_on_commit

    # Its own user: the policy looks the principal up in the database, and which user has
    # pk=1 depends on which test file ran first.
    user = make_user(uname(queue, "outside"), perm=True)
    p = Principal(f"user:{user.pk}", permissions={"vqtestapp.run_report"})
    job_id = enqueue_on_commit(report, Report(note_id=1), principal=p, queue=queue)
    assert len(job_id) == 32
    assert queue_stats(queue).ready == 1
    with transaction.atomic():
        enqueue_on_commit(report, Report(note_id=2), principal=p, queue=queue)
        assert queue_stats(queue).ready == 1  # not before commit
    assert queue_stats(queue).ready == 2
    with pytest.raises(PayloadError):
        enqueue_on_commit(report, {"note_id": 1}, principal=p, queue=queue)


def test_principal_mapping() -> None:
    from django.apps import apps

    from vaultq.django import acting_as, current_principal, principal_from_user

    assert principal_from_user(None).is_anonymous
    assert principal_from_user(AnonymousUser()).is_anonymous
    staff = User.objects.create_user("staff-map", is_staff=True)
    staff.groups.add(Group.objects.create(name="editors-map"))
    staff.user_permissions.add(Permission.objects.get(codename="run_report"))
    p = principal_from_user(User.objects.get(pk=staff.pk))
    assert p.id == f"user:{staff.pk}"
    assert p.roles == {"editors-map", "staff"}
    assert p.permissions == {"vqtestapp.run_report"}
    boss = User.objects.create_superuser("boss-map", password="x")  # noqa: S106
    assert {"staff", "superuser"} <= principal_from_user(boss).roles
    assert "vqtestapp.run_report" in principal_from_user(boss).permissions
    gone = User.objects.create_user("gone-map", is_active=False, is_staff=True)
    assert principal_from_user(gone) == Principal(f"user:{gone.pk}")

    config = apps.get_app_config("vaultq")
    saved = config._mapper
    config._mapper = lambda user: Principal(f"custom:{user.get_username()}")
    try:
        assert principal_from_user(staff).id == "custom:staff-map"
        with acting_as(staff) as who:
            assert current_principal() == who
        assert current_principal() is None
    finally:
        config._mapper = saved


def test_fork_drops_inherited_connections() -> None:
    import os

    from django.db import connection
    from vqtestapp.models import Note

    before = Note.objects.filter(key="fork-check").count()
    assert connection.connection is not None
    pid = os.fork()
    if pid == 0:  # child: the at-fork hook of vaultq.django must have dropped it
        os._exit(0 if connection.connection is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connection.connection is not None  # the parent's is untouched
    # ...and still works: a write and a read through it after the fork.
    Note.objects.create(key="fork-check")
    assert Note.objects.filter(key="fork-check").count() == before + 1


def test_cli_without_settings_module_says_what_to_do() -> None:
    import subprocess
    import sys

    from vqhelpers import worker_env

    env = worker_env()
    del env["DJANGO_SETTINGS_MODULE"]
    proc = subprocess.run(
        [sys.executable, "-m", "vaultq", "worker", "vaultq.django"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "DJANGO_SETTINGS_MODULE" in proc.stderr


def test_typed_at_the_call_every_django_entry_point(queue: str) -> None:
    """enqueue_on_commit, aenqueue_on_commit and the Django Tasks backend refuse a
    wrongly typed payload at the call, naming the field and never the value, and nothing
    reaches the broker even once the transaction commits."""
    import asyncio
    import math

    from django.db import transaction
    from vqtestapp.jobs import Report, report
    from vqtestapp.tasks import Color, Point, paint

    from vaultq.django import aenqueue_on_commit, enqueue_on_commit

    marker = "MARKER-4242"
    p = Principal("user:1", permissions={"vqtestapp.run_report"})
    bad = Report(note_id=marker)  # type: ignore[arg-type]  # Structs do not check types
    with transaction.atomic(), pytest.raises(PayloadError) as info:
        enqueue_on_commit(report, bad, principal=p, queue=queue)
    assert info.value.field == "$.note_id" and marker not in str(info.value)
    with pytest.raises(PayloadError, match=r"\$\.note_id"):
        enqueue_on_commit(report, bad, principal=p, queue=queue)  # outside a transaction
    with pytest.raises(PayloadError, match=r"\$\.note_id"):
        asyncio.run(aenqueue_on_commit(report, bad, principal=p, queue=queue))
    stats = queue_stats(queue)
    assert (stats.ready, stats.delayed) == (0, 0)

    before = queue_stats("default")
    # convert() passed Struct instances through unchecked: Point(1, marker) got enqueued.
    with pytest.raises(PayloadError) as info:
        paint.enqueue(Color.RED, Point(1, marker))  # type: ignore[arg-type]
    assert info.value.field == "$.p.y" and marker not in str(info.value)
    # NaN became null, then None, silently.
    with pytest.raises(PayloadError) as info:
        paint.enqueue(Color.RED, Point(1, 2), factor=math.nan)
    assert info.value.field == "$.factor"
    # msgspec's own message quotes a bad enum value; the error must not.
    with pytest.raises(PayloadError) as info:
        paint.enqueue(marker, Point(1, 2))
    assert info.value.field == "$.color" and marker not in str(info.value)
    with transaction.atomic(), pytest.raises(PayloadError, match=r"\$\.p\.y"):
        paint.enqueue(Color.BLUE, Point(1, marker))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=r"\$\.p\.y"):
        asyncio.run(paint.aenqueue(Color.BLUE, Point(1, marker)))  # type: ignore[arg-type]
    after = queue_stats("default")
    assert (after.ready, after.delayed) == (before.ready, before.delayed)


def test_the_core_checks_run_at_the_call_inside_a_transaction(queue: str) -> None:
    """enqueue_on_commit runs the core's own enqueue checks (vaultq.enqueue.check_call)
    before the transaction can commit: a schedule the core refuses is refused at the
    call, not later from the committing ``atomic`` block."""
    from django.db import transaction
    from vqtestapp.jobs import Report, report

    from vaultq.django import enqueue_on_commit
    from vaultq.enqueue import MAX_DEFER
    from vaultq.errors import ConfigurationError

    p = Principal("user:1", permissions={"vqtestapp.run_report"})
    with transaction.atomic():
        with pytest.raises(ConfigurationError, match="delay must be"):
            enqueue_on_commit(report, Report(note_id=1), principal=p, delay=MAX_DEFER * 2)
        with pytest.raises(ConfigurationError, match="finite time"):
            enqueue_on_commit(report, Report(note_id=1), principal=p, at=float("inf"))
    stats = queue_stats(queue)
    assert (stats.ready, stats.delayed) == (0, 0)
