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
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "SCHED_APP": unique_name,
            "SCHED_LOG": str(runs),
        }
    )
    stall = tmp_path / "stall"
    workers = [start_worker_process("sched_app", env, "--concurrency", "4") for _ in range(3)]
    schedulers = [
        start_scheduler({**env, "SCHED_STALL": str(stall)}, tmp_path / "scheduler-0.log"),
        start_scheduler(env, tmp_path / "scheduler-1.log"),
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
    lines = runs.read_text().split()
    ids = lines[0::2]
    counts = Counter(ids)
    assert counts and all(n == 1 for n in counts.values()), counts.most_common(3)
    # Every second of the run fired (a margin at each end for start-up and the stop).
    expected = {
        f"tick:beat:{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%SZ}"
        for t in range(int(started) + 1, int(stopped) - 1)
    }
    missing = expected - set(ids)
    assert not missing, sorted(missing)
    # The tick the frozen scheduler was killed in ran once, enqueued by another process.
    assert counts[killed_in] == 1, (killed_in, sorted(counts))
    pids = set(lines[1::2])
    took = stopped - started
    print(f"\n{broker_kind}: {len(ids)} ticks in {took:.1f} s, run by {len(pids)} workers")
