"""Cancellation by id: queued and delayed jobs never start, running ones stop within a
second and are not retried, finished ones are left alone; ``vaultq cancel`` does the same
against a real worker process."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from e2e_app_deadlines import Nap, build, count
from support.brokers import url_for
from support.e2e_workers import dead_reasons, e2e_worker, settled
from support.workers import running_worker, worker_env

import vaultq
from vaultq.brokers.base import CancelState

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90), pytest.mark.other_processes]

SPEC = "e2e_app_deadlines:app"
KEYS = vaultq.Keyring.generate()
CANCEL_LATENCY = 1.5
"""Seconds from a cancel request to the settled outcome: the worker polls for cancel
markers every 0.5 s, then settles."""


def _task(app: vaultq.App, name: str) -> vaultq.Task[Nap, int]:
    task = app.get_task(name)
    assert task is not None
    return task


async def _wait_for(state: Path, counter: str, n: int = 1, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while count(state, counter) < n:
            await anyio.sleep(0.02)


async def test_cancelled_queued_and_delayed_jobs_never_start(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = build(unique_name, tmp_path, broker=url_for(broker_kind, tmp_path, request), keyring=KEYS)
    cancellable = _task(app, "cancellable")
    queued = await cancellable.enqueue(Nap(0))
    delayed = await cancellable.enqueue(Nap(0), delay=0.5)
    kept = await cancellable.enqueue(Nap(0, n=9))
    assert await queued.cancel() == CancelState.REQUESTED
    assert await app.cancel(delayed.id) == CancelState.REQUESTED  # without the queue
    assert await queued.status() == vaultq.JobStatus.PENDING

    async with running_worker(app):
        for handle in (queued, delayed):
            with pytest.raises(vaultq.JobCancelled) as exc_info:
                await handle.result(timeout=10)
            assert exc_info.value.job_id == handle.id
            assert await handle.status() == vaultq.JobStatus.CANCELLED
        assert await kept.result(timeout=10) == 9
        await settled(app)
        dead = await dead_reasons(app)
    assert dead == {queued.id: ("cancelled", 1), delayed.id: ("cancelled", 1)}
    assert count(tmp_path, "cancellable.start") == 1  # only the job that was kept


async def test_cancelled_running_job_stops_within_a_second_and_is_not_retried(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = build(unique_name, tmp_path, broker=url_for(broker_kind, tmp_path, request), keyring=KEYS)
    release = threading.Event()

    @app.task(name="cancellable_sync", timeout=60, retries=3)
    def cancellable_sync(job: Nap) -> int:
        (tmp_path / "sync.start").write_text("x\n")
        release.wait(job.seconds)
        return job.n

    try:
        async with running_worker(app):
            running = await _task(app, "cancellable").enqueue(Nap(30))
            running_sync = await cancellable_sync.enqueue(Nap(30))
            await _wait_for(tmp_path, "cancellable.start")
            await _wait_for(tmp_path, "sync.start")
            assert await running.status() == vaultq.JobStatus.RUNNING

            for handle in (running, running_sync):
                began = time.monotonic()
                assert await handle.cancel() == CancelState.REQUESTED
                with pytest.raises(vaultq.JobCancelled):
                    await handle.result(timeout=10)
                took = time.monotonic() - began
                print(f"{broker_kind}: {handle.task_name} cancelled {took:.3f} s after the request")
                assert took < CANCEL_LATENCY
                outcome = await handle.outcome()
                assert outcome is not None and outcome.status == "cancelled"
                assert outcome.attempts == 1

            # Not retried, nothing left behind, and the worker goes on.
            await settled(app)
            dead = await dead_reasons(app)
            assert dead == {running.id: ("cancelled", 1), running_sync.id: ("cancelled", 1)}
            assert await (await _task(app, "quick").enqueue(Nap(n=3))).result(timeout=10) == 3
    finally:
        release.set()
    assert count(tmp_path, "cancellable.start") == 1
    assert count(tmp_path, "cancellable.end") == 0


async def test_cancelling_a_finished_job_is_a_noop(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = build(unique_name, tmp_path, broker=url_for(broker_kind, tmp_path, request), keyring=KEYS)
    async with running_worker(app):
        done = await _task(app, "quick").enqueue(Nap(n=5))
        assert await done.result(timeout=10) == 5
        assert await done.cancel() == CancelState.FINISHED
        assert await app.cancel(done.id) == CancelState.FINISHED
        # The outcome is unchanged.
        assert await done.result(timeout=1) == 5
        assert await done.status() == vaultq.JobStatus.SUCCEEDED


async def _cli(args: list[str], env: dict[str, str], cwd: Path, code: int = 0) -> str:
    proc = await anyio.run_process(
        [sys.executable, "-m", "vaultq", *args], env=env, cwd=str(cwd), check=False
    )
    out = proc.stdout.decode()
    assert proc.returncode == code, out + proc.stderr.decode()
    return out


async def test_vaultq_cancel_stops_a_job_on_a_worker_process(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = build(unique_name, tmp_path, broker=url, keyring=keys)
    settings = {"E2E_APP": unique_name, "E2E_STATE": str(tmp_path)}
    cli_env = worker_env({"VAULTQ_BROKER": url, "VAULTQ_KEYS": keys.to_json(), **settings})
    cancellable = _task(app, "cancellable")
    with e2e_worker(SPEC, url=url, keyring=keys, logdir=tmp_path, env=settings) as run:
        running = await cancellable.enqueue(Nap(30))
        delayed = await cancellable.enqueue(Nap(30), delay=3.0)
        # Cancelled at once, long before it is due: a loaded machine's slow CLI below
        # cannot let it start first.
        assert await delayed.cancel() == CancelState.REQUESTED
        await _wait_for(tmp_path, "cancellable.start")

        # Exit 3: the job was running, a cancel is requested (docs/cli.md).
        out = await _cli(["cancel", SPEC, running.id], cli_env, tmp_path, code=3)
        began = time.monotonic()
        assert "is running: cancel requested" in out
        with pytest.raises(vaultq.JobCancelled):
            await running.result(timeout=10)
        took = time.monotonic() - began
        print(f"{broker_kind}: running job cancelled {took:.3f} s after `vaultq cancel` returned")
        assert took < CANCEL_LATENCY

        with pytest.raises(vaultq.JobCancelled):
            await delayed.result(timeout=30)

        out = await _cli(["cancel", running.id, "--app", SPEC], cli_env, tmp_path, code=4)
        assert "already finished" in out and "nothing to cancel" in out
        await settled(app)
        dead = await dead_reasons(app)
        assert dead == {running.id: ("cancelled", 1), delayed.id: ("cancelled", 1)}
        assert run.alive()
    assert count(tmp_path, "cancellable.start") == 1
    assert count(tmp_path, "cancellable.end") == 0
    assert f"cancelling running job {running.id}" in run.log()
