"""``manage.py vaultq_worker``'s options are generated from ``WorkerSettings``, both ways,
and merge with ``settings.VAULTQ`` (the flag wins, then the setting, then the default)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

import vaultq.cli_worker
from vaultq.django.management.commands.vaultq_worker import Command
from vaultq.settings import WorkerSettings, options_of


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def test_every_worker_setting_is_an_option_and_every_option_a_setting() -> None:
    ours = _actions(Command().create_parser("manage.py", "vaultq_worker"))
    djangos = _actions(BaseCommand().create_parser("manage.py", "any"))
    fields = {o.name: o for o in options_of(WorkerSettings) if o.name != "app"}
    assert set(ours) - set(djangos) == set(fields)
    for name, option in fields.items():
        assert ours[name].option_strings == [option.flag]
        assert ours[name].help == option.help
        assert ours[name].default is None, "not given: settings.VAULTQ fills it in"


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[WorkerSettings]:
    """What the command hands to the worker, instead of running one."""
    seen: list[WorkerSettings] = []

    def fake_run_worker(settings: WorkerSettings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(vaultq.cli_worker, "run_worker", fake_run_worker)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    return seen


def test_settings_vaultq_fills_what_the_flags_leave_out(ran: list[Any]) -> None:
    call_command("vaultq_worker", "--queues", "a,b", "--stall-warning", "0.5")
    (settings,) = ran
    assert settings.app == "vaultq.django"
    assert settings.queues == ("a", "b")
    assert settings.stall_warning == 0.5
    # CONCURRENCY and GRACE of tests/django/vq_settings.py
    assert (settings.concurrency, settings.grace) == (8, 5)


def test_a_flag_wins_over_settings_vaultq(ran: list[Any]) -> None:
    call_command("vaultq_worker", "--concurrency", "3", "--grace", "0", "--processes", "2")
    (settings,) = ran
    assert (settings.concurrency, settings.grace, settings.processes) == (3, 0.0, 2)
    assert settings.queues, "the project's queues when --queues is not given"


def test_a_bad_value_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="at least 1"):
        call_command("vaultq_worker", "--concurrency", "0")


def test_settings_vaultq_turns_on_metrics_and_events(
    ran: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import msgspec

    from vaultq.django.apps import get_config

    app = get_config().app
    configured = msgspec.structs.replace(
        app.vaultq_settings, metrics_port=9108, metrics_address="0.0.0.0", events=True
    )
    monkeypatch.setattr(app, "vaultq_settings", configured)
    call_command("vaultq_worker")
    (settings,) = ran
    assert (settings.metrics_port, settings.metrics_address, settings.events) == (
        9108,
        "0.0.0.0",
        True,
    )
    call_command("vaultq_worker", "--metrics-port", "9200")
    assert ran[1].metrics_port == 9200, "the flag wins over settings.VAULTQ"


# -- settings.VAULTQ and AppSettings ------------------------------------------------------


def test_every_app_setting_is_a_vaultq_key_and_back() -> None:
    from vaultq.django.conf import APP_KEYS, VaultqSettings
    from vaultq.settings import AppSettings

    as_fields = {"queue" if k == "default_queue" else k for k in APP_KEYS} | {"broker"}
    assert as_fields == {o.name for o in options_of(AppSettings)}
    assert set(APP_KEYS) <= set(VaultqSettings.__struct_fields__)


def test_keys_left_out_take_the_app_defaults_and_given_ones_reach_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.test import override_settings

    from vaultq.django.apps import build_app
    from vaultq.settings import AppSettings

    base = {"APP_NAME": "sets", "BROKER_URL": os.environ["VQTEST_BROKER"]}
    with override_settings(VAULTQ=base):
        app = build_app()
    assert app.settings == AppSettings(broker=os.environ["VQTEST_BROKER"])
    given = {**base, "TIMEOUT": 60, "BACKOFF": 0.5, "DEFAULT_QUEUE": "work", "ENQUEUE_RETRY": 0}
    with override_settings(VAULTQ=given):
        app = build_app()
    assert (app.task_defaults.timeout, app.task_defaults.backoff) == (60, 0.5)
    assert (app.default_queue, app.enqueue_retry) == ("work", 0)
    # BROKER_URL left out: $VAULTQ_BROKER, read at this edge.
    monkeypatch.setenv("VAULTQ_BROKER", "sqlite:///from-env.db")
    with override_settings(VAULTQ={"APP_NAME": "sets"}):
        assert build_app().settings.broker == "sqlite:///from-env.db"


def test_a_value_that_breaks_a_rule_is_improperly_configured() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from vaultq.django.apps import build_app

    bad = {"APP_NAME": "sets", "BROKER_URL": os.environ["VQTEST_BROKER"], "TIMEOUT": 0}
    with override_settings(VAULTQ=bad), pytest.raises(ImproperlyConfigured, match="timeout"):
        build_app()


def test_every_app_key_is_documented_in_django_md() -> None:
    from pathlib import Path

    from vaultq.django.conf import APP_KEYS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "django.md").read_text()
    table = doc[doc.index("| key | default | meaning |") :]
    table = table[: table.index("\n\n")]
    for key in (
        *APP_KEYS,
        "broker_url",
        "concurrency",
        "grace",
        "queues",
        "metrics_port",
        "events",
    ):
        assert f"`{key.upper()}`" in table, key
