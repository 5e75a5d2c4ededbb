"""Shared fixtures: the anyio backend and a private redis-server for the test session.

The machine's own Redis (127.0.0.1:6379) is never used: the session starts its own
``redis-server`` (from PATH, or ``$VAULTQ_TEST_REDIS_SERVER``) on a free loopback port,
without persistence, in a temporary directory, and stops it at the end.

The optional extras: the main test leg has all of them (requirements/dev.txt), and a
missing one stops the session at once -- a test skipped for want of an extra must not
pass silently there. ``.ci/test.sh``'s second leg sets ``VAULTQ_TESTS_WITHOUT_EXTRAS=1``
in a venv holding none of them: there the tests that need one skip, saying which
(``pytest.importorskip``), and an extra that *is* installed stops the session (the leg
would prove nothing).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.brokers import kind_params, url_for
from support.packages import THIRDPARTY, installed

EXTRA_PACKAGES = {
    "prometheus-client": "metrics",
    "opentelemetry-sdk": "otel",
    "croniter": "cron",
    "starlette": "dashboard",
    "uvicorn": "dashboard",
    "hiredis": "fast",
    "uvloop": "fast",
    "django": "django",
}
"""A distribution each optional extra of pyproject.toml installs -> the extra's name
(distributions, not modules: tests/django would pass for an importable ``django``)."""
WITHOUT_EXTRAS = os.environ.get("VAULTQ_TESTS_WITHOUT_EXTRAS") == "1"


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pytest_sessionstart(session: pytest.Session) -> None:
    present = {d: _installed(d) for d in EXTRA_PACKAGES}
    if WITHOUT_EXTRAS:
        there = [f"{m} (vaultq[{EXTRA_PACKAGES[m]}])" for m, ok in present.items() if ok]
        if there:
            raise pytest.UsageError(
                f"VAULTQ_TESTS_WITHOUT_EXTRAS=1 but optional extras are installed: "
                f"{', '.join(there)}; run this leg in a venv without them (see .ci/test.sh)"
            )
        return
    missing = [f"{m} (vaultq[{EXTRA_PACKAGES[m]}])" for m, ok in present.items() if not ok]
    if missing:
        raise pytest.UsageError(
            f"optional extras missing: {', '.join(missing)}; the tests needing them would "
            "skip: install requirements/dev.txt (as .ci/test.sh does), or set "
            "VAULTQ_TESTS_WITHOUT_EXTRAS=1 to run the leg without extras on purpose"
        )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a private redis-server; yields its URL (db 0)."""
    binary = os.environ.get("VAULTQ_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        pytest.fail(
            "redis-server not found on PATH: install it (apt-get install -y redis-server) "
            "or set VAULTQ_TEST_REDIS_SERVER to the binary"
        )
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / "redis.log"),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = workdir / "redis.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    pytest.fail(f"private redis-server did not start on port {port}:\n{tail}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(redis_server: str) -> str:
    """URL of the session's private redis-server (``redis://127.0.0.1:<port>/0``)."""
    return redis_server


@pytest.fixture
def redis_clean(redis_url: str) -> Iterator[str]:
    """The private server's URL, flushed before the test (never touches another server)."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``broker_kind``: every kind in ``tests/support/brokers.py`` (the one list)."""
    if "broker_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker
        only = marker("broker_kinds")
        params = kind_params(
            other_processes=marker("other_processes") is not None,
            third_party=marker("third_party_broker") is not None,
            only=None if only is None else only.args,
        )
        metafunc.parametrize("broker_kind", params)


@pytest.fixture
def broker_url(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A broker URL of ``broker_kind`` private to this test."""
    return url_for(broker_kind, tmp_path, request)


@pytest.fixture(scope="module")
def third_party_broker_installed() -> Iterator[None]:
    """The third-party broker package (scheme ``thirdparty://``) installed for the test
    module: its dist-info on sys.path, found through the ``vaultq.brokers`` entry point
    (gone again for the next module, which may check that it is not installed)."""
    with installed(THIRDPARTY):
        yield


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a namespace or queue, so tests never see each other's keys."""
    return "t" + uuid.uuid4().hex[:12]


# The longest runs (measured with --durations: seconds each, mostly real worker processes
# draining, restarting or running thousands of jobs), marked ``slow`` in one place so the
# quick subset ``pytest -m "not slow"`` stays quick without touching every test module.
# Tests decorated with @pytest.mark.slow are slow too.
SLOW_TESTS = frozenset(
    {
        ("test_worker_processes.py", "test_sigterm_drains_or_hands_back"),
        ("test_worker_processes.py", "test_kill_9_mid_job_jobs_complete_elsewhere"),
        ("test_worker_processes.py", "test_2000_jobs_two_processes_each_once"),
        ("test_worker_processes.py", "test_cli_enqueue_wait_and_supervisor"),
        ("test_deadlines.py", "test_doc_examples_run"),
        ("test_deadlines.py", "test_abandoned_thread_limit_hands_sync_jobs_back"),
        ("test_deadlines.py", "test_worker_process_kills_an_isolated_busy_loop"),
        ("test_deadlines.py", "test_worker_process_enforces_deadlines"),
        (
            "test_adversarial_reliability.py",
            "test_redis_waits_longer_than_redis_pys_default_socket_timeout",
        ),
        ("test_worker.py", "test_worker_rides_out_a_redis_restart"),
        ("test_isolation.py", "test_pool_timeout_and_outside_cancellation_kill_the_child"),
        ("test_redis_topologies.py", "test_sentinel_failover_moves_the_broker_to_the_new_master"),
        (
            "test_chaos_fencing.py",
            "test_redis_frozen_longer_than_the_lease_runs_no_job_twice_at_once",
        ),
        (
            "test_chaos_fencing.py",
            "test_sqlite_locked_longer_than_the_lease_runs_no_job_twice_at_once",
        ),
        (
            "test_chaos_fencing.py",
            "test_redis_outage_longer_than_the_lease_runs_no_job_twice_at_once",
        ),
        (
            "test_chaos_fencing.py",
            "test_a_job_that_blocks_the_event_loop_does_not_get_its_siblings_run_twice",
        ),
        (
            "test_chaos_clocks.py",
            "test_a_producer_ahead_by_more_than_the_skew_is_deferred_not_hot_looped",
        ),
        ("test_markers.py", "test_every_listed_slow_test_exists_and_is_marked"),
        ("test_adversarial_outcomes.py", "test_hostile_flood_keeps_redis_memory_bounded"),
        ("test_broker_contract.py", "test_reclaim_of_a_dead_consumer_is_not_clogged_by_junk"),
        ("test_django_orm.py", "test_no_connection_leak_after_500_jobs"),
        ("test_django_orm.py", "test_50_concurrent_async_jobs_do_not_share_connections"),
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything using the private server gets the ``redis`` marker, so ``-m "not redis"``
    # runs the rest without redis-server installed.
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
        name = getattr(item, "originalname", item.name)
        if (item.path.name, name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
