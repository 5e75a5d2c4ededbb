"""Periodic jobs across real processes: three workers (which schedule too: they hold the
signing key) and two `vaultq scheduler` processes run an every=1s schedule; one scheduler
and one worker are killed with SIGKILL midway. Every tick runs exactly once, on Redis and
on SQLite."""

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
    workers = [start_worker_process("sched_app", env, "--concurrency", "4") for _ in range(3)]
    schedulers = [start_scheduler(env, tmp_path / f"scheduler-{i}.log") for i in range(2)]
    procs = [*workers, *schedulers]
    try:
        wait_until_serving(workers)
        started = time.time()
        time.sleep(RUN / 2)
        # SIGKILL one scheduler and one (scheduling) worker, whatever they were doing.
        schedulers[0].send_signal(signal.SIGKILL)
        workers[0].send_signal(signal.SIGKILL)
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
    pids = set(lines[1::2])
    took = stopped - started
    print(f"\n{broker_kind}: {len(ids)} ticks in {took:.1f} s, run by {len(pids)} workers")
