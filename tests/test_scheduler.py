"""The scheduler loop against real brokers (Redis, SQLite and memory): every tick exactly once
with racing schedulers, restarts after downtime (skip / run_once), DST days driven by the
test's clock, schedules that change shape between deploys, and the task's policy."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq.runtime.scheduler import Scheduler, SchedulerMiddleware, scheduler_middleware

pytestmark = pytest.mark.anyio


class Tick(msgspec.Struct, frozen=True):
    note: str = ""


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC).timestamp()


def new_app(
    url: str,
    name: str,
    keyring: vaultq.Keyring,
    middleware: Sequence[vaultq.Middleware] = (),
    **schedule: object,
) -> vaultq.App:
    """An app with one task ``job`` and one schedule ``s`` of it (each racer has its own
    App, so its own broker connection, like another process)."""
    app = make_app(name, url, keyring, middleware=middleware)

    @app.task(name="job", policy=vaultq.require_role("vaultq:scheduler"))
    def job(p: Tick) -> None: ...

    app.schedule(job, name="s", **schedule)  # type: ignore[arg-type]
    return app


async def queued_ids(app: vaultq.App) -> list[str]:
    broker = await app.broker()
    return sorted(e.job_id for e in await broker.queued("default", limit=100_000))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_racing_schedulers_enqueue_each_tick_exactly_once(url: str, unique_name: str) -> None:
    # Six schedulers in three threads (each thread its own event loop, each scheduler its
    # own App and broker connection) run the same every=1s schedule on the real clock.
    keyring = vaultq.Keyring.generate()
    apps = [new_app(url, unique_name, keyring, every=1) for _ in range(6)]
    start = datetime.now(UTC).timestamp()
    errors: list[BaseException] = []

    def racer(pair: list[vaultq.App]) -> None:
        async def go() -> None:
            schedulers = [Scheduler(a, max_sleep=0.2) for a in pair]
            with anyio.move_on_after(4.5):
                async with anyio.create_task_group() as tg:
                    for s in schedulers:
                        tg.start_soon(s.run)
            for a in pair:
                await a.aclose()

        try:
            anyio.run(go)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(apps[i : i + 2],)) for i in (0, 2, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = await queued_ids(apps[0])
    counts = Counter(ids)
    assert all(n == 1 for n in counts.values()), counts
    # Every whole second between the first racer's start and the end fired (the first
    # start sets the mark; nothing of the past is replayed).
    expected = {
        f"tick:s:{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%SZ}"
        for t in range(int(start) + 2, int(start) + 4)
    }
    assert expected <= set(ids), (expected, ids)
    assert 3 <= len(ids) <= 6
    await apps[0].aclose()


@pytest.mark.parametrize("missed", ["skip", "run_once"])
async def test_restart_after_downtime_follows_the_missed_policy(
    url: str, unique_name: str, missed: str
) -> None:
    clock = Clock(utc(2026, 12, 1, 10, 0, 3))
    app = new_app(url, unique_name, vaultq.Keyring.generate(), every=10, grace=2, missed=missed)
    scheduler = Scheduler(app, clock=clock)
    assert await scheduler.run_pass() == []  # first start: the mark is set to now
    clock.t = utc(2026, 12, 1, 10, 0, 10, 500_000)
    assert await scheduler.run_pass() == ["tick:s:20261201T100010Z"]  # on time
    # down from 10:00:11 to 10:00:35.5: the ticks at :20 and :30 are missed (older than grace)
    restarted = Scheduler(app, clock=clock)
    clock.t = utc(2026, 12, 1, 10, 0, 35, 500_000)
    fired = await restarted.run_pass()
    assert fired == ([] if missed == "skip" else ["tick:s:20261201T100030Z"])
    assert await restarted.run_pass() == []  # a second pass changes nothing
    clock.t = utc(2026, 12, 1, 10, 0, 40, 100_000)
    assert await restarted.run_pass() == ["tick:s:20261201T100040Z"]
    assert await queued_ids(app) == sorted(
        ["tick:s:20261201T100010Z", *fired, "tick:s:20261201T100040Z"]
    )
    await app.aclose()


async def test_run_once_is_folded_into_an_on_time_tick(url: str, unique_name: str) -> None:
    clock = Clock(utc(2026, 12, 1, 10, 0, 0))
    app = new_app(url, unique_name, vaultq.Keyring.generate(), every=10, grace=5, missed="run_once")
    scheduler = Scheduler(app, clock=clock)
    await scheduler.run_pass()
    clock.t = utc(2026, 12, 1, 10, 1, 1)  # :10 ... :50 missed, 10:01:00 on time
    assert await scheduler.run_pass() == ["tick:s:20261201T100100Z"]
    await app.aclose()


async def drive(scheduler: Scheduler, clock: Clock, until: float, step: float) -> list[str]:
    fired: list[str] = []
    while clock.t < until:
        clock.t += step
        fired += await scheduler.run_pass()
    return fired


async def test_spring_forward_day_runs_a_0230_job_once(url: str, unique_name: str) -> None:
    # Europe/Paris, 2026-03-29: 02:00 CET -> 03:00 CEST. Two schedulers walk through the
    # three days in 5-minute steps, interleaved.
    keyring = vaultq.Keyring.generate()
    apps = [
        new_app(url, unique_name, keyring, cron="30 2 * * *", tz="Europe/Paris") for _ in range(2)
    ]
    clock = Clock(utc(2026, 3, 27, 22))
    a, b = (Scheduler(x, clock=clock) for x in apps)
    fired: list[str] = []
    while clock.t < utc(2026, 3, 30, 12):
        clock.t += 300
        fired += await a.run_pass() + await b.run_pass()
    assert fired == [
        "tick:s:20260328T013000Z",  # 02:30 CET
        "tick:s:20260329T010000Z",  # 03:00 CEST: the instant the clocks jumped
        "tick:s:20260330T003000Z",  # 02:30 CEST
    ]
    assert await queued_ids(apps[0]) == sorted(fired)
    for x in apps:
        await x.aclose()


async def test_fall_back_day_runs_a_0130_job_once(url: str, unique_name: str) -> None:
    # America/New_York, 2026-11-01: 01:00-02:00 happens twice; the job runs at the first.
    app = new_app(
        url, unique_name, vaultq.Keyring.generate(), cron="30 1 * * *", tz="America/New_York"
    )
    clock = Clock(utc(2026, 10, 31, 0))
    fired = await drive(Scheduler(app, clock=clock), clock, utc(2026, 11, 2, 12), 300)
    assert fired == [
        "tick:s:20261031T053000Z",  # 01:30 EDT
        "tick:s:20261101T053000Z",  # 01:30 EDT (not again at 01:30 EST, 06:30Z)
        "tick:s:20261102T063000Z",  # 01:30 EST
    ]
    await app.aclose()


async def test_a_schedule_that_changes_shape_does_not_fire_a_tick_twice(
    url: str, unique_name: str
) -> None:
    # Deploy 1 runs every 60 s; deploy 2 (same schedule name) every 30 s, then a cron of
    # every minute: the tick at 10:01:00 belongs to all three shapes and fires once, even
    # with old and new deploys running side by side (a rolling deploy).
    keyring = vaultq.Keyring.generate()
    old = new_app(url, unique_name, keyring, every=60)
    new = new_app(url, unique_name, keyring, every=30)
    cron = new_app(url, unique_name, keyring, cron="* * * * *")
    clock = Clock(utc(2026, 12, 1, 10, 0, 0))
    s_old, s_new, s_cron = (Scheduler(x, clock=clock) for x in (old, new, cron))
    await s_old.run_pass()
    clock.t = utc(2026, 12, 1, 10, 1, 0, 200_000)
    assert await s_old.run_pass() == ["tick:s:20261201T100100Z"]
    assert await s_new.run_pass() == []
    assert await s_cron.run_pass() == []
    clock.t = utc(2026, 12, 1, 10, 1, 30, 200_000)
    assert await s_new.run_pass() == ["tick:s:20261201T100130Z"]
    assert await s_old.run_pass() == []
    clock.t = utc(2026, 12, 1, 10, 2, 0, 200_000)
    fired = await s_cron.run_pass() + await s_new.run_pass() + await s_old.run_pass()
    assert fired == ["tick:s:20261201T100200Z"]
    assert Counter(await queued_ids(old)) == Counter(
        ["tick:s:20261201T100100Z", "tick:s:20261201T100130Z", "tick:s:20261201T100200Z"]
    )
    for x in (old, new, cron):
        await x.aclose()


async def test_periodic_jobs_run_on_a_worker_under_the_scheduler_principal(
    url: str, unique_name: str
) -> None:
    seen: list[tuple[str, str]] = []
    app = make_app(unique_name, url)

    @app.periodic(every=timedelta(seconds=1), name="beat")
    @app.task(name="beat", policy=vaultq.require_role("vaultq:scheduler"))
    def beat(p: Tick) -> None:
        job = vaultq.current_job()
        seen.append((job.job_id, job.principal.id if job.principal else ""))

    # The worker runs the app's schedules itself (it holds the signing key).
    with anyio.fail_after(20):
        async with running_worker(app):
            while len(seen) < 2:
                await anyio.sleep(0.1)
    assert all(jid.startswith("tick:beat:") for jid, _ in seen)
    assert {pid for _, pid in seen} == {"vaultq:scheduler:beat"}
    await app.aclose()


async def test_a_tick_the_policy_denies_is_not_enqueued(url: str, unique_name: str) -> None:
    app = make_app(unique_name, url)

    @app.task(name="guarded", policy=vaultq.require_permission("reports.run"))
    def guarded(p: Tick) -> None: ...

    app.schedule(guarded, every=10, name="denied")
    app.schedule(guarded, every=10, name="allowed", permissions={"reports.run"})
    clock = Clock(utc(2026, 12, 1, 10, 0, 5))
    scheduler = Scheduler(app, clock=clock)
    await scheduler.run_pass()
    clock.t += 10
    assert await scheduler.run_pass() == ["tick:allowed:20261201T100010Z"]
    assert await queued_ids(app) == ["tick:allowed:20261201T100010Z"]
    await app.aclose()


def test_verify_only_workers_do_not_schedule(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = vaultq.Keyring.generate(signing="ed25519")
    app = make_app(unique_name, f"sqlite:///{tmp_path}/vaultq.db", keyring.public())
    app.schedule(app.task(name="t")(_noop), every=60)
    caplog.set_level(logging.INFO, logger="vaultq.scheduler")
    assert scheduler_middleware(app, "w1") == []
    assert "vaultq scheduler MODULE" in caplog.text
    signing = make_app(unique_name, f"sqlite:///{tmp_path}/vaultq.db", keyring)
    assert scheduler_middleware(signing) == []  # no schedules
    signing.schedule(signing.task(name="t")(_noop), every=60)
    (m,) = scheduler_middleware(signing)
    assert isinstance(m, SchedulerMiddleware)


def _noop(p: Tick) -> None: ...


# -- ticks go through the enqueue hooks, like task.enqueue ------------------------------

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Heard(vaultq.Middleware):
    """Records the enqueue hooks and adds a trace context; notes each attempt's trace."""

    def __init__(self) -> None:
        self.enqueues: list[tuple[str, vaultq.EnqueueInfo, str | None]] = []
        self.traces: dict[str, dict[str, str]] = {}

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        self.enqueues.append(("before", job, None))
        trace["traceparent"] = TRACEPARENT

    def after_enqueue(self, job: vaultq.EnqueueInfo, error: str | None) -> None:
        self.enqueues.append(("after", job, error))

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        self.traces[job.job_id] = dict(job.trace)

    def heard(self, job_id: str) -> list[tuple[str, str | None]]:
        return [(hook, error) for hook, info, error in self.enqueues if info.job_id == job_id]


