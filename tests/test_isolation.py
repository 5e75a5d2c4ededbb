"""Process isolation: hard deadlines that kill the child, typed results and errors across
the pipe, crashes, reuse and recycling of children, and cancellation.

Tasks live in tests/isolation_app.py, which the children import by name. The end-to-end
tests run a real Worker on an embedded SQLite broker in a temporary directory.
"""

from __future__ import annotations

import importlib
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import msgspec
import pytest

from vaultq.envelope import Header, JobBody, OpenedJob
from vaultq.errors import ConfigurationError, JobCancelled, JobFailed, JobTimedOut
from vaultq.jobs import JobContext
from vaultq.keyring import Keyring
from vaultq.principal import Principal
from vaultq.runtime.child import Reply, Request
from vaultq.runtime.execute import AttemptTimedOut, TaskRaised
from vaultq.runtime.isolation import CHILD_DIED, ProcessPool, child_environment, find_import_spec
from vaultq.runtime.worker import Worker

REPO = Path(__file__).resolve().parent.parent
SPEC = "tests.isolation_app:app"

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """tests.isolation_app, imported with its broker and keys in the environment (which
    the children inherit, along with PYTHONPATH to find the module)."""
    tmp = tmp_path_factory.mktemp("isolation")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAULTQ_BROKER", f"sqlite:///{tmp}/vaultq.db")
        mp.setenv("VAULTQ_KEYS", Keyring.generate().to_json())
        paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        mp.setenv("PYTHONPATH", os.pathsep.join(paths))
        mp.syspath_prepend(str(REPO))
        sys.modules.pop("tests.isolation_app", None)
        module = importlib.import_module("tests.isolation_app")
        yield module
        sys.modules.pop("tests.isolation_app", None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_for_file(path: Path, timeout: float = 20.0) -> int:
    with anyio.fail_after(timeout):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.02)
    return int(path.read_text())


@asynccontextmanager
async def running_worker(app: Any, concurrency: int = 2) -> AsyncIterator[Worker]:
    worker = Worker(app, concurrency=concurrency, block=0.1, grace=5.0)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()

        async def run() -> None:
            await worker.run(started=started)

        tg.start_soon(run)
        await started.wait()
        try:
            yield worker
        finally:
            worker.stop()


def attempt(task: Any, payload: bytes, timeout: float = 30.0) -> tuple[OpenedJob, JobContext]:
    """An opened job and its context, as the executor hands them to the pool."""
    now = time.time()
    job_id = os.urandom(16).hex()
    header = Header(
        version=1,
        job_id=job_id,
        app="isoapp",
        task=task.name,
        queue=task.queue,
        issued_at=int(now * 1000),
        not_before=int(now * 1000),
        expires_at=int(now * 1000) + 60_000,
        key_id="k",
        signer_id="s",
    )
    body = JobBody(payload=msgspec.Raw(payload), principal=Principal("user:7"))
    ctx = JobContext(
        job_id=job_id,
        task=task.name,
        queue=task.queue,
        attempt=1,
        principal=body.principal,
        signer_id="s",
        deadline=now + timeout,
        max_attempts=1,
    )
    return OpenedJob(header=header, body=body), ctx


async def pool_run(pool: ProcessPool, task: Any, payload: bytes, timeout: float = 30.0) -> Any:
    opened, ctx = attempt(task, payload, timeout)
    return msgspec.json.decode(await pool.run(task, opened, ctx, timeout))


# -- end to end, through a Worker ------------------------------------------------------------


