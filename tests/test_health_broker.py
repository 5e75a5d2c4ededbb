"""`vaultq health APP`: the broker heartbeats (the ones `vaultq status` and `vaultq
workers` show) judged for a probe, against real worker processes on Redis and SQLite:
killed (kill -9), stuck (a coroutine blocking the event loop), frozen (SIGSTOP), and
replaced by a new worker. Needs no optional extra."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from obs_app import Note, build
from support.brokers import url_for
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.monitor import WorkerHealth, worker_health

APP = "obs_app:app"  # named: bare `vaultq health` reads the heartbeat file (tests/test_health.py)
EVERY = "0.5"  # --health-interval: a beat every half second, "gone" after 3 x 0.5 + 1 s


class Site:
    """One app name on one broker, with the worker's environment and a producer app."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.url = url_for(kind, tmp_path, request)
        self.name = "h" + uuid.uuid4().hex[:10]
        self.keys = vaultq.Keyring.generate()
        self.env = worker_env(
            {
                "VAULTQ_BROKER": self.url,
                "VAULTQ_KEYS": self.keys.to_json(),
                "VAULTQ_APP": "obs_app:app",
                "OBS_APP": self.name,
            }
        )
        self.env.pop("OBS_SPANS", None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vaultq", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def health(self, **select: Any) -> WorkerHealth:
        """The same verdict `vaultq health` prints, read in this process (cheap to poll)."""

        async def go() -> WorkerHealth:
            app = build(self.name, broker=self.url, keyring=self.keys)
            try:
                return await worker_health(app, **select)
            finally:
                await app.aclose()

        return anyio.run(go)

    def enqueue(self, task: str, note: Note) -> None:
        async def go() -> None:
            app = build(self.name, broker=self.url, keyring=self.keys)
            try:
                found = app.get_task(task)
                assert found is not None
                await found.enqueue(note)
            finally:
                await app.aclose()

        anyio.run(go)

    def worker_names(self, pid: int) -> list[str]:
        doc = json.loads(self.cli("workers", "--json").stdout)
        return [w["worker"] for w in doc["workers"] if w["pid"] == pid]


@pytest.fixture
def site_of(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Site]:
    return lambda kind: Site(kind, tmp_path, request)


@contextlib.contextmanager
def worker(site: Site, *, clean: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process; stopped on the way out with SIGTERM (``clean``: its beat is
    removed) or SIGKILL."""
    proc = start_worker_process(APP, site.env, "--health-interval", EVERY)
    try:
        wait_until_serving([proc])
        yield proc
        if clean:
            proc.terminate()
            assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.stdout.count("\n") == 1, done.stdout + done.stderr
    return done.stdout.strip()


@pytest.mark.other_processes
@pytest.mark.broker_kinds("sqlite", "redis")  # the brokers that record heartbeats
def test_kill_9_is_gone_from_status_and_unhealthy_until_replaced(
    broker_kind: str, site_of: Callable[[str], Site]
) -> None:
    site = site_of(broker_kind)
    with worker(site) as first:
        wait_for(lambda: site.health(pid=first.pid).healthy, "the first worker's beat")
        name = site.worker_names(first.pid)[0]
        for select in ((APP,), ("--pid", str(first.pid)), ("--worker", name), ("--any",)):
            ok = site.cli("health", *select)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert one_line(ok).startswith("healthy: ")
        status = json.loads(site.cli("status", "--json").stdout)
        assert [w["alive"] for w in status["workers"] if w["worker"] == name] == [True]

        first.kill()  # SIGKILL: no clean stop, the beat stays in the broker and ages
        first.wait()
        # Gone = no beat for three of its periods + 1 s (the rule, checked exactly in
        # tests/test_health.py): `vaultq status` flags it, `vaultq health` fails.
        wait_for(lambda: not site.health(pid=first.pid).healthy, "the beat to go stale")
        status = json.loads(site.cli("status", "--json").stdout)
        gone = [w for w in status["workers"] if w["worker"] == name]
        assert len(gone) == 1 and gone[0]["alive"] is False
        assert gone[0]["every"] == float(EVERY) and gone[0]["age"] > 3 * float(EVERY) + 1
        text = site.cli("status").stdout
        assert "STOPPED BEATING" in [line for line in text.splitlines() if name in line][0]

        for select in ((APP,), ("--pid", str(first.pid)), ("--worker", name), ("--any",)):
            bad = site.cli("health", *select)
            assert bad.returncode == 1, bad.stdout + bad.stderr
            line = one_line(bad)
            assert line.startswith("unhealthy: ") and "stopped beating" in line, line
            assert f"pid {first.pid} is gone: killed or crashed" in line, line
        # The app positional without $VAULTQ_APP: the same verdict.
        del site.env["VAULTQ_APP"]
        try:
            assert site.cli("health", APP).returncode == 1
        finally:
            site.env["VAULTQ_APP"] = APP

    # A restart (same host): this host is healthy again, the dead pid stays unhealthy.
    with worker(site) as second:
        wait_for(lambda: site.health(pid=second.pid).healthy, "the new worker's beat")
        again = site.cli("health", APP)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1 earlier one(s) replaced" in one_line(again)
        assert site.cli("health", "--pid", str(first.pid)).returncode == 1
        assert site.cli("health", "--any").returncode == 0
        assert site.cli("health", "--host", "no-such-host.invalid").returncode == 1


@pytest.mark.other_processes
@pytest.mark.broker_kinds("sqlite", "redis")
def test_a_stuck_or_frozen_worker_is_unhealthy(
    broker_kind: str, site_of: Callable[[str], Site]
) -> None:
    site = site_of(broker_kind)
    with worker(site) as stuck:
        wait_for(lambda: site.health(pid=stuck.pid).healthy, "the worker's beat")
        # A coroutine calling time.sleep: the process runs, its event loop does not turn.
        site.enqueue("hog", Note(text="x", n=600))
        wait_for(lambda: not site.health(pid=stuck.pid).healthy, "the stuck worker's beat to age")
        assert stuck.poll() is None  # alive all along
        bad = site.cli("health", "--pid", str(stuck.pid))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        line = one_line(bad)
        assert f"pid {stuck.pid} still exists: its event loop is blocked" in line, line
        assert site.cli("health", APP).returncode == 1  # this host: not replaced
        assert "STOPPED BEATING" in site.cli("workers").stdout

        with worker(site) as frozen:
            wait_for(lambda: site.health(pid=frozen.pid).healthy, "the second worker's beat")
            name = site.worker_names(frozen.pid)[0]
            assert site.cli("health", "--worker", name).returncode == 0
            # Started after the stuck worker's last beat, but the stuck process still runs:
            # this host stays unhealthy, naming the stuck one.
            host = site.cli("health", APP)
            assert host.returncode == 1
            assert f"pid {stuck.pid} still exists" in one_line(host)
            os.kill(frozen.pid, signal.SIGSTOP)
            wait_for(lambda: not site.health(worker=name).healthy, "the frozen beat to age")
            bad = site.cli("health", "--worker", name)
            assert bad.returncode == 1
            assert "still exists" in one_line(bad)
            assert site.cli("health", "--any").returncode == 1
            os.kill(frozen.pid, signal.SIGCONT)
            wait_for(lambda: site.health(worker=name).healthy, "beats after SIGCONT")
            assert site.cli("health", "--worker", name).returncode == 0


@pytest.mark.other_processes
@pytest.mark.broker_kinds("sqlite")
def test_health_without_any_worker_and_with_an_unreachable_broker(
    broker_kind: str, site_of: Callable[[str], Site], tmp_path: Path
) -> None:
    site = site_of(broker_kind)
    with worker(site, clean=True) as proc:
        wait_for(lambda: site.health(pid=proc.pid).healthy, "the worker's beat")
    # Stopped cleanly: its beat is removed, nothing is left to judge.
    none = site.cli("health", APP)
    assert none.returncode == 1
    assert f"no heartbeat from workers on {socket.gethostname()}" in one_line(none)
    # A Redis port nobody listens on: one line, exit 1, within --timeout.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = site.cli("health", "--broker", f"redis://127.0.0.1:{port}/0", "--timeout", "3")
    assert down.returncode == 1, down.stdout + down.stderr
    assert one_line(down).startswith("unhealthy: ")
    # The two signals do not mix.
    mixed = site.cli("health", "--health-file", str(tmp_path / "x"), "--pid", "1")
    assert mixed.returncode == 2
    assert "choose one" in mixed.stderr
