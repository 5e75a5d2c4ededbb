"""The test kit (``vaultq.testing``): ``TestWorker`` runs jobs through the real pipeline,
so what protects a job in production protects it under the kit too (policies, the seal,
deadlines), and what was enqueued is read back typed, through the app's keyring."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import pytest

import vaultq
from vaultq.brokers.base import CancelState, EnqueueItem
from vaultq.errors import BadSignature
from vaultq.middleware import JobInfo, Outcome
from vaultq.testing import Ran, TestWorker, run_pending, run_pending_sync

pytestmark = pytest.mark.anyio


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    card_token: vaultq.Secret[str]
    reason: str = "damaged"


class Nap(msgspec.Struct, frozen=True):
    seconds: float


ALICE = vaultq.Principal("user:alice", permissions=frozenset({"orders.refund"}))


def build(name: str) -> tuple[vaultq.App, vaultq.Task[Refund, int], set[str], list[int]]:
    """An app on its own memory store whose refund policy reads a set of allowed
    principals at every evaluation (so a test can revoke a right after enqueue)."""
    app = vaultq.App(name, broker="memory://")
    allowed = {"user:alice"}
    ran: list[int] = []

    def still_allowed(req: vaultq.PolicyRequest) -> bool:
        return req.principal is not None and req.principal.id in allowed

    @app.task(name="refund", policy=still_allowed, queue="payments")
    async def refund(job: Refund) -> int:
        ran.append(job.order_id)
        return job.order_id * 10

    return app, refund, allowed, ran


async def test_enqueued_payloads_are_typed_and_opened_with_the_keyring(unique_name: str) -> None:
    app, refund, _, _ = build(unique_name)
    worker = TestWorker(app)
    handle = await refund.enqueue(Refund(7, vaultq.Secret("tok_7")), principal=ALICE)
    await refund.enqueue(Refund(8, vaultq.Secret("tok_8"), "late"), principal=ALICE, delay=90)

    assert worker.enqueued(refund) == [
        Refund(7, vaultq.Secret("tok_7")),
        Refund(8, vaultq.Secret("tok_8"), "late"),
    ]
    first, second = worker.jobs(refund)
    assert isinstance(first.payload, Refund)  # decoded as the task's type, not a dict
    assert first.payload.card_token.reveal() == "tok_7"
    assert (first.job_id, first.queue, first.task) == (handle.id, "payments", "refund")
    assert first.principal_id == "user:alice" and first.principal == ALICE
    assert first.delay == 0 and not first.unique
    assert second.delay == pytest.approx(90, abs=0.01)
    assert second.not_before > time.time() + 80
    assert [j.job_id for j in worker.jobs()] == [handle.id, second.job_id]

    # Running them does not change what was enqueued; clear() does.
    await worker.run_pending()
    assert len(worker.enqueued(refund)) == 2
    worker.clear()
    assert worker.enqueued(refund) == []
    assert await worker.run_pending() == []  # the delayed job went with the rest


async def test_run_pending_runs_the_pipeline_and_returns_what_ran(unique_name: str) -> None:
    app, refund, _, ran = build(unique_name)
    worker = TestWorker(app)
    handles = [await refund.enqueue(Refund(i, vaultq.Secret("t")), principal=ALICE) for i in (1, 2)]
    done = await worker.run_pending()
    assert done == [
        Ran(job_id=h.id, queue="payments", task="refund", attempt=1, outcome="succeeded")
        for h in handles
    ]
    assert ran == [1, 2]
    # The sealed results are on the broker, read as in production.
    assert [await h.result(timeout=1) for h in handles] == [10, 20]
    assert await worker.run_pending() == []


async def test_a_policy_that_denies_at_run_time_denies_under_the_test_worker(
    unique_name: str,
) -> None:
    """Rights revoked between enqueue and run: the worker's own policy check refuses the
    job (DENIED, dead-lettered, never run), exactly as a real worker would."""
    app, refund, allowed, ran = build(unique_name)
    worker = TestWorker(app)
    handle = await refund.enqueue(Refund(1, vaultq.Secret("t")), principal=ALICE)
    allowed.clear()
    (only,) = await worker.run_pending()
    assert (only.outcome, only.reason) == ("denied", "denied")
    assert ran == []
    with pytest.raises(vaultq.JobDenied):
        await handle.result(timeout=1)
    broker = await app.broker()
    (letter,) = await broker.dead_letters("payments")
    assert (letter.job_id, letter.reason) == (handle.id, "denied")
    # The enqueue-time check runs too: nothing is enqueued for a principal it refuses.
    with pytest.raises(vaultq.AuthorizationDenied):
        await refund.enqueue(Refund(2, vaultq.Secret("t")), principal=ALICE)


async def test_a_tampered_envelope_is_rejected_and_never_runs(unique_name: str) -> None:
    app, refund, _, ran = build(unique_name)
    worker = TestWorker(app)
    await refund.enqueue(Refund(1, vaultq.Secret("t")), principal=ALICE)
    (job,) = worker.jobs(refund)
    (record,) = worker.store.recorded(app.name)
    worker.clear()
    # One flipped bit in the ciphertext, written under the genuine job id.
    tampered = bytearray(record.envelope)
    tampered[-40] ^= 0x01
    broker = await app.broker()
    await broker.enqueue([EnqueueItem("payments", job.job_id, bytes(tampered))])

    (only,) = await worker.run_pending()
    assert only.outcome == "rejected" and only.reason.startswith("rejected:")
    assert ran == []
    # Reading it back through the keyring fails the same check.
    with pytest.raises(BadSignature):
        worker.jobs(refund)


async def test_deadlines_apply_under_the_test_worker(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")
    started: list[float] = []

    @app.task(name="nap", timeout=0.3)
    async def nap(job: Nap) -> None:
        started.append(time.monotonic())
        await anyio.sleep(job.seconds)

    worker = TestWorker(app)
    handle = await nap.enqueue(Nap(30))
    begin = time.monotonic()
    (only,) = await worker.run_pending()
    assert (only.outcome, only.reason) == ("timed_out", "timed_out")
    assert time.monotonic() - begin < 5  # cancelled at its deadline, not after 30 s
    with pytest.raises(vaultq.JobTimedOut):
        await handle.result(timeout=1)

    # The expiry deadline too: a job that could not start in time never runs.
    late = await nap.enqueue(Nap(0))
    worker.advance(nap.options.expires + 3600)
    (expired,) = await worker.run_pending()
    assert (expired.job_id, expired.outcome) == (late.id, "expired")
    assert len(started) == 1


async def test_delayed_jobs_and_retries_run_by_moving_the_clock(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")
    attempts: list[int] = []

    @app.task(name="flaky", retries=2, backoff=600)
    async def flaky(job: Nap) -> str:
        attempts.append(vaultq.current_job().attempt)
        if len(attempts) < 3:
            raise ConnectionError("upstream down")
        return "ok"

    worker = TestWorker(app)
    handle = await flaky.enqueue(Nap(0), delay=3600)
    assert await worker.run_pending() == []  # not due: nothing runs, nothing sleeps
    begin = time.monotonic()
    done = await worker.run_pending(delayed=True)
    assert [(r.attempt, r.outcome) for r in done] == [(1, "retry"), (2, "retry"), (3, "succeeded")]
    assert time.monotonic() - begin < 5
    assert await handle.result(timeout=1) == "ok"


async def test_a_task_that_enqueues_itself_forever_is_stopped(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")

    @app.task(name="again")
    async def again(job: Nap) -> None:
        await again.enqueue(job)

    await again.enqueue(Nap(0))
    with pytest.raises(vaultq.ConfigurationError, match="enqueue itself"):
        await run_pending(app, limit=20)


async def test_enqueued_needs_the_memory_broker_but_running_does_not(
    unique_name: str, tmp_path: Path
) -> None:
    app = vaultq.App(
        unique_name, broker=f"sqlite:///{tmp_path}/b.db", keyring=vaultq.Keyring.generate()
    )

    @app.task(name="nap")
    async def nap(job: Nap) -> float:
        return job.seconds

    handle = await nap.enqueue(Nap(1.5))
    worker = TestWorker(app)
    assert [r.outcome for r in await worker.run_pending()] == ["succeeded"]
    assert await handle.result(timeout=1) == 1.5
    with pytest.raises(vaultq.ConfigurationError, match="memory://"):
        worker.enqueued(nap)


def test_sync_tests_use_the_sync_forms(unique_name: str) -> None:
    app, refund, _, ran = build(unique_name)
    handle = refund.enqueue_sync(Refund(3, vaultq.Secret("t")), principal=ALICE)
    (only,) = run_pending_sync(app)
    assert (only.job_id, only.outcome) == (handle.id, "succeeded")
    assert handle.result_sync(timeout=1) == 30 and ran == [3]


async def test_swap_broker_moves_a_used_app_to_memory(unique_name: str, tmp_path: Path) -> None:
    app = vaultq.App(
        unique_name, broker=f"sqlite:///{tmp_path}/b.db", keyring=vaultq.Keyring.generate()
    )

    @app.task(name="nap")
    async def nap(job: Nap) -> float:
        return job.seconds

    await nap.enqueue(Nap(1))  # the app is in use: set_broker() would refuse now
    previous = app.swap_broker("memory://")
    worker = TestWorker(app)
    await nap.enqueue(Nap(2))
    assert worker.enqueued(nap) == [Nap(2)]
    assert [r.outcome for r in await worker.run_pending()] == ["succeeded"]
    app.swap_broker(previous)
    broker = await app.broker()
    assert (await broker.stats("default")).ready == 1  # the sqlite job is still there


class Recorder(vaultq.Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def attempt_started(self, job: JobInfo) -> None:
        self.events.append(("started", job.task, ""))

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        self.events.append(("settled", job.task, str(outcome)))

    def rejected(self, job: JobInfo, reason: str) -> None:
        self.events.append(("rejected", job.task, reason))


async def test_the_apps_middleware_sees_the_jobs_as_in_a_worker(unique_name: str) -> None:
    app, refund, allowed, _ = build(unique_name)
    recorder = Recorder()
    app.add_middleware(recorder)
    worker = TestWorker(app)
    await refund.enqueue(Refund(1, vaultq.Secret("t")), principal=ALICE)
    await run_pending(app)
    await refund.enqueue(Refund(2, vaultq.Secret("t")), principal=ALICE)
    allowed.clear()
    await worker.run_pending()
    broker = await app.broker()
    await broker.enqueue([EnqueueItem("payments", "junk-1", b"not an envelope")])
    await worker.run_pending()
    assert recorder.events == [
        ("started", "refund", ""),
        ("settled", "refund", "succeeded"),
        ("settled", "refund", "denied"),
        ("rejected", "", "unauthenticated"),
    ]


async def test_isolated_tasks_run_in_child_processes_and_are_killed_at_their_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    import testkit_isolated_app as iso

    worker = TestWorker(iso.app)
    worker.clear()
    mine = await iso.pid.enqueue(iso.Empty())
    busy = await iso.spin.enqueue(iso.Empty())
    begin = time.monotonic()
    done = await worker.run_pending()
    assert [(r.task, r.outcome) for r in done] == [("pid", "succeeded"), ("spin", "timed_out")]
    assert time.monotonic() - begin < 20
    child = await mine.result(timeout=1)
    assert child != os.getpid()
    with pytest.raises(vaultq.JobTimedOut):
        await busy.result(timeout=1)


async def test_the_sync_form_inside_an_event_loop_says_to_await(unique_name: str) -> None:
    app, _, _, _ = build(unique_name)
    with pytest.raises(vaultq.ConfigurationError, match="await worker.run_pending"):
        TestWorker(app).run_pending_sync()


SNIPPET = """
import msgspec
import vaultq
from vaultq.testing import TestWorker

