"""``manage.py vaultq_worker`` logs each line once: under a project ``LOGGING`` that
routes vaultq's loggers itself, and with ``DEBUG=True`` (warned once, not per process)."""

from __future__ import annotations

import signal
from typing import Any

from vqhelpers import wait_for


def test_project_logging_config_prints_each_line_once(workers: Any, queue: str) -> None:
    proc = workers.start("--queues", queue, DJANGO_SETTINGS_MODULE="vq_settings_logging")
    wait_for(lambda: "vaultq worker " in workers.log(proc), 60, "the start line")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    log = workers.log(proc)
    starts = [line for line in log.splitlines() if "vaultq worker " in line]
    # The project's handler prints it; vaultq adds no second handler of its own.
    assert len(starts) == 1, log
    assert starts[0].startswith("PROJECT INFO vaultq: vaultq worker ")
    stops = [line for line in log.splitlines() if "stopped after" in line]
    assert len(stops) == 1, log


def test_debug_true_is_warned_once_across_processes(workers: Any, queue: str) -> None:
    proc = workers.start("--queues", queue, "--processes", "2", VQTEST_DEBUG="1")
    wait_for(lambda: workers.log(proc).count("vaultq worker ") >= 2, 60, "two worker processes")
    log = workers.log(proc)
    assert "vaultq.W003" in log
    assert log.count("DEBUG=True") == 1, log


def test_json_log_format_reaches_every_worker_process(workers: Any, queue: str) -> None:
    import json

    proc = workers.start("--queues", queue, "--processes", "2", "--log-format", "json")
    wait_for(lambda: workers.log(proc).count("vaultq worker ") >= 2, 60, "two worker processes")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    records = [json.loads(line) for line in workers.log(proc).splitlines() if line.strip()]
    starts = [r for r in records if r["message"].startswith("vaultq worker ")]
    assert len(starts) == 2 and all(r["logger"] == "vaultq" for r in starts)
    assert all(r["time"].endswith("Z") for r in records)
    assert any(r["logger"] == "vaultq.supervisor" for r in records)
