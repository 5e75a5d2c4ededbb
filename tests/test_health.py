"""`vaultq health`: the worker's heartbeat file, checked against a real worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.errors import VaultqError
from vaultq.runtime.health import (
    Heartbeat,
    check_health,
    default_health_file,
    prepare,
    write_beat,
)


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", "health", *args],
        env=worker_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def beat_at(path: Path) -> float:
    return msgspec.json.decode(path.read_bytes(), type=Heartbeat).at


@pytest.mark.slow
def test_health_follows_a_real_worker_through_stop_cont_and_kill(tmp_path: Path) -> None:
    beat = tmp_path / "worker.health"
    env = worker_env(
        {
            "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
        }
    )
    proc = start_worker_process(
        "cli_apps", env, "--health-file", str(beat), "--health-interval", "0.2"
    )
    try:
        wait_until_serving([proc])
        wait_for(beat.exists, "the first heartbeat")
        ok = health("--health-file", str(beat), "--max-age", "30")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith("healthy: worker ")
        assert f"(pid {proc.pid})" in ok.stdout
        assert ok.stdout.count("\n") == 1
        first = beat_at(beat)
        wait_for(lambda: beat_at(beat) > first, "a second heartbeat (the loop keeps beating)")

        # Frozen: the loop cannot beat, the file goes stale, health says so in one line.
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: not check_health(beat, 2.0)[0], "the heartbeat to go stale")
        stale = health("--health-file", str(beat), "--max-age", "2")
        assert stale.returncode == 1
        assert stale.stdout.startswith("unhealthy: last heartbeat ")
        assert "stuck or the worker is frozen" in stale.stdout
        assert stale.stdout.count("\n") == 1

        # Thawed: beats resume.
        os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: check_health(beat, 2.0)[0], "beats to resume after SIGCONT")

        # Killed: the file is left behind, fresh, but its pid is gone: unhealthy at once,
        # whatever --max-age says.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert beat.exists()
        dead = health("--health-file", str(beat), "--max-age", "3600")
        assert dead.returncode == 1
        assert dead.stdout.startswith(f"unhealthy: worker pid {proc.pid} is gone")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_worker_stopped_cleanly_removes_its_heartbeat(tmp_path: Path) -> None:
    beat = tmp_path / "worker.health"
    env = worker_env(
        {
            "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "VAULTQ_HEALTH_FILE": str(beat),  # the environment variable works like the flag
        }
    )
    proc = start_worker_process("cli_apps", env, "--health-interval", "0.2")
    try:
        wait_until_serving([proc])
        wait_for(beat.exists, "the first heartbeat")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not beat.exists()
    gone = health("--health-file", str(beat))
    assert gone.returncode == 1
    assert gone.stdout.startswith(f"unhealthy: no heartbeat at {beat}: no worker is running")


def test_check_health_judges_age_pid_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "h"
    now = time.time()
    write_beat(path, Heartbeat(os.getpid(), os.uname().nodename, "w", now - 4, 1.0))
    assert check_health(path, None, now=now)[0]  # default max age: 3 x 1 s + 1
    assert not check_health(path, None, now=now + 0.5)[0]
    assert check_health(path, 10, now=now + 0.5)[0]
    path.write_bytes(b'{"pid": 1, "secret": "x"}')
    healthy, line = check_health(path)
    assert not healthy
    assert line == f"unhealthy: {path} is not a vaultq heartbeat file"


def test_default_location_is_private_and_refused_when_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = default_health_file()
    assert path == tmp_path / "vaultq" / "worker.health"
    prepare(path)
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    path.parent.chmod(0o777)
    with pytest.raises(VaultqError, match="writable by others"):
        prepare(path)
    with pytest.raises(VaultqError, match="does not exist"):
        prepare(tmp_path / "missing" / "h")


def test_worker_refuses_a_health_file_it_cannot_write_before_starting(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaultq", "worker", "cli_apps"]
        + ["--health-file", str(tmp_path / "nope" / "h")],
        env=worker_env(
            {
                "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
                "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            }
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "the health file's directory" in out.stderr
    assert "Traceback" not in out.stderr


# -- the broker-heartbeat verdict (`vaultq health APP`); real processes: test_health_broker.py


def beat(worker: str, *, host: str = "h1", pid: int = 10, at: float, started: float = 0.0) -> Any:
    from vaultq.brokers.monitor import WorkerBeat

    return WorkerBeat(
        worker=worker, host=host, pid=pid, app="a", queues=("default",), concurrency=1,
        in_flight=0, done=0, started_at=started, version="x", every=1.0, at=at,
    )  # fmt: skip


def test_gone_after_three_beat_periods_plus_one_second() -> None:
    from vaultq.monitor import judge_health

    one = [beat("w1", at=100.0)]
    # every=1.0: alive up to 3 x 1 + 1 = 4 s after the last beat (broker clock), no longer.
    assert judge_health(one, now=104.0, this_host="h1").healthy
    late = judge_health(one, now=104.01, this_host="h1")
    assert not late.healthy
    assert "stopped beating 4.0 s ago (max 4 s)" in late.line
    assert judge_health(one, now=104.01, this_host="h1", max_age=10).healthy
    assert not judge_health(one, now=101.5, this_host="h1", max_age=1).healthy


def test_a_silent_worker_counts_until_a_later_one_replaces_it() -> None:
    from vaultq.monitor import judge_health

    gone_pid = 2**22 + 12345  # above the default pid_max: no such process here
    dead = beat("old", pid=gone_pid, at=100.0, started=50.0)
    # Not replaced (nothing started after its last beat): unhealthy, whatever else beats.
    sibling = beat("sib", pid=11, at=199.0, started=60.0)
    verdict = judge_health([dead, sibling], now=200.0, this_host="h1")
    assert not verdict.healthy and f"pid {gone_pid} is gone" in verdict.line
    # Its process is gone and a worker started after its last beat: replaced.
    new = beat("new", pid=12, at=199.0, started=150.0)
    verdict = judge_health([dead, new], now=200.0, this_host="h1")
    assert verdict.healthy and "1 earlier one(s) replaced" in verdict.line
    # A clock offset (broker minus this host) moves the comparison: the new worker's
    # start, in host time, is before the old beat once converted.
    assert not judge_health([dead, new], now=200.0, offset=-60.0, this_host="h1").healthy
    # Still running (this process's pid): stuck, not replaced...
    stuck = beat("stuck", pid=os.getpid(), at=100.0, started=50.0)
    verdict = judge_health([stuck, new], now=200.0, this_host="h1")
    assert not verdict.healthy and "still exists: its event loop is blocked" in verdict.line
    # ...unless a live worker now has that pid (a restarted container's pid 1).
    reused = beat("again", pid=os.getpid(), at=199.0, started=150.0)
    assert judge_health([stuck, reused], now=200.0, this_host="h1").healthy
    # Another host's processes cannot be checked from here: a later worker replaces.
    assert judge_health([stuck, new], now=200.0, this_host="elsewhere", host="h1").healthy
    # --pid narrows the selection to one process.
    assert judge_health([dead, new], now=200.0, this_host="h1", pid=12).healthy
    assert not judge_health([dead, new], now=200.0, this_host="h1", pid=gone_pid).healthy


def test_worker_any_and_empty_selections() -> None:
    from vaultq.monitor import judge_health

    beats = [beat("w1", at=100.0), beat("w2", host="h2", pid=20, at=80.0)]
    assert judge_health(beats, now=101.0, worker="w1").healthy
    assert not judge_health(beats, now=101.0, worker="w2").healthy
    assert judge_health(beats, now=101.0, any_worker=True).healthy
    assert not judge_health(beats, now=150.0, any_worker=True).healthy
    nobody = judge_health(beats, now=101.0, worker="w\x1b[31m")
    assert not nobody.healthy and "\x1b" not in nobody.line  # broker data is escaped
    assert "no heartbeat from" in judge_health([], now=1.0, this_host="h1").line
    with pytest.raises(VaultqError, match="give no worker/host/pid"):
        judge_health(beats, now=1.0, any_worker=True, pid=3)
    with pytest.raises(VaultqError, match="give no host/pid"):
        judge_health(beats, now=1.0, worker="w1", host="h1")
