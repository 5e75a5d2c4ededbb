"""Adversarial reliability checks: a production user's promises, tested where they broke.

Each test pins one finding of a QA pass against the public API and the CLI: waits longer
than redis-py's default socket timeout, ``store_result=False`` outcomes, bad defer times,
a supervisor fed a broken app module, CLI flag and import errors that must be one line.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import ROOT, make_app, running_worker, worker_env

import vaultq
from vaultq.brokers.redis import RedisBroker
from vaultq.cli import build_parser

TESTS = ROOT / "tests"


class Num(msgspec.Struct, frozen=True):
    n: int = 0


def _cli(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=worker_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- Redis: blocking reads longer than the client's (implicit) socket timeout ----------------


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_waits_longer_than_redis_pys_default_socket_timeout(
    redis_url: str, unique_name: str
) -> None:
    """redis-py 8 gives connections a 5 s socket timeout without listing it in the pool's
    kwargs; a 6 s wait for a result (or a 6 s blocking fetch) used to fail after 5 s with
    BrokerUnavailable("Timeout reading ...") instead of returning nothing / TimeoutError."""
    app = make_app(unique_name, redis_url)
    broker = RedisBroker(redis_url, namespace=unique_name + "-b")
    outcomes: dict[str, object] = {}

    async def handle_wait() -> None:
        try:
            await app.job("never-enqueued").result(timeout=6)
        except BaseException as exc:  # noqa: BLE001 - record whatever it raised
            outcomes["result"] = exc

    async def raw_wait() -> None:
        outcomes["wait_result"] = await broker.wait_result("default", "none", 6)

    async def raw_fetch() -> None:
        outcomes["fetch"] = await broker.fetch(["default"], 1, consumer="c", lease=5, block=6)

    start = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle_wait)
            tg.start_soon(raw_wait)
            tg.start_soon(raw_fetch)
    finally:
        await broker.close()
        await app.aclose()
    assert time.monotonic() - start >= 5.9
    assert isinstance(outcomes["result"], TimeoutError), outcomes["result"]
    assert outcomes["wait_result"] is None
    assert outcomes["fetch"] == []


# -- store_result=False still records that the job finished -----------------------------------


@pytest.mark.anyio
async def test_store_result_false_reports_success_without_the_value(
    tmp_path: Path, unique_name: str
) -> None:
    """The task's docstring promises ResultUnavailable; the job used to store nothing, so
    result() waited until its timeout and status() said PENDING forever."""
    app = make_app(unique_name, f"sqlite:///{tmp_path}/q.db")

    @app.task(name="rel.nostore", store_result=False, retries=0)
    async def nostore(job: Num) -> int:
        return job.n * 2

    @app.task(name="rel.nostore_fails", store_result=False, retries=0)
    async def nostore_fails(job: Num) -> int:
        raise ValueError("boom")

    async with running_worker(app):
        ok = await nostore.enqueue(Num(21))
        bad = await nostore_fails.enqueue(Num(1))
        with pytest.raises(vaultq.ResultUnavailable, match="store_result=False"):
            await ok.result(timeout=10)
        assert await ok.status() == vaultq.JobStatus.SUCCEEDED
        with pytest.raises(vaultq.JobFailed):  # failures are always recorded
            await bad.result(timeout=10)
        outcome = await ok.outcome()
        assert outcome is not None and outcome.value is None
    await app.aclose()


# -- defer times that cannot be sealed are a ConfigurationError ---------------------------------


@pytest.mark.anyio
async def test_unrepresentable_delay_or_at_is_a_clear_error(
    tmp_path: Path, unique_name: str
) -> None:
    app = make_app(unique_name, f"sqlite:///{tmp_path}/q.db")

    @app.task(name="rel.noop")
    async def noop(job: Num) -> None:
        return None

    bad: list[dict[str, object]] = [
        {"delay": math.inf},
        {"delay": math.nan},
        {"delay": -1},
        {"at": math.inf},
        {"at": math.nan},
        {"at": 1e30},
        {"at": datetime(9999, 1, 1, tzinfo=UTC)},
    ]
    for options in bad:
        with pytest.raises(vaultq.ConfigurationError):
            await noop.enqueue(Num(), **options)  # type: ignore[arg-type]
    broker = await app.broker()
    assert (await broker.stats("default")).delayed == 0  # nothing was enqueued
    # A far but sane time still works.
    handle = await noop.enqueue(Num(), delay=10 * 365 * 86400)
    assert await handle.status() == vaultq.JobStatus.PENDING
    assert (await broker.stats("default")).delayed == 1
    await app.aclose()


# -- the CLI: one clear line, right exit code ---------------------------------------------------


def test_supervisor_refuses_a_broken_app_before_starting_children(tmp_path: Path) -> None:
    """`--processes 2` with a module that does not exist used to crash-loop its children
    forever (restart with backoff, exit 0 at Ctrl-C) instead of failing once."""
    start = time.monotonic()
    out = _cli("worker", "rel_no_such_module", "--processes", "2", cwd=tmp_path, timeout=20)
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - start < 15
    assert out.stderr.count("vaultq: error: cannot import 'rel_no_such_module'") == 1
    assert "started worker process" not in out.stderr
    assert "Traceback" not in out.stderr


def test_supervisor_refuses_missing_keys_for_a_shared_broker(tmp_path: Path) -> None:
    (tmp_path / "rel_redis_app.py").write_text(
        "import vaultq\napp = vaultq.App('rel-redis', broker='redis://127.0.0.1:1/0')\n"
    )
    out = _cli("worker", "rel_redis_app", "--processes", "2", cwd=tmp_path, timeout=20)
    assert out.returncode == 2, out.stderr
    assert "vaultq keys generate" in out.stderr
    assert "started worker process" not in out.stderr


def test_log_level_typo_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["worker", "shop", "--log-level", "LOUD"])
    assert exc.value.code == 2
    assert "'LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err
    args = parser.parse_args(["status", "shop", "--log-level", "warning"])
    assert args.log_level == "WARNING"


def test_missing_dependency_of_the_app_module_is_named(tmp_path: Path) -> None:
    """`rel_dep_user` imports the missing `rel_dep`: the loader used to say the app module
    itself did not exist (a prefix match on the names)."""
    out = _cli("worker", "rel_dep_user", cwd=TESTS)
    assert out.returncode == 2
    assert "no such module" not in out.stderr
    assert "it imports 'rel_dep', which is not installed" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
