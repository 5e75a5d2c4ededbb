"""Deadlines: per-attempt timeouts (async and sync), overrides, remaining time, expiry.

In-process workers on both brokers for the precise checks, and real worker processes
(``vaultq worker e2e_app_deadlines:app``) for the end-to-end claims. Every timing is
measured from the worker's own record (``started_at``/``finished_at`` of the outcome) and
printed, so a slow CI run shows how far off it was.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from e2e_app_deadlines import Budget, Nap, build, count
from e2e_app_isolated import build_isolated
from support.brokers import url_for
from support.e2e_workers import dead_reasons, e2e_worker, settled
from support.workers import running_worker

import vaultq
from vaultq.envelope import ResultBody

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90), pytest.mark.other_processes]

SPEC = "e2e_app_deadlines:app"
MARGIN = 0.25
"""Seconds an attempt may overrun its deadline (cancel delivery, thread hand-off)."""
KEYS = vaultq.Keyring.generate()


def _task(app: vaultq.App, name: str) -> vaultq.Task[Nap, int]:
    task = app.get_task(name)
    assert task is not None
    return task


def _overrun(outcome: ResultBody | None, timeout: float, what: str) -> float:
    assert outcome is not None and outcome.started_at and outcome.finished_at
    ran = outcome.finished_at - outcome.started_at
    print(f"{what}: attempt ran {ran:.3f} s, timeout {timeout} s, overrun {ran - timeout:+.3f} s")
    return ran - timeout


async def test_async_timeout_cancels_the_attempt_in_time(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    app = build(unique_name, tmp_path, broker=url_for(broker_kind, tmp_path, request), keyring=KEYS)
    async with running_worker(app):
        handle = await _task(app, "nap").enqueue(Nap(30))
        with pytest.raises(vaultq.JobTimedOut):
            await handle.result(timeout=10)
        outcome = await handle.outcome()
        assert 0 <= _overrun(outcome, 0.5, f"{broker_kind} async") < MARGIN
        assert await handle.status() == vaultq.JobStatus.TIMED_OUT
        # retry_on_timeout defaults to False: one attempt, dead-lettered as timed_out.
        assert outcome is not None and outcome.attempts == 1
        assert count(tmp_path, "nap.start") == 1 and count(tmp_path, "nap.end") == 0
        await settled(app)
        assert (await dead_reasons(app))[handle.id] == ("timed_out", 1)

        # Opted in: each timed-out attempt is retried while attempts remain.
        retried = await _task(app, "nap_retried").enqueue(Nap(30))
        with pytest.raises(vaultq.JobTimedOut):
            await retried.result(timeout=10)
        retried_outcome = await retried.outcome()
        assert retried_outcome is not None and retried_outcome.attempts == 2
        assert count(tmp_path, "nap_retried.start") == 2

        # The worker keeps going.
        assert await (await _task(app, "quick").enqueue(Nap(n=7))).result(timeout=10) == 7


async def test_sync_timeout_abandons_the_thread_and_keeps_serving(
    broker_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build(unique_name, tmp_path, broker=url_for(broker_kind, tmp_path, request), keyring=KEYS)
    release = threading.Event()

    @app.task(name="stuck", timeout=0.5)
    def stuck(job: Nap) -> int:
        # A blocking call (time.sleep, a socket without timeout) that ignores cancellation;
        # the event only lets the test end the thread afterwards.
        release.wait(job.seconds)
        return job.n

    caplog.set_level(logging.INFO, logger="vaultq.worker")
    try:
        async with running_worker(app, concurrency=2):
            handle = await stuck.enqueue(Nap(30))
            with pytest.raises(vaultq.JobTimedOut):
                await handle.result(timeout=10)
            assert 0 <= _overrun(await handle.outcome(), 0.5, f"{broker_kind} sync") < MARGIN
            abandoned = [r for r in caplog.records if "its thread keeps running" in r.message]
            assert len(abandoned) == 1 and "abandoned threads: 1 of at most" in abandoned[0].message

            # Both slots are free again: sync and async jobs run beside the stuck thread.
            quick_sync = await _task(app, "quick_sync").enqueue(Nap(n=1))
            quick = await _task(app, "quick").enqueue(Nap(n=2))
            assert await quick_sync.result(timeout=10) == 1
            assert await quick.result(timeout=10) == 2
    finally:
        release.set()
    with anyio.fail_after(5):
        while not any("has finished" in r.message for r in caplog.records):
            await anyio.sleep(0.05)


async def test_abandoned_thread_limit_hands_sync_jobs_back(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(unique_name, tmp_path, broker=f"sqlite:///{tmp_path}/vaultq.db", keyring=KEYS)
    release = threading.Event()

    @app.task(name="stuck", timeout=0.3)
    def stuck(job: Nap) -> int:
        release.wait(job.seconds)
        return job.n

    caplog.set_level(logging.INFO, logger="vaultq.worker")
    try:
        async with running_worker(app, max_abandoned_threads=1):
            with pytest.raises(vaultq.JobTimedOut):
                await (await stuck.enqueue(Nap(30))).result(timeout=10)
            # One abandoned thread is the limit: the next sync job is handed back unrun,
            # while async jobs still run.
            waiting = await _task(app, "quick_sync").enqueue(Nap(n=3))
            assert await (await _task(app, "quick").enqueue(Nap(n=4))).result(timeout=10) == 4
            with anyio.fail_after(5):
                while not any("not starting sync job" in r.message for r in caplog.records):
                    await anyio.sleep(0.05)
            assert await waiting.status() == vaultq.JobStatus.PENDING
            assert (await (await app.broker()).stats("default")).delayed == 1

            # The stuck thread ends: sync work is taken again (after the hand-back delay).
            release.set()
            assert await waiting.result(timeout=15) == 3
            assert any("has finished" in r.message for r in caplog.records)
    finally:
        release.set()


async def test_enqueue_timeout_override_is_capped_and_visible_to_the_task(
    tmp_path: Path, unique_name: str
) -> None:
    app = build(unique_name, tmp_path, broker=f"sqlite:///{tmp_path}/vaultq.db", keyring=KEYS)
    budget = app.get_task("budget")  # timeout=1.0, max_timeout=3.0
    nap = _task(app, "nap")  # timeout=0.5, no max_timeout: overrides may only lower it
    assert budget is not None
    for bad in (3.5, 0, -1):
        with pytest.raises(vaultq.ConfigurationError, match="max_timeout"):
            await budget.enqueue(Nap(), timeout=bad)
    with pytest.raises(vaultq.ConfigurationError, match="max_timeout"):
        await nap.enqueue(Nap(), timeout=0.6)
    assert (await (await app.broker()).stats("default")).ready == 0  # nothing enqueued

    async with running_worker(app):
        default = await (await budget.enqueue(Nap())).result(timeout=10)
        raised_handle = await budget.enqueue(Nap(), timeout=2.5)
        raised = await raised_handle.result(timeout=10)
        assert isinstance(default, Budget) and isinstance(raised, Budget)
        print(
            f"remaining at start: {default.remaining:.3f} s of 1.0, {raised.remaining:.3f} of 2.5"
        )
        assert 0.8 < default.remaining <= 1.0
        assert 2.3 < raised.remaining <= 2.5
        # ``deadline`` is wall-clock Unix time: the attempt's start plus its timeout.
        outcome = await raised_handle.outcome()
        assert outcome is not None and outcome.started_at is not None
        assert abs(raised.deadline - (outcome.started_at + 2.5)) < 0.05

        # A lower per-enqueue timeout cuts the attempt shorter than the task's own.
        lowered = await nap.enqueue(Nap(30), timeout=0.2)
        with pytest.raises(vaultq.JobTimedOut):
            await lowered.result(timeout=10)
        assert 0 <= _overrun(await lowered.outcome(), 0.2, "lowered") < MARGIN


def test_current_job_outside_a_job_says_what_to_do() -> None:
    with pytest.raises(vaultq.ConfigurationError, match="outside a running job"):
        vaultq.current_job()


async def test_expired_job_is_never_run(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    # short_lived: expires=0.5 s after its not-before time; clock skew tolerance 0.2 s.
    app = build(
        unique_name,
        tmp_path,
        broker=url_for(broker_kind, tmp_path, request),
        keyring=KEYS,
        clock_skew=0.2,
    )
    short_lived = _task(app, "short_lived")
    late = await short_lived.enqueue(Nap(n=1))
    await anyio.sleep(1.0)  # no worker yet: the job's start window passes
    async with running_worker(app):
        with pytest.raises(vaultq.JobExpired):
            await late.result(timeout=10)
        assert await late.status() == vaultq.JobStatus.EXPIRED
        # One started in time runs normally.
        assert await (await short_lived.enqueue(Nap(n=2))).result(timeout=10) == 2
        await settled(app)
        assert (await dead_reasons(app))[late.id] == ("expired", 1)
    assert count(tmp_path, "short_lived.start") == 1


async def test_worker_process_enforces_deadlines(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = build(unique_name, tmp_path, broker=url, keyring=keys)
    env = {"E2E_APP": unique_name, "E2E_STATE": str(tmp_path)}
    with e2e_worker(SPEC, url=url, keyring=keys, logdir=tmp_path, env=env) as run:
        nap = await _task(app, "nap").enqueue(Nap(30))
        block = await _task(app, "block").enqueue(Nap(30))  # time.sleep(30) in a thread
        retried = await _task(app, "nap_retried").enqueue(Nap(30))
        for handle in (nap, block, retried):
            with pytest.raises(vaultq.JobTimedOut):
                await handle.result(timeout=20)
        assert 0 <= _overrun(await nap.outcome(), 0.5, f"{broker_kind} worker async") < MARGIN
        assert 0 <= _overrun(await block.outcome(), 0.5, f"{broker_kind} worker sync") < MARGIN
        retried_outcome = await retried.outcome()
        assert retried_outcome is not None and retried_outcome.attempts == 2
        assert count(tmp_path, "nap.start") == 1 and count(tmp_path, "block.start") == 1
        assert count(tmp_path, "nap.end") == count(tmp_path, "block.end") == 0

        # The worker still serves sync and async jobs while time.sleep(30) goes on.
        assert await (await _task(app, "quick_sync").enqueue(Nap(n=5))).result(timeout=10) == 5
        assert await (await _task(app, "quick").enqueue(Nap(n=6))).result(timeout=10) == 6
        await settled(app)
        assert run.alive()
        # An abandoned thread does not hold the process up at exit.
        (proc,) = run.procs
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        print(f"worker exited {time.monotonic() - began:.2f} s after SIGTERM")
        assert time.monotonic() - began < 5
    assert "its thread keeps running" in run.log()


def test_task_options_are_documented_defaults() -> None:
    options = vaultq.TaskOptions()
    assert options.retry_on_timeout is False
    assert options.timeout_ceiling == options.timeout
    with pytest.raises(vaultq.TaskDefinitionError, match="max_timeout"):
        vaultq.TaskOptions(timeout=5, max_timeout=1).validate("t")
    assert msgspec.structs.replace(options, max_timeout=600.0).timeout_ceiling == 600.0


def _process_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has stopped running


async def test_worker_process_kills_an_isolated_busy_loop(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = build_isolated(unique_name, tmp_path, broker=url, keyring=keys)
    env = {"E2E_APP": unique_name, "E2E_STATE": str(tmp_path)}
    with e2e_worker("e2e_app_isolated:app", url=url, keyring=keys, logdir=tmp_path, env=env) as run:
        (proc,) = run.procs
        first = await (await _task(app, "child_pid").enqueue(Nap())).result(timeout=60)
        assert first != proc.pid

        spin = await _task(app, "spin").enqueue(Nap())  # while True: pass, timeout=1
        with pytest.raises(vaultq.JobTimedOut):
            await spin.result(timeout=20)
        # SIGTERM at the deadline ends a busy loop at once (SIGKILL only after a grace).
        assert 0 <= _overrun(await spin.outcome(), 1.0, f"{broker_kind} isolated busy loop") < 1.0
        spinner = int((tmp_path / "spin.pid").read_text(encoding="utf-8"))
        assert spinner != proc.pid
        with anyio.fail_after(5):
            while _process_alive(spinner):
                await anyio.sleep(0.05)
        outcome = await spin.outcome()
        assert outcome is not None and outcome.attempts == 1  # retry_on_timeout is off

        # The worker continues, and the next isolated job runs in a fresh child.
        after = await (await _task(app, "child_pid").enqueue(Nap())).result(timeout=60)
        assert after not in (spinner, proc.pid)
        assert await (await _task(app, "quick").enqueue(Nap(n=8))).result(timeout=10) == 8
        assert run.alive()


DOC = Path(__file__).resolve().parent.parent / "docs" / "deadlines.md"


def test_doc_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks marked ``<!-- test: deadlines -->`` in docs/deadlines.md run as written."""
    monkeypatch.chdir(tmp_path)  # the examples use the embedded broker in the cwd
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- test: deadlines -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    namespace: dict[str, Any] = {"__name__": "docs_deadlines"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