async def test_busy_loop_is_killed_at_deadline_and_next_job_gets_fresh_child(
    iso: ModuleType, tmp_path: Path
) -> None:
    async with running_worker(iso.app) as worker:
        first = await (await iso.whoami.enqueue(iso.Empty())).result(timeout=30)

        pidfile = tmp_path / "busy.pid"
        handle = await iso.busy.enqueue(iso.PidFile(str(pidfile)))
        with pytest.raises(JobTimedOut):
            await handle.result(timeout=30)
        busy_pid = int(pidfile.read_text())
        assert busy_pid == first  # the idle child was reused for the busy job...
        assert not alive(busy_pid)  # ...and killed (and reaped) at the deadline
        assert busy_pid not in worker._pool.pids  # type: ignore[union-attr]

        outcome = await handle.outcome()
        assert outcome is not None and outcome.status == "timed_out"
        assert outcome.started_at is not None and outcome.finished_at is not None
        late = outcome.finished_at - outcome.started_at - 1.0
        print(f"\nbusy child killed {late * 1000:.1f} ms past its 1 s deadline")
        assert -0.05 < late < 1.5

        # The worker carries on: an in-process job and a fresh isolated child.
        assert await (await iso.in_process.enqueue(iso.Empty())).result(timeout=30) == os.getpid()
        fresh = await (await iso.whoami.enqueue(iso.Empty())).result(timeout=30)
        assert fresh not in (busy_pid, os.getpid())
        assert alive(fresh) and fresh in worker._pool.pids  # type: ignore[union-attr]
    assert not alive(fresh)  # the pool closed with the worker


