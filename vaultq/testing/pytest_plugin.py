"""vaultq's pytest plugin (entry point ``pytest11``): fixtures ``vaultq_app`` and
``vaultq_worker``.

Point it at your App once, in the pytest configuration::

    [tool.pytest.ini_options]
    vaultq_app = "myproject.jobs:app"

or override the fixture in ``conftest.py`` (any App, e.g. one built per test)::

    @pytest.fixture
    def vaultq_app() -> vaultq.App:
        return myproject.jobs.app

``vaultq_worker`` then moves that app to a fresh in-memory broker for the test (and back
afterwards), records what is enqueued, and gives a :class:`vaultq.testing.TestWorker`:
``await vaultq_worker.run_pending()``, ``vaultq_worker.enqueued(refund)``.

Django projects get ``vaultq_django_jobs`` (see :mod:`vaultq.testing.django`).

The plugin only adds an ini option and fixtures with ``vaultq_`` names, and no
hooks that touch collection or reporting: projects that do not ask for the fixtures see
no difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.testing.django import DjangoJobs
    from vaultq.testing.worker import TestWorker

__all__ = ["pytest_addoption", "vaultq_app", "vaultq_django_jobs", "vaultq_worker"]

INI = "vaultq_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI,
        help="the App the vaultq_app fixture returns, as module:attr (e.g. myproject.jobs:app)",
        default="",
    )


@pytest.fixture
def vaultq_app(request: pytest.FixtureRequest) -> App:
    """Your App, named by the ``vaultq_app`` ini option (override this fixture in
    ``conftest.py`` to build it yourself)."""
    spec = str(request.config.getini(INI) or "")
    if not spec:
        pytest.fail(
            "the vaultq_app fixture does not know your App: set `vaultq_app = "
            '"yourpackage.module:app"` in your pytest configuration ([tool.pytest.ini_options] '
            "or pytest.ini), or define a `vaultq_app` fixture in conftest.py that returns it",
            pytrace=False,
        )
    from vaultq.loader import load_app

    return load_app(spec)


@pytest.fixture
def vaultq_worker(vaultq_app: App) -> Iterator[TestWorker]:
    """A :class:`~vaultq.testing.TestWorker` for ``vaultq_app`` on a fresh memory broker
    (the app's own broker is put back after the test)."""
    from vaultq.testing.worker import TestWorker

    previous = vaultq_app.swap_broker("memory://")
    worker = TestWorker(vaultq_app)
    try:
        yield worker
    finally:
        worker.clear()
        vaultq_app.swap_broker(previous)


@pytest.fixture
def vaultq_django_jobs() -> Iterator[DjangoJobs]:
    """Django projects (pytest-django or not): ``vaultq.testing.django.vaultq_jobs`` for
    one test -- the App of ``settings.VAULTQ`` on a fresh memory broker; ``run()`` runs
    the test's on-commit enqueues, then the jobs, on the test's database connections."""
    from vaultq.testing.django import vaultq_jobs

    helper = vaultq_jobs(run_on_exit=False)
    jobs = helper.enable()
    try:
        yield jobs
    finally:
        helper.disable()
