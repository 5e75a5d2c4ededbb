"""``vaultq.testing.django.vaultq_jobs`` in Django's own test classes: a view's
``enqueue_on_commit`` inside ``TestCase`` (whose transaction never commits), the job's
ORM calls and its ``require_django_permission`` check on the test's uncommitted rows,
stacked with ``override_settings``; and the configured broker put back afterwards."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import TestCase, override_settings
from vqtestapp.jobs import OrmWrite, Report, ReportResult, orm_write, orm_write_sync, report
from vqtestapp.models import Note

from vaultq.django import enqueue_on_commit, get_app
from vaultq.testing.django import DjangoJobs, vaultq_jobs


def make_user(name: str, *, perm: bool) -> Any:
    user = User.objects.create_user(name, password="x")  # noqa: S106
    if perm:
        user.user_permissions.add(Permission.objects.get(codename="run_report"))
    return user


@override_settings(ALLOWED_HOSTS=["testserver"])
@vaultq_jobs(attr_name="jobs")
class ViewsEnqueueOnCommit(TestCase):
    jobs: DjangoJobs

    def test_the_view_job_runs_on_the_tests_uncommitted_rows(self) -> None:
        alice = make_user("tk-alice", perm=True)
        self.client.force_login(alice)
        response = self.client.post("/report/", {"key": "tk-1"})
        assert response.status_code == 200
        job_id = response.json()["job_id"]
        note = Note.objects.get(key="tk-1")  # created in the test's transaction
        # TestCase never commits: the job is still waiting for on_commit.
        assert self.jobs.enqueued(report) == []

        (ran,) = self.jobs.run()
        assert self.jobs.enqueued(report) == [Report(note_id=note.pk)]
        (job,) = self.jobs.jobs(report)
        assert (job.job_id, job.principal_id) == (job_id, f"user:{alice.pk}")
        assert (ran.job_id, ran.task, ran.outcome) == (job_id, "vqtestapp.report", "succeeded")
        # The job read the uncommitted Note; its policy looked alice up, uncommitted too.
        result = get_app().job(job_id, task=report).result_sync(timeout=5)
        assert result == ReportResult(f"user:{alice.pk}", ["vqtestapp.run_report"], "tk-1")

    def test_a_permission_revoked_before_the_run_denies_the_job(self) -> None:
        alice = make_user("tk-alice2", perm=True)
        self.client.force_login(alice)
        assert self.client.post("/report/", {"key": "tk-2"}).status_code == 200
        self.jobs.commit()  # on the broker now, as after a real commit
        alice.user_permissions.clear()
        (ran,) = self.jobs.run()
        assert (ran.outcome, ran.reason) == ("denied", "denied")

    def test_a_rolled_back_view_enqueues_nothing(self) -> None:
        self.client.force_login(make_user("tk-bob", perm=True))
        response = self.client.post("/report/", {"key": "tk-3", "fail": "1"})
        assert response.status_code == 409
        assert self.jobs.run() == []
        assert self.jobs.enqueued(report) == []

    def test_a_user_without_the_permission_is_refused_at_enqueue(self) -> None:
        self.client.force_login(make_user("tk-carol", perm=False))
        assert self.client.post("/report/", {"key": "tk-4"}).status_code == 403
        assert self.jobs.run() == [] and self.jobs.enqueued(report) == []

    def test_job_writes_are_seen_by_the_test_and_rolled_back_with_it(self) -> None:
        with transaction.atomic():
            orm_write_sync.enqueue_sync(OrmWrite(batch="tk-w", n=1))
            orm_write.enqueue_sync(OrmWrite(batch="tk-w", n=2))
        assert [r.outcome for r in self.jobs.run()] == ["succeeded", "succeeded"]
        assert sorted(Note.objects.filter(batch="tk-w").values_list("value", flat=True)) == [1, 2]


class BrokerIsPutBack(TestCase):
    def test_the_configured_broker_is_back_after_the_block(self) -> None:
        app = get_app()
        configured = app.broker_url
        with vaultq_jobs() as jobs:
            assert app.broker_url.startswith("memory://")
            orm_write_sync.enqueue_sync(OrmWrite(batch="tk-x", n=1))
            assert jobs.ran == []
        # Leaving the block ran what was pending, then put the broker back.
        assert [r.outcome for r in jobs.ran] == ["succeeded"]
        assert app.broker_url == configured
        assert Note.objects.filter(batch="tk-x").count() == 1

    def test_a_failing_block_runs_nothing_more(self) -> None:
        try:
            with vaultq_jobs() as jobs:
                orm_write_sync.enqueue_sync(OrmWrite(batch="tk-y", n=1))
                raise LookupError("the test failed")
        except LookupError:
            pass
        assert jobs.ran == []
        assert Note.objects.filter(batch="tk-y").count() == 0


def test_a_decorated_function_gets_the_jobs_as_a_keyword() -> None:
    seen: list[DjangoJobs] = []

    @vaultq_jobs(kwarg_name="jobs", run_on_exit=False)
    def body(jobs: DjangoJobs) -> None:
        seen.append(jobs)
        assert get_app().broker_url.startswith("memory://")

    body()
    assert len(seen) == 1 and not get_app().broker_url.startswith("memory://")


def test_the_pytest_fixture_for_django(vaultq_django_jobs: DjangoJobs) -> None:
    """The plugin's fixture (no decorator): outside TestCase the on-commit enqueue happens
    at the real commit, and run() runs it."""
    assert get_app().broker_url.startswith("memory://")
    with transaction.atomic():
        enqueue_on_commit(orm_write_sync, OrmWrite(batch="tk-fixture", n=5))
        assert vaultq_django_jobs.enqueued(orm_write_sync) == []  # not committed yet
    assert vaultq_django_jobs.enqueued(orm_write_sync) == [OrmWrite(batch="tk-fixture", n=5)]
    (ran,) = vaultq_django_jobs.run()
    assert ran.outcome == "succeeded"
    assert Note.objects.filter(batch="tk-fixture").count() == 1