async def test_a_worker_s_ticks_run_the_enqueue_hooks_and_carry_their_trace(
    url: str, unique_name: str
) -> None:
    # The schedule runs inside the worker (SchedulerMiddleware), on the real clock.
    heard = Heard()
    app = make_app(unique_name, url, middleware=[heard])
    ran: list[str] = []

    @app.periodic(every=timedelta(seconds=1), name="beat")
    @app.task(name="beat", policy=vaultq.require_role("vaultq:scheduler"))
    def beat(p: Tick) -> None:
        ran.append(vaultq.current_job().job_id)

    with anyio.fail_after(20):
        async with running_worker(app):
            while len(ran) < 2:
                await anyio.sleep(0.1)
    for job_id in ran:
        assert heard.heard(job_id) == [("before", None), ("after", None)]
        # before_enqueue's trace context was sealed into the tick's job and read back.
        assert heard.traces[job_id] == {"traceparent": TRACEPARENT}
    info = next(i for hook, i, _ in heard.enqueues if i.job_id == ran[0])
    assert (info.task, info.queue, info.app) == ("beat", "default", unique_name)
    assert info.principal_id == "vaultq:scheduler:beat"
    assert info.not_before <= info.enqueued_at
    await app.aclose()


async def test_a_tick_claimed_elsewhere_is_a_duplicate_for_the_hooks(
    url: str, unique_name: str
) -> None:
    keyring = vaultq.Keyring.generate()
    heard = [Heard() for _ in range(3)]
    apps = [new_app(url, unique_name, keyring, [h], every=10) for h in heard]
    clock = Clock(utc(2026, 12, 1, 10, 0, 3))
    schedulers = [Scheduler(a, clock=clock) for a in apps]
    await schedulers[0].run_pass()  # the first start sets the mark
    clock.t = utc(2026, 12, 1, 10, 0, 10, 200_000)
    tick = "tick:s:20261201T100010Z"
    async with anyio.create_task_group() as tg:  # racing for the tick on one loop
        for s in schedulers:
            tg.start_soon(s.run_pass)
    heard_all = [pair for h in heard for pair in h.heard(tick)]
    # Each racer that sealed the tick heard after_enqueue: one wrote it, the others lost.
    assert heard_all.count(("after", None)) == 1
    assert heard_all.count(("before", None)) == len([p for p in heard_all if p[0] == "after"])
    assert {e for hook, e in heard_all if hook == "after"} <= {None, "DuplicateJob"}
    assert await queued_ids(apps[0]) == [tick]
    # The claim's second line of defence (the id exists already) is a duplicate too.
    later = "tick:s:20261201T100020Z"
    await (
        apps[1]
        .tasks["job"]
        .enqueue(Tick(), job_id=later, principal=vaultq.schedule.scheduler_principal("s"))
    )
    clock.t += 10
    assert await schedulers[2].run_pass() == []
    assert heard[2].heard(later) == [("before", None), ("after", "DuplicateJob")]
    for a in apps:
        await a.aclose()