async def test_children_do_not_inherit_the_workers_secrets(
    iso: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child runs task code and needs no keys, yet it inherited VAULTQ_KEYS (readable
    by that code and in /proc/<pid>/environ)."""
    monkeypatch.setenv("VAULTQ_WEBHOOK_TOKEN", "tok-secret")
    monkeypatch.setenv("VQTEST_UNRELATED", "kept")
    async with running_worker(iso.app):
        env = await (await iso.vaultq_environment.enqueue(iso.Empty())).result(timeout=30)
    assert "VAULTQ_KEYS" in os.environ
    assert "VAULTQ_KEYS" not in env
    assert "VAULTQ_WEBHOOK_TOKEN" not in env
    assert env["VAULTQ_BROKER"] == os.environ["VAULTQ_BROKER"]  # no password: kept as is
    assert env["VQTEST_UNRELATED"] == "kept"
    key_text = os.environ["VAULTQ_KEYS"]
    assert all(key_text not in value for value in env.values())


def test_child_environment_masks_the_broker_password_and_custom_keys_var() -> None:
    env = child_environment(
        {
            "VAULTQ_BROKER": "redis://worker:s3cret@redis:6379/0",
            "VAULTQ_KEYS": "{}",
            "SHOP_KEYS": "@/run/keys.json",
            "VAULTQ_APP": "shop.jobs",
            "PATH": "/usr/bin",
        },
        keys_var="SHOP_KEYS",
    )
    assert env == {
        "VAULTQ_BROKER": "redis://worker:***@redis:6379/0",
        "VAULTQ_APP": "shop.jobs",
        "PATH": "/usr/bin",
    }


async def test_results_and_exceptions_cross_as_typed_json(iso: ModuleType) -> None:
    async with running_worker(iso.app):
        handle = await iso.add.enqueue(iso.Pair(2, 40), principal=Principal("user:42"))
        result = await handle.result(timeout=30)
        assert isinstance(result, iso.Sum)
        assert result.total == 42
        assert result.pid != os.getpid()
        assert result.job_id == handle.id  # current_job() works in the child...
        assert result.principal == "user:42"
        assert 25 < result.deadline - time.time() <= 30  # ...with the worker's deadline

        result = await (await iso.add_async.enqueue(iso.Pair(1, 2))).result(timeout=30)
        assert isinstance(result, iso.Sum) and result.total == 3 and result.pid != os.getpid()

        with pytest.raises(JobFailed) as info:
            await (await iso.fail.enqueue(iso.Text("boom"))).result(timeout=30)
        assert info.value.error_type == "tests.isolation_app.IsolatedError"
        assert info.value.detail == "boom"

        with pytest.raises(JobFailed) as info:
            await (await iso.fail_builtin.enqueue(iso.Text("bad"))).result(timeout=30)
        assert info.value.error_type == "ValueError"

        with pytest.raises(JobFailed) as info:
            await (await iso.wrong_result.enqueue(iso.Empty())).result(timeout=30)
        assert info.value.error_type == "vaultq.PayloadError"


async def test_crashing_child_fails_the_attempt_and_is_replaced(
    iso: ModuleType, tmp_path: Path
) -> None:
    async with running_worker(iso.app, concurrency=1):
        pidfile = tmp_path / "crash.pid"
        with pytest.raises(JobFailed) as info:
            await (await iso.crash.enqueue(iso.PidFile(str(pidfile)))).result(timeout=30)
        assert info.value.error_type == CHILD_DIED
        assert "exit code 3" in info.value.detail
        crashed = int(pidfile.read_text())
        assert not alive(crashed)
        fresh = await (await iso.whoami.enqueue(iso.Empty())).result(timeout=30)
        assert fresh != crashed


async def test_cancelling_a_running_isolated_job_kills_its_child(
    iso: ModuleType, tmp_path: Path
) -> None:
    async with running_worker(iso.app):
        pidfile = tmp_path / "sleepy.pid"
        handle = await iso.sleepy.enqueue(iso.Sleep(30.0, str(pidfile)))
        pid = await wait_for_file(pidfile)
        await handle.cancel()
        with pytest.raises(JobCancelled):
            await handle.result(timeout=20)
        assert not alive(pid)


# -- the pool on its own ---------------------------------------------------------------------


async def test_children_are_reused_then_recycled(iso: ModuleType) -> None:
    pool = ProcessPool(iso.app, size=1, max_jobs_per_child=2)
    try:
        pids = [await pool_run(pool, iso.whoami, b"{}") for _ in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert pool.started == 3
        assert os.getpid() not in pids
    finally:
        await pool.aclose()
    assert pool.pids == []
    with anyio.fail_after(5):
        while any(alive(p) for p in pids):
            await anyio.sleep(0.05)


async def test_pool_timeout_and_outside_cancellation_kill_the_child(
    iso: ModuleType, tmp_path: Path
) -> None:
    pool = ProcessPool(iso.app, size=2, kill_grace=1.0)
    try:
        pidfile = tmp_path / "busy.pid"
        opened, ctx = attempt(iso.busy, msgspec.json.encode(iso.PidFile(str(pidfile))), 1.0)
        began = time.monotonic()
        with pytest.raises(AttemptTimedOut):
            await pool.run(iso.busy, opened, ctx, 1.0)
        print(f"\npool killed the busy child {(time.time() - ctx.deadline) * 1000:.1f} ms late")
        assert time.monotonic() - began < 2.5
        assert not alive(int(pidfile.read_text()))

        # A child that ignores SIGTERM gets SIGKILL after kill_grace.
        pidfile = tmp_path / "stubborn.pid"
        opened, ctx = attempt(iso.stubborn, msgspec.json.encode(iso.PidFile(str(pidfile))), 1.0)
        with pytest.raises(AttemptTimedOut):
            await pool.run(iso.stubborn, opened, ctx, 1.0)
        late = time.time() - ctx.deadline
        print(f"stubborn child killed {late * 1000:.1f} ms late (kill_grace 1 s)")
        assert 0.9 < late < 2.5
        assert not alive(int(pidfile.read_text()))

        # Cancelled from outside (what a job cancel or worker shutdown does).
        pidfile = tmp_path / "sleepy.pid"
        opened, ctx = attempt(iso.sleepy, msgspec.json.encode(iso.Sleep(30.0, str(pidfile))))
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await pool.run(iso.sleepy, opened, ctx, 30.0)

            tg.start_soon(run)
            pid = await wait_for_file(pidfile)
            tg.cancel_scope.cancel()
        assert not alive(pid)
        assert pool.pids == []
    finally:
        await pool.aclose()


async def test_child_ignores_sigint_and_reports_typed_errors(
    iso: ModuleType, tmp_path: Path
) -> None:
    pool = ProcessPool(iso.app, size=1)
    try:
        pidfile = tmp_path / "sleepy.pid"
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def run() -> None:
                payload = msgspec.json.encode(iso.Sleep(1.0, str(pidfile)))
                results.append(await pool_run(pool, iso.sleepy, payload))

            tg.start_soon(run)
            pid = await wait_for_file(pidfile)
            os.kill(pid, signal.SIGINT)  # Ctrl-C on the terminal: the job carries on
        assert results == [pid]

        opened, ctx = attempt(iso.fail, msgspec.json.encode(iso.Text("nope")))
        with pytest.raises(TaskRaised) as info:
            await pool.run(iso.fail, opened, ctx, 30.0)
        assert (info.value.error_type, info.value.message) == (
            "tests.isolation_app.IsolatedError",
            "nope",
        )
        opened, ctx = attempt(iso.add, b'{"a": "x", "b": 1}')
        with pytest.raises(TaskRaised) as info:
            await pool.run(iso.add, opened, ctx, 30.0)
        assert info.value.error_type == "vaultq.PayloadError"
        assert pool.pids == [pid]  # task errors do not cost the child
    finally:
        await pool.aclose()


def test_child_runs_registered_names_only() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "VAULTQ_BROKER": "sqlite:///:memory:"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultq.runtime.child", SPEC],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(data: bytes) -> None:
        assert proc.stdin is not None
        proc.stdin.write(struct.pack(">I", len(data)) + data)
        proc.stdin.flush()

    def receive() -> bytes:
        assert proc.stdout is not None
        (size,) = struct.unpack(">I", proc.stdout.read(4))
        return proc.stdout.read(size)

    try:
        assert msgspec.json.decode(receive())["app"] == "isoapp"
        for name in ("os:system", "os.system", "builtins.eval", "tests.isolation_app.Empty"):
            request = Request(
                task=name,
                payload=msgspec.Raw(b'"id"'),
                principal=None,
                job_id="j",
                queue="default",
                attempt=1,
                signer_id="s",
                deadline=time.time() + 5,
                max_attempts=1,
            )
            send(msgspec.json.encode(request))
            reply = msgspec.json.decode(receive(), type=Reply)
            assert not reply.ok and reply.error_type == "vaultq.UnknownTask"
        send(b'{"not": "a request"}')
        reply = msgspec.json.decode(receive(), type=Reply)
        assert not reply.ok and reply.error_type == "vaultq.MalformedRequest"
        proc.stdin.close()  # EOF: the child exits cleanly
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_import_spec_is_derived_or_refused(iso: ModuleType, tmp_path: Path) -> None:
    assert find_import_spec(iso.app) == SPEC
    iso.app.import_spec = None
    assert ProcessPool(iso.app, size=1).spec == SPEC

    from vaultq.app import App

    orphan = App("orphan", broker=f"sqlite:///{tmp_path}/orphan.db")
    with pytest.raises(ConfigurationError, match="import_spec"):
        ProcessPool(orphan, size=1)


async def test_retry_verdict_crosses_from_the_child(iso: ModuleType) -> None:
    """retry_on, dont_retry_on, Retry and Fatal are judged in the child, where the
    exception's class is known, and the worker follows the verdict."""

    async def outcome(*raises: str) -> tuple[str, int]:
        handle = await iso.retrying.enqueue(iso.Attempts(list(raises)))
        try:
            await handle.result(timeout=60)
            error_type = ""
        except JobFailed as exc:
            error_type = exc.error_type
        body = await handle.outcome()
        assert body is not None
        return error_type, body.attempts

    async with running_worker(iso.app):
        assert await outcome("transient", "retry", "") == ("", 3)
        assert await outcome("value") == ("ValueError", 1)
        assert await outcome("transient", "fatal") == ("vaultq.errors.Fatal", 2)
        assert await outcome("retry", "retry", "retry", "retry") == ("vaultq.errors.Retry", 4)


async def test_a_lost_lease_kills_the_child_at_once(iso: ModuleType, tmp_path: Path) -> None:
    # A child that ignores SIGTERM would get kill_grace (60 s here) before SIGKILL; when
    # the attempt lost its lease another worker may soon run the job, so no grace.
    pool = ProcessPool(iso.app, size=1, kill_grace=60.0)
    try:
        pidfile = tmp_path / "stubborn.pid"
        opened, ctx = attempt(iso.stubborn, msgspec.json.encode(iso.PidFile(str(pidfile))))
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await pool.run(iso.stubborn, opened, ctx, 30.0, urgent=lambda: True)

                tg.start_soon(run)
                pid = await wait_for_file(pidfile)
                tg.cancel_scope.cancel()
        assert not alive(pid)
        assert pool.pids == []
    finally:
        await pool.aclose()
