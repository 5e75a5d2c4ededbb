"""Typed workflows (issue 16, first slice): chains built from ``task.s(...).then(...)``,
checked by mypy and by the builder, sealed as a producer-signed plan, moved forward by
workers that may enqueue only what the plan names; real worker processes on Redis and
SQLite (``docs/workflows.md``)."""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flow_app import Order, Priced, Text, build
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.envelope import FlowStep, JobMeta, open_job, seal_job
from vaultq.errors import KeyringError, TaskDefinitionError, WorkflowRefused
from vaultq.jobs import JobStatus
from vaultq.policy import AUDIT_LOGGER
from vaultq.runtime import continuations
from vaultq.testing import TestWorker
from vaultq.workflows import WorkflowFailed

pytestmark = pytest.mark.anyio

GUARDED = vaultq.Principal("user:1", permissions={"flow.guarded"})
PLAIN = vaultq.Principal("user:2")


def _app(name: str, keyring: vaultq.Keyring | None = None) -> vaultq.App:
    return vaultq.App("flowtest", broker=f"memory://{name}", keyring=keyring)


async def test_a_three_step_chain_feeds_each_result_to_the_next_step(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    chain = t.parse.s(Text("pen:3")).then(t.price).then(t.receipt)
    assert [task.name for task in chain.tasks] == ["parse", "price", "receipt"]
    handle = await chain.enqueue(principal=PLAIN)
    ran = await TestWorker(app).run_pending()
    assert [r.task for r in ran] == ["parse", "price", "receipt"]
    assert await handle.result(timeout=5) == "pen=750"
    steps = await handle.steps()
    assert [s.status for s in steps] == [JobStatus.SUCCEEDED] * 3
    assert [s.job_id for s in steps] == [f"{handle.id}.{i}" for i in range(3)]
    # Each step ran as the plan's principal.
    outcomes = [await h.outcome() for h in handle.handles]
    assert {o.principal_id for o in outcomes if o is not None} == {"user:2"}


async def test_the_same_workflow_id_enqueued_twice_runs_once(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    chain = t.parse.s(Text("pen:1")).then(t.price)
    await chain.enqueue(workflow_id="wf-once")
    handle = await chain.enqueue(workflow_id="wf-once")
    ran = await TestWorker(app).run_pending()
    assert [r.task for r in ran] == ["parse", "price"]
    assert await handle.result(timeout=5) == Priced("pen", 250)


async def test_a_step_denied_by_its_policy_stops_the_chain_there(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    chain = t.parse.s(Text("ink:2")).then(t.price).then(t.guarded)
    handle = await chain.enqueue(principal=PLAIN)  # the first step's policy allows PLAIN
    ran = await TestWorker(app).run_pending()
    assert [(r.task, r.outcome) for r in ran] == [
        ("parse", "succeeded"),
        ("price", "succeeded"),
        ("guarded", "denied"),
    ]
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=5)
    assert (caught.value.step, caught.value.status) == (2, "denied")
    assert [s.status for s in await handle.steps()][2] == JobStatus.DENIED
    # The same chain for a principal with the permission runs to the end.
    ok = await chain.enqueue(principal=GUARDED)
    await TestWorker(app).run_pending()
    assert await ok.result(timeout=5) == "guarded ink"


async def test_a_failed_step_stops_the_chain_and_later_steps_never_run(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    handle = await t.parse.s(Text("cup:1")).then(t.explode).then(t.receipt).enqueue()
    ran = await TestWorker(app).run_pending()
    assert [(r.task, r.outcome) for r in ran] == [("parse", "succeeded"), ("explode", "failed")]
    with pytest.raises(WorkflowFailed, match="step 1 .*RuntimeError: no price for cup") as caught:
        await handle.result(timeout=5)
    assert caught.value.step == 1
    statuses = [s.status for s in await handle.steps()]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING]


def test_the_builder_refuses_a_step_whose_payload_is_not_the_previous_result(
    unique_name: str,
) -> None:
    app = _app(unique_name)
    t = build(app)
    with pytest.raises(
        TaskDefinitionError, match="'receipt' takes a Priced payload but 'parse' returns Order"
    ):
        t.parse.s(Text("a:1")).then(t.receipt)
    with pytest.raises(vaultq.PayloadError):
        t.parse.s(Order("a", 1))


def test_mypy_rejects_a_mistyped_chain_and_accepts_a_typed_one(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            import msgspec
            import vaultq

            app = vaultq.App("snippet", broker="memory://")

            class A(msgspec.Struct):
                x: int

            class B(msgspec.Struct):
                y: str

            @app.task
            def a_to_b(p: A) -> B:
                return B(str(p.x))

            @app.task
            def b_to_int(p: B) -> int:
                return len(p.y)

            async def main() -> None:
                good = a_to_b.s(A(1)).then(b_to_int)
                handle = await good.enqueue()
                reveal_type(await handle.result())
                a_to_b.s(A(1)).then(a_to_b)  # B is not A
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if "snippet.py" in line]
    assert any('note: Revealed type is "int"' in line for line in lines), done.stdout
    errors = [line for line in lines if ": error:" in line]
    # Exactly one error: the then() whose task takes A after a step that returns B.
    assert len(errors) == 1, done.stdout
    assert 'incompatible type "Task[A, B]"; expected "Task[B, B]"' in errors[0]


async def test_a_verify_only_worker_enqueues_only_the_step_the_producer_signed(
    unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = vaultq.Keyring.generate(signing="ed25519")
    producer = _app(unique_name, keys)
    worker_app = _app(unique_name, keys.public())
    pt, wt = build(producer), build(worker_app)
    chain = pt.parse.s(Text("pen:2")).then(pt.price).then(pt.receipt)
    mine = await chain.enqueue(principal=PLAIN, workflow_id="wf-mine")
    other = await chain.enqueue(principal=GUARDED, workflow_id="wf-other")
    broker = await worker_app.broker()
    step0 = _opened(worker_app, await _envelope(broker, "wf-mine.0"))
    other0 = _opened(worker_app, await _envelope(broker, "wf-other.0"))
    flow, other_flow = step0.body.meta.flow, other0.body.meta.flow
    assert flow is not None and other_flow is not None and other_flow.next is not None

    # The worker's keyring cannot seal a job of its choosing at all...
    with pytest.raises(KeyringError):
        seal_job(
            worker_app.keyring,
            job_id="wf-mine.1",
            app="flowtest",
            task="receipt",
            queue="default",
            payload=b"null",
            principal=GUARDED,
            meta=JobMeta(),
            issued_at=time.time(),
            not_before=time.time(),
            expires_at=time.time() + 60,
        )
    # ...and the continuation path forwards nothing the plan does not name: not another
    # workflow's producer-signed step (another principal), not one an untrusted key sealed.
    forged = FlowStep("wf-mine", 0, 3, next=other_flow.next)
    rogue = vaultq.Keyring.generate(signing="ed25519")
    untrusted = seal_job(
        rogue,
        job_id="wf-mine.1",
        app="flowtest",
        task="price",
        queue="default",
        payload=b"null",
        principal=GUARDED,
        meta=JobMeta(flow=FlowStep("wf-mine", 1, 3, input_task="parse", input_queue="default")),
        issued_at=time.time(),
        not_before=time.time(),
        expires_at=time.time() + 60,
    )
    with caplog.at_level(logging.WARNING, logger=AUDIT_LOGGER):
        with pytest.raises(WorkflowRefused, match="not step 1 of this workflow"):
            await continuations.forward(worker_app, step0, forged)
        with pytest.raises(WorkflowRefused, match="does not open"):
            await continuations.forward(
                worker_app, step0, FlowStep("wf-mine", 0, 3, next=untrusted)
            )
    refused = [r for r in caplog.records if "continuation refused" in r.getMessage()]
    assert len(refused) == 2
    assert await broker.get_result("default", "wf-mine.1") is None

    # A producer-signed step written out of turn (before its feeding step succeeded)
    # does not run: it waits for that step's result, which only its own workflow feeds.
    other1 = _opened(worker_app, other_flow.next)
    assert other1.body.meta.flow is not None
    fed = await continuations.feed(worker_app, other1, other1.body.meta.flow)
    assert isinstance(fed, continuations.Waiting)
    # The real plan moves both workflows forward on the verify-only worker.
    assert wt.parse is not None
    await TestWorker(worker_app).run_pending(delayed=True)
    assert await mine.result(timeout=10) == "pen=500"
    assert await other.result(timeout=10) == "pen=500"


async def test_a_step_written_twice_around_a_crash_runs_once(unique_name: str) -> None:
    """The worker writes step k+1 (enqueue unless it exists) before settling step k: a
    crash in between re-runs step k, whose second write is a no-op."""
    app = _app(unique_name)
    t = build(app)
    handle = await t.parse.s(Text("mug:4")).then(t.price).enqueue(workflow_id="wf-crash")
    broker = await app.broker()
    step0 = _opened(app, await _envelope(broker, "wf-crash.0"))
    flow = step0.body.meta.flow
    assert flow is not None
    assert await continuations.forward(app, step0, flow)  # the write before a "crash"
    ran = await TestWorker(app).run_pending(delayed=True)  # step 0 re-runs, writes again
    assert sorted(r.task for r in ran if r.outcome == "succeeded") == ["parse", "price"]
    assert await handle.result(timeout=5) == Priced("mug", 1000)


async def _envelope(broker: object, job_id: str) -> bytes:
    for entry in await broker.queued("default"):  # type: ignore[attr-defined]
        if entry.job_id == job_id:
            return bytes(entry.envelope)
    raise AssertionError(f"{job_id} is not queued")


def _opened(app: vaultq.App, envelope: bytes) -> vaultq.envelope.OpenedJob:
    from vaultq.envelope import peek_header

    header = peek_header(envelope)
    return open_job(
        envelope,
        app.keyring,
        app=app.name,
        tasks=app.tasks,
        now=time.time(),
        queue=header.queue,
        job_id=header.job_id,
        skew=5,
    )


@pytest.mark.other_processes
def test_a_chain_runs_on_real_worker_processes(
    broker_url: str, unique_name: str, tmp_path: Path
) -> None:
    keys = vaultq.Keyring.generate(signing="ed25519")
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": keys.public().to_json(),
            "FLOW_APP": unique_name,
        }
    )
    app = vaultq.App(unique_name, broker=broker_url, keyring=keys)
    t = build(app)
    try:
        good = t.parse.s(Text("pen:3")).then(t.price).then(t.receipt).enqueue_sync(principal=PLAIN)
        denied = (
            t.parse.s(Text("pen:3")).then(t.price).then(t.guarded).enqueue_sync(principal=PLAIN)
        )
        workers = [start_worker_process("flow_app", env) for _ in range(2)]
        try:
            assert good.result_sync(timeout=60) == "pen=750"
            with pytest.raises(WorkflowFailed) as caught:
                denied.result_sync(timeout=60)
            assert (caught.value.step, caught.value.status) == (2, "denied")
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.other_processes
def test_kill_9_workers_mid_chain_loses_no_step_and_every_chain_finishes(
    broker_url: str, unique_name: str
) -> None:
    """Workers killed with SIGKILL at random while 20 chains run (a step may die after
    writing the next step and before settling): every chain ends with its right result,
    each step job id holds one outcome, and no step is left behind."""
    keys = vaultq.Keyring.generate(signing="ed25519")
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": keys.public().to_json(),
            "FLOW_APP": unique_name,
            "FLOW_SLEEP": "0.3",
        }
    )
    app = vaultq.App(unique_name, broker=broker_url, keyring=keys)
    t = build(app)
    rng = random.Random(16)  # noqa: S311  # nosec B311 -- a test's fault schedule
    try:
        handles = [
            t.parse.s(Text(f"s{i}:{i + 1}")).then(t.price).then(t.receipt).enqueue_sync()
            for i in range(20)
        ]
        workers = [start_worker_process("flow_app", env, "--lease", "2") for _ in range(3)]
        try:
            wait_until_serving(workers)
            for _ in range(8):
                time.sleep(rng.uniform(0.2, 0.8))
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start_worker_process("flow_app", env, "--lease", "2")
            for i, handle in enumerate(handles):
                assert handle.result_sync(timeout=120) == f"s{i}={(i + 1) * 250}"
                steps = handle.steps_sync()
                assert [s.status for s in steps] == [JobStatus.SUCCEEDED] * 3
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)
    finally:
        app.close()
