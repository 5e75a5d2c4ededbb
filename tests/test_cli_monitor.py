"""`vaultq workers`, `vaultq status` (workers section) and `vaultq events` against real
worker processes on Redis and SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.brokers.monitor import JobEvent

# Worker processes and the CLI reach the broker; the kinds implementing Monitoring.
pytestmark = [pytest.mark.other_processes, pytest.mark.broker_kinds("sqlite", "redis")]

INTERVAL = 0.3


def vaultq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_kill_9_shows_the_worker_as_gone_within_three_beats(
    broker_url: str, tmp_path: Path, unique_name: str
) -> None:
    url = broker_url
    env = worker_env(
        {
            "VAULTQ_BROKER": url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "VAULTQ_APP": "cli_apps:good",
        }
    )
    proc = start_worker_process(
        "cli_apps:good", env, "--health-interval", str(INTERVAL), "--health-file",
        str(tmp_path / "h"),
    )  # fmt: skip
    try:
        wait_until_serving([proc])

        def listed() -> list[dict[str, object]]:
            out = vaultq_cli(env, "workers", "--json")
            workers: list[dict[str, object]] = json.loads(out.stdout)["workers"]
            return workers

        wait_for(lambda: any(w["pid"] == proc.pid for w in listed()), "the first beat")
        out = vaultq_cli(env, "workers")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f" {proc.pid} " in out.stdout and "alive (beat" in out.stdout

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed = time.monotonic()

        def flagged() -> bool:
            doc = json.loads(vaultq_cli(env, "status", "--json").stdout)
            return [w["alive"] for w in doc["workers"] if w["pid"] == proc.pid] == [False]

        wait_for(flagged, "status to flag the killed worker")
        # three heartbeat periods plus a second of slack (the "alive" rule), plus the
        # time one `vaultq status` process takes to start
        assert time.monotonic() - killed < 3 * INTERVAL + 1 + 5
        text = vaultq_cli(env, "status")
        assert "STOPPED BEATING" in text.stdout, text.stdout
        gone = vaultq_cli(env, "workers")
        assert gone.returncode == 1 and "STOPPED BEATING" in gone.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cleanly_stopped_worker_leaves_the_list(broker_url: str, tmp_path: Path) -> None:
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
            "VAULTQ_APP": "cli_apps:good",
        }
    )
    proc = start_worker_process(
        "cli_apps:good", env, "--health-interval", str(INTERVAL), "--health-file",
        str(tmp_path / "h"),
    )  # fmt: skip
    try:
        wait_until_serving([proc])
        wait_for(lambda: vaultq_cli(env, "workers").returncode == 0, "the first beat")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        doc = json.loads(vaultq_cli(env, "workers", "--json").stdout)
        assert [w for w in doc["workers"] if w["pid"] == proc.pid] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_events_prints_the_newest_and_follows_new_ones_in_order(
    broker_url: str, tmp_path: Path
) -> None:
    url = broker_url
    app = vaultq.App("cli-good", broker=url, keyring=vaultq.Keyring.generate())
    env = worker_env({"VAULTQ_BROKER": url, "VAULTQ_APP": "cli_apps:good"})

    async def write(events: list[JobEvent]) -> None:
        broker = await app.broker()
        await broker.add_events(events)  # type: ignore[attr-defined]
        await app.aclose()

    anyio.run(write, [JobEvent("started", f"old{i}", "default", task="t") for i in range(3)])
    out = vaultq_cli(env, "events", "--last", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "job=old1" in lines[0] and "job=old2" in lines[1]
    assert "started" in lines[0] and "task=t" in lines[0] and "queue=default" in lines[0]

    follower = subprocess.Popen(
        [sys.executable, "-m", "vaultq", "events", "--follow", "--last", "1", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The newest old event first: the follower is reading, from after it.
        assert json.loads(follower.stdout.readline())["job_id"] == "old2"
        kinds = ["enqueued", "started", "succeeded"]
        anyio.run(write, [JobEvent(k, "new1", "default", task="t", attempt=1) for k in kinds])
        got = [json.loads(follower.stdout.readline()) for _ in kinds]
        assert [(e["kind"], e["job_id"]) for e in got] == [(k, "new1") for k in kinds]
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 130
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_without_the_extras_the_flags_say_what_to_install(tmp_path: Path) -> None:
    # The extras are installed in the dev lock: hide them to see what a plain
    # `pip install vaultq` user gets (the core imports nothing of them).
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "sys.modules['opentelemetry'] = None; import vaultq, vaultq.cli, vaultq.monitor; "
    )
    env = worker_env(
        {
            "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
            "VAULTQ_KEYS": vaultq.Keyring.generate().to_json(),
        }
    )
    for module, extra in (("vaultq.metrics", "metrics"), ("vaultq.tracing", "otel")):
        out = subprocess.run(
            [sys.executable, "-c", hide + f"import {module}"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode != 0
        assert f"pip install 'vaultq[{extra}]'" in out.stderr
    code = "raise SystemExit(vaultq.cli.main(['worker', 'cli_apps:good', '--metrics-port', '1']))"
    out = subprocess.run(
        [sys.executable, "-c", hide + code],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "pip install 'vaultq[metrics]'" in out.stderr


def test_the_flags_never_double_middleware_the_app_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("prometheus_client")
    from vaultq.cli_monitor import SUPERVISED_ENV, install_observability
    from vaultq.events import EventStream
    from vaultq.metrics import PrometheusMetrics
    from vaultq.settings import WorkerSettings

    app = vaultq.App("twice", broker="sqlite:///:memory:")
    mine = PrometheusMetrics(app)
    app.add_middleware(EventStream(app))
    app.add_middleware(mine)
    monkeypatch.setenv(SUPERVISED_ENV, "1")  # install only: nothing listens in this test
    install_observability(WorkerSettings(events=True, metrics_port=9), app)
    assert len(app.middleware) == 2 and app.middleware[1] is mine
    bare = vaultq.App("bare", broker="sqlite:///:memory:")
    install_observability(WorkerSettings(events=True, metrics_port=9), bare)
    assert [type(m) for m in bare.middleware] == [EventStream, PrometheusMetrics]
