"""Periodic jobs across real processes: three workers (which schedule too: they hold the
signing key) and two `vaultq scheduler` processes run an every=1s schedule. Midway, one
scheduler is frozen inside a tick (its policy passed, the job not yet sealed nor claimed)
and killed there with SIGKILL, and one worker is killed with SIGKILL whatever it is doing.
Every tick runs exactly once (that tick too), on Redis and on SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq

RUN = 10.0


def start_scheduler(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vaultq", "scheduler", "sched_app"],
        env=env,
        cwd=str(ROOT),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
@pytest.mark.other_processes
def test_three_workers_two_schedulers_each_tick_once_through_kill_9(
    broker_kind: str, broker_url: str, tmp_path: Path, unique_name: str
) -> None:
    runs = tmp_path / "runs.log"
    enq = tmp_path / "enqueued.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "SCHED_APP": unique_name,
            "SCHED_LOG": str(runs),
            "SCHED_ENQ_LOG": str(enq),
        }
    )
    stall = tmp_path / "stall"
    # The others hold a tick's claim until scheduler 0 froze in it (tests/sched_app.py):
    # else on a loaded machine scheduler 0 may read each tick's mark after another process
    # moved it, and never enter a tick at all.
    hold = {**env, "SCHED_HOLD": str(stall)}
    workers = [start_worker_process("sched_app", hold, "--concurrency", "4") for _ in range(3)]
    schedulers = [
        start_scheduler({**env, "SCHED_STALL": str(stall)}, tmp_path / "scheduler-0.log"),
        start_scheduler(hold, tmp_path / "scheduler-1.log"),
    ]
    procs = [*workers, *schedulers]
    try:
        wait_until_serving(workers)
        started = time.time()
        time.sleep(RUN / 2)
        # Scheduler 0 freezes inside its next tick; SIGKILL it there, and one (scheduling)
        # worker whatever it was doing.
        stall.touch()
        frozen = Path(f"{stall}.tick")
        deadline = time.monotonic() + 30
        while not frozen.exists() or not frozen.read_text():
            assert time.monotonic() < deadline, "scheduler 0 never reached a tick"
            assert schedulers[0].poll() is None
            time.sleep(0.02)
        schedulers[0].send_signal(signal.SIGKILL)
        workers[0].send_signal(signal.SIGKILL)
        killed_in = frozen.read_text()
        time.sleep(RUN / 2)
        stopped = time.time()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Each tick was written once (one job per tick, whoever claimed it) ...
    written = _enqueued(enq)
    assert written and all(len(at) == 1 for at in written.values()), sorted(written.items())[:3]
    lines = runs.read_text().split()
    ids = lines[0::2]
    counts = Counter(ids)
    # ... and ran once, except a job whose run was cut short by the worker killed with
    # SIGKILL: delivery is at least once, so its lease ran out and another worker ran the
    # same job (same tick id) again. Any other second run is a double-fire.
    killed_pid = str(workers[0].pid)
    runs_of: dict[str, list[str]] = {}
    for job_id, pid in zip(ids, lines[1::2], strict=True):
        runs_of.setdefault(job_id, []).append(pid)
    again = {job_id: pids for job_id, pids in runs_of.items() if len(pids) > 1}
    assert all(set(pids[:-1]) == {killed_pid} for pids in again.values()), (killed_pid, again)
    # Every second of the run fired (a margin at each end for start-up and the stop).
    expected = {
        f"tick:beat:{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%SZ}"
        for t in range(int(started) + 1, int(stopped) - 1)
    }
    missing = expected - set(ids)
    assert not missing, sorted(missing)
    # The tick the frozen scheduler was killed in ran, enqueued by another process.
    assert killed_in in runs_of, (killed_in, sorted(counts))
    pids = set(lines[1::2])
    took = stopped - started
    print(f"\n{broker_kind}: {len(ids)} ticks in {took:.1f} s, run by {len(pids)} workers")


def _tick(name: str, t: float) -> str:
    return f"tick:{name}:{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%SZ}"


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _enqueued(path: Path) -> dict[str, list[float]]:
    """Tick job id -> the sealed issue times of every write of it (one, if exactly once)."""
    out: dict[str, list[float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            job_id, at = line.split()
            out.setdefault(job_id, []).append(float(at))
    return out


EVERY = 10  # the restart test's schedules: every=10s, grace=1s (tests/sched_app.py)


def _first_tick_of_both(path: Path) -> float | None:
    """The first tick both schedules wrote a job for, or None yet."""
    written = _enqueued(path)
    skips = [_tick_time(job_id) for job_id in written if job_id.startswith("tick:skip:")]
    both = [t for t in skips if _tick("catchup", t) in written]
    return min(both) if both else None


def _tick_time(job_id: str) -> float:
    stamp = job_id.rsplit(":", 1)[1]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


@pytest.mark.slow
@pytest.mark.other_processes
def test_a_worker_restarted_across_ticks_follows_each_missed_policy(
    broker_kind: str, broker_url: str, tmp_path: Path, unique_name: str
) -> None:
    # Two schedules, every=10s with grace=1s: "skip" and "catchup" (run_once). Worker A
    # fires tick T and is killed with SIGKILL; nothing runs through T+10 and T+20; worker B
    # starts at T+21.1 (its first pass comes before T+30, so no tick is on time then).
    enq = tmp_path / "enqueued.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "SCHED_APP": unique_name,
            "SCHED_LOG": str(tmp_path / "runs.log"),
            "SCHED_ENQ_LOG": str(enq),
            "SCHED_RESTART": "1",
        }
    )
    a = start_worker_process("sched_app", env)
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_until_serving([a])
        deadline = time.monotonic() + 60
        while (t0 := _first_tick_of_both(enq)) is None:
            assert time.monotonic() < deadline and a.poll() is None, _enqueued(enq)
            time.sleep(0.05)
        a.send_signal(signal.SIGKILL)
        a.wait()
        assert time.time() < t0 + EVERY - 1, "worker A was killed too late for this timeline"
        _sleep_until(t0 + 2 * EVERY + 1.1)
        b = start_worker_process("sched_app", env)
        last = {_tick("skip", t0 + 3 * EVERY), _tick("catchup", t0 + 3 * EVERY)}
        deadline = time.monotonic() + 60
        while not last <= _enqueued(enq).keys():
            assert time.monotonic() < deadline and b.poll() is None, _enqueued(enq)
            time.sleep(0.05)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    written = _enqueued(enq)
    assert all(len(at) == 1 for at in written.values()), written  # each tick once
    first_pass = min(at[0] for at in written.values() if at[0] > t0 + 2 * EVERY)
    assert first_pass < t0 + 3 * EVERY - 1, (
        f"worker B's first pass came {first_pass - t0:.1f} s after T: too late for this test"
    )
    down = [t0 + EVERY, t0 + 2 * EVERY]
    # skip: the ticks missed while no worker ran never run
    assert [t for t in down if _tick("skip", t) in written] == []
    # run_once: they collapse into one run, the newest missed tick's, at B's first pass
    assert [t for t in down if _tick("catchup", t) in written] == [t0 + 2 * EVERY]
    assert written[_tick("catchup", t0 + 2 * EVERY)][0] == pytest.approx(first_pass, abs=1.0)
    print(
        f"\n{broker_kind}: down over T+{EVERY} and T+{2 * EVERY}; the catch-up of T+{2 * EVERY} "
        f"was sealed {first_pass - t0 - 2 * EVERY:.2f} s after it; T+{3 * EVERY} on time for both"
    )
