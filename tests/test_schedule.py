"""vaultq/schedule.py: tick arithmetic, the DST rules and schedule validation (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

import vaultq
from vaultq.schedule import Schedule, scheduler_principal, tick_job_id


class Empty(msgspec.Struct, frozen=True):
    n: int = 0


class Needs(msgspec.Struct, frozen=True):
    n: int


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


@pytest.fixture
def app() -> vaultq.App:
    app = vaultq.App("sched", broker="sqlite:///unused.db", keyring=vaultq.Keyring.generate())

    @app.task(name="job")
    def job(p: Empty) -> None: ...

    @app.task(name="needs")
    def needs(p: Needs) -> None: ...

    return app


def test_every_ticks_at_multiples_of_the_interval_from_the_epoch(app: vaultq.App) -> None:
    s = app.schedule(app.tasks["job"], every=timedelta(minutes=5))
    t0 = utc(2026, 12, 1, 10, 2)
    assert [iso(t) for t in s.ticks(t0, t0 + 900)] == [
        "2026-12-01 10:05",
        "2026-12-01 10:10",
        "2026-12-01 10:15",
    ]
    assert s.ticks(utc(2026, 12, 1, 10, 5), utc(2026, 12, 1, 10, 5)) == []
    assert s.last_at_or_before(utc(2026, 12, 1, 10, 5)) == utc(2026, 12, 1, 10, 5)
    assert s.next_after(utc(2026, 12, 1, 10, 5)) == utc(2026, 12, 1, 10, 10)


def cron_ticks(app: vaultq.App, expr: str, tz: str, day: tuple[int, int, int]) -> list[str]:
    s = app.schedule(app.tasks["job"], cron=expr, tz=tz, name=f"c{len(app.schedules)}")
    start = utc(*day, 0, 0) - 86400
    return [
        datetime.fromtimestamp(t, s.tz).strftime("%m-%d %H:%M %Z")
        for t in s.ticks(start, start + 3 * 86400)
    ]


def test_spring_forward_0230_runs_once_when_the_clocks_jump(app: vaultq.App) -> None:
    # 2026-03-29 in Paris: 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    assert cron_ticks(app, "30 2 * * *", "Europe/Paris", (2026, 3, 29)) == [
        "03-28 02:30 CET",
        "03-29 03:00 CEST",
        "03-30 02:30 CEST",
    ]


def test_times_inside_the_gap_collapse_into_one_tick(app: vaultq.App) -> None:
    s = app.schedule(app.tasks["job"], cron="*/15 2 * * *", tz="Europe/Paris")
    ticks = s.ticks(utc(2026, 3, 28, 23), utc(2026, 3, 29, 3))
    assert [iso(t) for t in ticks] == ["2026-03-29 01:00"]  # 03:00 CEST, once


def test_fall_back_0130_runs_once_at_its_first_occurrence(app: vaultq.App) -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice (EDT, then EST).
    assert cron_ticks(app, "30 1 * * *", "America/New_York", (2026, 11, 1)) == [
        "10-31 01:30 EDT",
        "11-01 01:30 EDT",
        "11-02 01:30 EST",
    ]
    s = app.schedule(app.tasks["job"], cron="30 1 * * *", tz="America/New_York", name="ny")
    first = utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert s.ticks(first - 1, first + 7200) == [first]  # not again at 01:30 EST
    assert s.next_after(first) == utc(2026, 11, 2, 6, 30)
    assert s.last_at_or_before(first + 3600) == first


def test_an_hourly_cron_runs_once_for_the_repeated_hour(app: vaultq.App) -> None:
    ticks = cron_ticks(app, "0 * * * *", "Europe/Paris", (2026, 10, 25))
    day = [t for t in ticks if t.startswith("10-25")]
    assert day[:4] == [
        "10-25 00:00 CEST",
        "10-25 01:00 CEST",
        "10-25 02:00 CEST",
        "10-25 03:00 CET",
    ]
    assert len(day) == 24


def test_cron_in_utc_by_default_and_with_seconds(app: vaultq.App) -> None:
    s = app.schedule(app.tasks["job"], cron="0 9 * * 1")  # Mondays 09:00 UTC
    assert iso(s.next_after(utc(2026, 12, 1))) == "2026-12-07 09:00"  # type: ignore[arg-type]
    s6 = app.schedule(app.tasks["job"], cron="* * * * * */20", name="sec")  # croniter: seconds
    t0 = utc(2026, 12, 1)
    assert [t - t0 for t in s6.ticks(t0, t0 + 60)] == [20, 40, 60]


def test_tick_ids_name_the_schedule_and_the_utc_time() -> None:
    assert tick_job_id("cleanup", utc(2026, 12, 1, 10, 15)) == "tick:cleanup:20261201T101500Z"


def test_the_default_principal_is_the_scheduler(app: vaultq.App) -> None:
    s = app.schedule(app.tasks["job"], every=60, permissions={"reports.run"})
    assert s.principal == scheduler_principal("job", {"reports.run"})
    assert s.principal.id == "vaultq:scheduler:job"
    assert s.principal.roles == {"vaultq:scheduler"}
    assert s.principal.permissions == {"reports.run"}
    given = vaultq.Principal("svc:reports")
    assert app.schedule(app.tasks["job"], every=60, name="b", principal=given).principal is given


def test_periodic_decorates_a_task_and_returns_it(app: vaultq.App) -> None:
    @app.periodic(every=timedelta(hours=1), name="hourly")
    @app.task(name="report")
    def report(p: Empty) -> None: ...

    assert isinstance(report, vaultq.Task)
    assert app.schedules["hourly"].task is report
    assert app.schedules["hourly"].payload == Empty()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of"),
        ({"cron": "* * * * *", "every": 60}, "exactly one of"),
        ({"cron": "61 * * * *"}, "not a valid cron"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 0.5}, "whole number of seconds"),
        ({"every": 60, "tz": "Europe/Paris"}, "cron= only"),
        ({"every": 60, "name": "bad name"}, "not valid"),
        ({"every": 60, "missed": "all"}, "'skip' or 'run_once'"),
        ({"every": 60, "grace": 10 * 86400}, "at most the task's expires"),
    ],
)
def test_bad_schedules_are_refused_with_what_to_do(
    app: vaultq.App, options: dict[str, object], message: str
) -> None:
    with pytest.raises(vaultq.ConfigurationError, match=message):
        app.schedule(app.tasks["job"], **options)  # type: ignore[arg-type]


def test_payload_is_required_and_checked_when_the_type_needs_fields(app: vaultq.App) -> None:
    with pytest.raises(vaultq.ConfigurationError, match="needs payload="):
        app.schedule(app.tasks["needs"], every=60)
    with pytest.raises(vaultq.PayloadError):
        app.schedule(app.tasks["needs"], every=60, payload=Empty())
    assert app.schedule(app.tasks["needs"], every=60, payload=Needs(1)).payload == Needs(1)


def test_a_schedule_name_is_taken_once(app: vaultq.App) -> None:
    app.schedule(app.tasks["job"], every=60)
    with pytest.raises(vaultq.ConfigurationError, match="already taken"):
        app.schedule(app.tasks["job"], every=120)
    other = vaultq.App("other", broker="sqlite:///unused.db")
    with pytest.raises(vaultq.ConfigurationError, match="registered on this app"):
        other.schedule(app.tasks["job"], every=60)


def test_a_name_too_long_for_a_job_id_must_be_given(app: vaultq.App) -> None:
    @app.task(name="x" * 70)
    def long(p: Empty) -> None: ...

    with pytest.raises(vaultq.ConfigurationError, match="give name="):
        app.schedule(long, every=60)
    assert isinstance(app.schedule(long, every=60, name="long"), Schedule)