app = vaultq.App("typed", broker="memory://")


class Refund(msgspec.Struct, frozen=True):
    order_id: int


class Other(msgspec.Struct, frozen=True):
    n: int


@app.task(name="refund")
async def refund(job: Refund) -> int:
    return job.order_id


worker = TestWorker(app)
reveal_type(worker.enqueued(refund))
reveal_type(worker.jobs(refund)[0].payload)
assert worker.enqueued(refund) == [Other(1)]
"""


def test_enqueued_is_typed_for_mypy_too(tmp_path: Path) -> None:
    """``enqueued(task)`` is ``list[Payload]`` to a type checker: comparing it with a list
    of another payload type is an error under ``mypy --strict`` (strict equality)."""
    (tmp_path / "snippet.py").write_text(SNIPPET)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
        + ["snippet.py"],
        cwd=tmp_path,
        # The checkout's sources: mypy does not follow an editable install's import hook.
        env={**os.environ, "MYPYPATH": str(Path(__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert re.search(r'Revealed type is "(builtins\.)?list\[snippet\.Refund\]"', out), out
    assert 'Revealed type is "snippet.Refund"' in out, out
    assert "Non-overlapping equality check" in out and "list[Other]" in out, out


async def test_cancel_by_id_stops_a_running_job_and_never_starts_a_queued_one(
    unique_name: str,
) -> None:
    app = vaultq.App(unique_name, broker="memory://")
    started = anyio.Event()

    @app.task(name="nap", timeout=60)
    async def nap(job: Nap) -> None:
        started.set()
        await anyio.sleep(job.seconds)

    worker = TestWorker(app)
    queued = await nap.enqueue(Nap(0))
    assert await queued.cancel() == CancelState.REQUESTED
    running = await nap.enqueue(Nap(30))
    done: list[Ran] = []

    async def run() -> None:
        done.extend(await worker.run_pending())

    begin = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        await running.cancel()
    assert [(r.job_id, r.outcome) for r in done] == [
        (queued.id, "cancelled"),
        (running.id, "cancelled"),
    ]
    assert time.monotonic() - begin < 5
    with pytest.raises(vaultq.JobCancelled):
        await running.result(timeout=1)
