"""Concurrency and rate limits (vaultq/limits.py): the rate syntax, in-process workers on
every broker, and three real worker processes sharing the limits through Redis / SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import msgspec
import pytest
from helpers import (
    broker_url,
    make_app,
    running_worker,
    wait_until_serving,
    worker_env,
    worker_processes,
)

import vaultq
from vaultq.limits import parse_rate

pytestmark = pytest.mark.anyio


class Work(msgspec.Struct, frozen=True):
    n: int
    seconds: float = 0.0
    user: str = ""


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), "sqlite", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "memory":
        return f"memory://{unique_name}"
    return broker_url("sqlite", tmp_path, None)


@pytest.mark.parametrize(
    ("text", "interval"),
    [("20/s", 0.05), ("100/m", 0.6), ("1/h", 3600.0), ("5/10s", 2.0), (" 2 / d ", 43200.0)],
)
def test_rates_are_written_per_unit(text: str, interval: float) -> None:
    assert parse_rate(text) == pytest.approx(interval)


@pytest.mark.parametrize("text", ["20", "0/s", "x/s", "5/w", "-1/s", ""])
def test_bad_rates_say_how_to_write_one(text: str) -> None:
    with pytest.raises(vaultq.ConfigurationError, match="N/s"):
        parse_rate(text)


def test_bad_limits_are_refused_at_definition(tmp_path: Path, unique_name: str) -> None:
    app = make_app(unique_name, broker_url("sqlite", tmp_path, None))
    with pytest.raises(vaultq.TaskDefinitionError, match="max_concurrency"):
        app.task(name="a", max_concurrency=0)(_noop)
    with pytest.raises(vaultq.TaskDefinitionError, match="N/s"):
        app.task(name="b", rate_limit="fast")(_noop)
    with pytest.raises(vaultq.TaskDefinitionError, match="limit_key"):
        app.task(name="c", limit_key="user")(_noop)  # type: ignore[call-overload]


def _noop(p: Work) -> None: ...


async def test_max_concurrency_per_limit_key_in_one_worker(url: str, unique_name: str) -> None:
    # One worker with room for 8: per user at most one export at a time, while another
    # user's export and an unlimited task run beside them.
    app = make_app(unique_name, url)
    running: dict[str, int] = {}
    peak: dict[str, int] = {}

    @app.task(name="export", max_concurrency=1, limit_key=lambda p: p.user)
    async def export(p: Work) -> None:
        running[p.user] = running.get(p.user, 0) + 1
        peak[p.user] = max(peak.get(p.user, 0), running[p.user])
        await anyio.sleep(p.seconds)
        running[p.user] -= 1

    handles = [await export.enqueue(Work(n, 0.2, "ann" if n % 2 else "bob")) for n in range(6)]
    started = time.monotonic()
    with anyio.fail_after(30):
        async with running_worker(app, concurrency=8):
            for h in handles:
                await h.result(timeout=30)
    took = time.monotonic() - started
    assert peak == {"ann": 1, "bob": 1}
    assert took >= 0.55  # three in a row per user, not six at once
    await app.aclose()


async def test_rate_limit_spaces_starts_and_fails_nothing(url: str, unique_name: str) -> None:
    app = make_app(unique_name, url)
    starts: list[float] = []

    @app.task(name="paced", rate_limit="10/s")
    async def paced(p: Work) -> int:
        starts.append(time.monotonic())
        return p.n

    handles = await paced.enqueue_many([Work(n) for n in range(8)])
    with anyio.fail_after(30):
        async with running_worker(app, concurrency=8):
            assert [await h.result(timeout=30) for h in handles] == list(range(8))
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # 10/s: one start per 0.1 s (the reserved turns; a little early is the clock estimate)
    assert starts[-1] - starts[0] >= 0.6, gaps
    await app.aclose()


# -- across worker processes -------------------------------------------------------------


def _events(log: Path, task: str) -> list[tuple[str, float]]:
    out = []
    for line in log.read_text().splitlines():
        name, event, at, _pid = line.split()
        if name == task:
            out.append((event, float(at)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis), "sqlite"])
def test_limits_hold_across_three_worker_processes(
    kind: str, tmp_path: Path, unique_name: str, request: pytest.FixtureRequest
) -> None:
    import limits_app

    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    log = tmp_path / "runs.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url(kind, tmp_path, redis_url),
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "LIMITS_APP": unique_name,
            "LIMITS_LOG": str(log),
        }
    )
    app = make_app(unique_name, env["VAULTQ_BROKER"], vaultq.Keyring.from_json(env["VAULTQ_KEYS"]))
    pair = app.task(name="pair", max_concurrency=2)(limits_app.pair.fn)
    paced = app.task(name="paced", rate_limit="20/s")(limits_app.paced.fn)
    free = app.task(name="free")(limits_app.free.fn)
    with worker_processes("limits_app", env, 3, "--concurrency", "8") as procs:
        wait_until_serving(procs)
        pairs = pair.enqueue_many_sync([limits_app.Work(n, 0.2) for n in range(20)])
        paceds = paced.enqueue_many_sync([limits_app.Work(n) for n in range(100)])
        enqueued = time.time()
        frees = free.enqueue_many_sync([limits_app.Work(n) for n in range(20)])
        assert [h.result_sync(timeout=60) for h in frees] == list(range(20))
        free_done = time.time() - enqueued
        assert [h.result_sync(timeout=60) for h in pairs] == list(range(20))
        assert [h.result_sync(timeout=60) for h in paceds] == list(range(100))
    app.close()
    # max_concurrency=2: never more than two running at once, across the three workers
    level = peak = 0
    for event, _ in sorted(_events(log, "pair"), key=lambda e: (e[1], e[0] == "start")):
        level += 1 if event == "start" else -1
        peak = max(peak, level)
    assert peak == 2
    # rate_limit="20/s": at most 20 starts in any one-second window (+1 at its edge)
    starts = sorted(at for _, at in _events(log, "paced"))
    window = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    print(
        f"\n{kind}: paced at {rate:.1f}/s (limit 20/s), busiest second {window}; "
        f"20 unlimited jobs done in {free_done:.2f} s"
    )
    assert window <= 21 and rate <= 20.5
    assert free_done < 5  # unrelated tasks are not queued behind the limited ones
