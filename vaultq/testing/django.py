"""Django tests with vaultq: :class:`vaultq_jobs`, a test decorator / context manager.

::

    from vaultq.testing.django import vaultq_jobs

    @vaultq_jobs(attr_name="jobs")          # like @override_settings: a class or a test
    class RefundTests(TestCase):
        def test_refund(self):
            self.client.post("/refund/", {"order": 7})    # enqueue_on_commit inside
            (ran,) = self.jobs.run()                       # "commit", then run the jobs
            assert ran.outcome == "succeeded"
            assert self.jobs.enqueued(refund) == [Refund(order_id=7)]

While it is active, the configured App (``settings.VAULTQ``) uses a fresh in-memory
broker (``memory://``), and its own broker is put back afterwards. :meth:`DjangoJobs.run`
first runs the ``transaction.on_commit`` callbacks registered since it began -- in a
``TestCase`` the test's transaction never commits, so ``enqueue_on_commit`` would
otherwise never reach the broker -- and then the jobs, through the real pipeline
(:class:`vaultq.testing.TestWorker`). Leaving a ``with`` block (or a decorated test
function) without an error runs what is still pending.

While it is active, every thread uses the test's database connections (as
``LiveServerTestCase`` shares them with its server thread) and closing them is a no-op:
inside ``TestCase`` a job -- and a policy that looks the user up, like
``require_django_permission`` -- sees the rows the test created, and its writes are
rolled back with the test. Jobs run one at a time (``TestWorker(concurrency=1)``).

Built on Django's ``TestContextDecorator``, so it stacks with ``override_settings``.
"""

from __future__ import annotations

from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connections
from django.test.utils import TestContextDecorator

from vaultq.testing.worker import EnqueuedJob, Ran, TestWorker

if TYPE_CHECKING:
    import msgspec

    from vaultq.app import App
    from vaultq.brokers.base import Broker
    from vaultq.tasks import Task

    P = TypeVar("P", bound=msgspec.Struct)

__all__ = ["DjangoJobs", "vaultq_jobs"]


class DjangoJobs:
    """What :class:`vaultq_jobs` hands the test: run jobs, read what was enqueued."""

    def __init__(self, app: App, worker: TestWorker, aliases: list[str]) -> None:
        self.app = app
        self.worker = worker
        self.ran: list[Ran] = []
        """Everything :meth:`run` ran so far, in order."""
        self._aliases = aliases
        self._commit_marks = {a: len(connections[a].run_on_commit) for a in aliases}

    def run(self, *, delayed: bool = False) -> list[Ran]:
        """Run the on-commit callbacks registered since this began (as if the test's
        transaction committed), then every due job and those they enqueue; returns what
        ran now. ``delayed=True`` also runs delayed jobs and retries (see
        :meth:`TestWorker.run_pending`)."""
        self.commit()
        ran = self.worker.run_pending_sync(delayed=delayed)
        self.ran += ran
        return ran

    def commit(self) -> None:
        """Run the ``transaction.on_commit`` callbacks registered since this began, once
        each (like ``TestCase.captureOnCommitCallbacks(execute=True)``), including those
        the callbacks register in turn."""
        for alias in self._aliases:
            conn = connections[alias]
            while len(conn.run_on_commit) > self._commit_marks[alias]:
                start = self._commit_marks[alias]
                pending = conn.run_on_commit[start:]
                # Taken off the connection: should the outer transaction really commit
                # (outside TestCase), they must not run a second time.
                del conn.run_on_commit[start:]
                for _, callback, robust in pending:
                    try:
                        callback()
                    except Exception:
                        if not robust:
                            raise

    def enqueued(self, task: Task[P, Any]) -> list[P]:
        """The payloads enqueued for ``task``, typed (see :meth:`TestWorker.enqueued`)."""
        return self.worker.enqueued(task)

    def jobs(self, task: Task[P, Any]) -> list[EnqueuedJob[P]]:
        """The jobs enqueued for ``task`` with ids, queue, principal and timing."""
        return self.worker.jobs(task)


class vaultq_jobs(TestContextDecorator):  # type: ignore[misc]  # lower case, like override_settings
    """Use the configured App (or ``app``) on a fresh memory broker while a test runs;
    see the module docstring. ``attr_name``/``kwarg_name``: where a decorated test class
    or function receives the :class:`DjangoJobs` (as with ``override_settings``).
    ``run_on_exit``: run what is still pending when a ``with`` block or decorated
    function ends without an error (default True)."""

    def __init__(
        self,
        app: App | None = None,
        *,
        attr_name: str | None = None,
        kwarg_name: str | None = None,
        using: list[str] | None = None,
        run_on_exit: bool = True,
    ) -> None:
        super().__init__(attr_name=attr_name, kwarg_name=kwarg_name)
        self._app = app
        self._using = using
        self._run_on_exit = run_on_exit
        self._active: list[tuple[DjangoJobs, Broker, _SharedConnections]] = []

    def enable(self) -> DjangoJobs:
        app = self._app
        if app is None:
            from vaultq.django import get_app

            app = get_app()
        aliases = self._using or list(connections)
        shared = _SharedConnections(aliases)
        previous = app.swap_broker("memory://")
        jobs = DjangoJobs(app, TestWorker(app), aliases)
        shared.__enter__()
        self._active.append((jobs, previous, shared))
        return jobs

    def disable(self) -> None:
        jobs, previous, shared = self._active.pop()
        shared.__exit__(None, None, None)
        jobs.app.swap_broker(previous)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._run_on_exit:
                self._active[-1][0].run()
        finally:
            self.disable()


class _SharedConnections:
    """For the life of a :class:`vaultq_jobs`: every thread gets this thread's database
    connections, and closing them is a no-op.

    Jobs, their policies (``require_django_permission`` looks the user up in a thread of
    its own) and the ORM hygiene hooks all run in other threads; inside ``TestCase`` they
    must see the test's uncommitted rows and must not close its connection mid-
    transaction (``close_old_connections`` would), as Django's test client avoids too.
    Jobs run one at a time, so no connection is used by two threads at once."""

    def __init__(self, aliases: list[str]) -> None:
        self.conns = {alias: connections[alias] for alias in aliases}
        self.saved: Any = None

    def __enter__(self) -> None:
        for conn in self.conns.values():
            conn.inc_thread_sharing()
            conn.close = _keep_open  # an instance attribute: shadows the method
        # Django keeps connections in a thread-local; one shared namespace instead.
        self.saved = connections._connections
        connections._connections = SimpleNamespace(**self.conns)

    def __exit__(self, *exc: object) -> None:
        connections._connections = self.saved
        for conn in self.conns.values():
            del conn.close
            conn.dec_thread_sharing()


def _keep_open() -> None:
    """``close()`` of a shared connection: it stays open for the test."""
