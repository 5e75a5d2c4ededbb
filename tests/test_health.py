"""`vaultq health`: the worker's heartbeat file, checked against a real worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
