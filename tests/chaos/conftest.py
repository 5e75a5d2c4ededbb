"""Fixtures for the chaos suite: a redis-server of the test's own that can be stopped,
frozen and restarted with its data, and a recorder of attempt start/end times."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A private redis-server with an append-only file in its own directory, so it can
    be stopped and started again with the same data (the session's server keeps none)."""

    def __init__(self, workdir: Path) -> None:
        binary = os.environ.get("VAULTQ_TEST_REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            pytest.fail("redis-server not found on PATH (or set VAULTQ_TEST_REDIS_SERVER)")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dedicated redis-server did not start on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)

    def freeze(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung host)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.thaw()
        server.stop()


@dataclass
class Run:
    job: str
    worker: str
    start: float
    end: float | None = None


@dataclass
class Runs:
    """Start/end (monotonic) of every attempt, by job id; safe to record from threads."""

    runs: list[Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, job: str, worker: str = "") -> Run:
        run = Run(job, worker, time.monotonic())
        with self.lock:
            self.runs.append(run)
        return run

    def started(self) -> set[str]:
        with self.lock:
            return {r.job for r in self.runs}

    def of(self, job: str) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.job == job]

    def overlapping(self) -> list[tuple[Run, Run]]:
        """Pairs of attempts of one job id that ran at the same time."""
        now = time.monotonic()
        by_job: dict[str, list[Run]] = {}
        with self.lock:
            for r in self.runs:
                by_job.setdefault(r.job, []).append(r)
        pairs = []
        for runs in by_job.values():
            runs.sort(key=lambda r: r.start)
            for a, b in zip(runs, runs[1:], strict=False):
                if b.start < (a.end if a.end is not None else now):
                    pairs.append((a, b))
        return pairs


@pytest.fixture
def runs() -> Runs:
    return Runs()
