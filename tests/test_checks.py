"""`vaultq check`: findings for broker URLs of every Redis topology (no connection made)."""

from __future__ import annotations

import pytest

import vaultq
from vaultq.checks import check_app


def codes(url: str, deploy: bool = True) -> set[str]:
    app = vaultq.App("checks", broker=url, keyring=vaultq.Keyring.generate())
    return {f.code for f in check_app(app, deploy=deploy)}


@pytest.mark.parametrize(
    "url",
    [
        "redis://10.1.2.3:6379/0",
        "redis+cluster://127.0.0.1:7000,10.1.2.4:7001/0",
        "redis+sentinel://10.1.2.5:26379/mymaster",
    ],
)
def test_plaintext_off_host_is_an_error_for_every_topology(url: str) -> None:
    assert "VQ202" in codes(url)
    assert "VQ202" not in codes(url, deploy=False)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/0",
        "rediss://:pw@cache.example.com:6380/0",
        "rediss+sentinel://:pw@s1.example.com:26379,s2.example.com:26379/mymaster",
    ],
)
def test_loopback_or_tls_is_fine(url: str) -> None:
    assert "VQ202" not in codes(url)


def test_missing_password_is_a_warning() -> None:
    assert "VQ203" in codes("rediss://cache.example.com:6380/0")
    assert "VQ203" not in codes("rediss://:pw@cache.example.com:6380/0")


def test_the_memory_broker_is_flagged_and_refused_for_deployment() -> None:
    app = vaultq.App("checks", broker="memory://", keyring=vaultq.Keyring.generate())
    (dev,) = [f for f in check_app(app) if f.code == "VQ205"]
    (deploy,) = [f for f in check_app(app, deploy=True) if f.code == "VQ205"]
    assert (dev.level, deploy.level) == ("warning", "error")
    assert "lost when it exits" in deploy.message and "redis://" in deploy.message
    assert "VQ205" not in codes("sqlite:///x.db") | codes("rediss://:pw@h:6380/0")


def test_tasks_retrying_only_because_of_the_app_default_are_named() -> None:
    """VQ302: App(retries=3), the usual mistranslation of Celery's max_retries=3, retries
    every task that did not choose; the check names those tasks, not the ones that chose."""
    app = vaultq.App("checks", broker="memory://", keyring=vaultq.Keyring.generate(), retries=3)

    @app.task(name="send_email")
    def send_email() -> None: ...

    @app.task(name="fetch_rates", retries=5)
    def fetch_rates() -> None: ...

    @app.task(name="charge", retries=0)
    def charge() -> None: ...

    (found,) = [f for f in check_app(app) if f.code == "VQ302"]
    assert found.level == "warning"
    assert "send_email" in found.message and "App(retries=3)" in found.message
    assert "fetch_rates" not in found.message and "charge" not in found.message

    # With the App default at 0 (the default), nothing relies on a retry default.
    app.configure(retries=0)
    assert "VQ302" not in {f.code for f in check_app(app)}
    app.configure(retries=2)
    assert "VQ302" in {f.code for f in check_app(app)}
