"""``VAULTQ["SCHEDULE"]``: periodic jobs declared in Django settings are registered when the
app is ready, run by the scheduler like any schedule, and listed by ``vaultq status``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from vqhelpers import WORK, worker_env

from vaultq.django import get_app
from vaultq.django.conf import ScheduleSetting
from vaultq.django.schedules import register_settings_schedules
from vaultq.runtime.scheduler import Scheduler


def test_settings_schedule_is_registered_with_a_typed_payload() -> None:
    from vqtestapp.jobs import Beat, beat

    app = get_app()
    s = app.schedules["new-year"]
    assert s.task is beat
    assert s.payload == Beat(kind="full")
    assert (s.cron, str(s.tz), s.missed) == ("0 0 1 1 *", "Europe/Paris", "run_once")
    assert s.principal.id == "vaultq:scheduler:new-year"


def test_a_settings_tick_is_enqueued_once() -> None:
    app = get_app()
    new_year = datetime(2031, 1, 1, tzinfo=UTC).timestamp() - 3600  # 00:00 in Paris
    clock = [new_year - 10]
    scheduler = Scheduler(app, schedules=[app.schedules["new-year"]], clock=lambda: clock[0])

    async def passes() -> list[str]:
        # The first pass may run the missed ticks once (missed="run_once") when workers
        # of other tests started the schedule in the real present.
        await scheduler.run_pass()
        clock[0] = new_year + 1
        fired = await scheduler.run_pass()
        fired += await Scheduler(app, clock=lambda: clock[0]).run_pass()
        return fired

    assert app._run_sync(passes) == ["tick:new-year:20301231T230000Z"]
    status = subprocess.run(
        [sys.executable, "-m", "vaultq", "status", "vaultq.django", "--json"],
        env=worker_env(),
        cwd=str(WORK),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)["schedules"]
    assert row["name"] == "new-year"
    assert row["last"] == "2030-12-31T23:00:00Z"
    assert row["next"] == "2031-12-31T23:00:00Z"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ScheduleSetting(task="nope", every=60), "no task named 'nope'"),
        (ScheduleSetting(task="vqtestapp.beat", every=60, payload={"kind": 1}), "payload"),
        (ScheduleSetting(task="vqtestapp.beat", cron="bad"), "not a valid cron"),
        (ScheduleSetting(task="vqtestapp.beat", every=60, missed="all"), "missed"),
    ],
)
def test_bad_settings_entries_name_the_entry(entry: ScheduleSetting, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        register_settings_schedules(get_app(), {"bad": entry})
