"""Django test project for vaultq.django: real Django, a real SQLite database file, the
session's private Redis (or the embedded SQLite broker with VQTEST_BROKER_KIND=sqlite),
and real worker processes (``manage.py vaultq_worker`` / ``vaultq worker vaultq.django``).

Django is set up once, when this directory is collected. Only VQTEST_* variables stay in
os.environ (``DJANGO_SETTINGS_MODULE`` is removed again), logging is left alone
(``LOGGING_CONFIG = None``), so the rest of the suite does not notice.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from vqhelpers import WORK as _WORK  # noqa: E402
from vqhelpers import Workers  # noqa: E402


def _setup() -> None:
    import django

    from vaultq.keyring import Keyring

    keys = _WORK / "vaultq.keys"
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(Keyring.generate().to_json())
    os.environ["VQTEST_DB"] = str(_WORK / "db.sqlite3")
    os.environ["VQTEST_KEYS"] = str(keys)
    os.environ["VQTEST_APP"] = "vqt" + uuid.uuid4().hex[:8]
    # Placeholder until the session fixture knows the private Redis URL (set_broker()
    # swaps it before the App's first use).
    os.environ["VQTEST_BROKER"] = f"sqlite:///{_WORK / 'broker.db'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "vq_settings"
    try:
        django.setup()
    finally:
        del os.environ["DJANGO_SETTINGS_MODULE"]
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


_setup()


@pytest.fixture(scope="session", autouse=True)
def vq_broker(request: pytest.FixtureRequest) -> str:
    """The broker every Django test (and worker subprocess) uses."""
    from vaultq.django import get_app

    if os.environ.get("VQTEST_BROKER_KIND", "redis") == "sqlite":
        url = os.environ["VQTEST_BROKER"]
    else:
        url = request.getfixturevalue("redis_url")
        os.environ["VQTEST_BROKER"] = url
        get_app().set_broker(url)
    return url


@pytest.fixture
def queue() -> str:
    """A queue of its own for each test."""
    return "q" + uuid.uuid4().hex[:10]


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        w.stop_all()
