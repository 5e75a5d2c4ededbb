"""``depends_on=`` for plain jobs (issue 16): the dependent is sealed by the producer with
the jobs it waits for, runs only after each succeeded, ends ``cancelled``
(``vaultq.DependencyFailed``) without running when one did not; verify-only workers
release it but cannot alter it; real worker processes killed with SIGKILL lose and
duplicate nothing (Redis, SQLite)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from depends_app import N, build
from flow_app import Order, Text
from flow_app import build as build_flow
from support.workers import start_worker_process, wait_until_serving, worker_env

import vaultq
from vaultq.envelope import JobMeta, peek_header, seal_job
from vaultq.errors import ConfigurationError, KeyringError
from vaultq.jobs import JobStatus
from vaultq.runtime.dependencies import DEPENDENCY_FAILED
from vaultq.testing import TestWorker

pytestmark = pytest.mark.anyio


def _app(name: str, keyring: vaultq.Keyring | None = None) -> vaultq.App:
    return vaultq.App("deptest", broker=f"memory://{name}", keyring=keyring)


async def test_a_dependent_runs_after_every_dependency_succeeded(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    first, second = await t.work.enqueue(N(1)), await t.work.enqueue(N(2))
    # Written before its dependencies in the queue: it is fetched first and handed back.
    dependent = await t.after.enqueue(N(3), depends_on=[first, second])
    broker = await app.broker()
    entries = await broker.queued("default")
    assert [e.job_id for e in entries] == [first.id, second.id, dependent.id]
    ran = await TestWorker(app).run_pending(delayed=True)
    assert [r.task for r in ran if r.outcome == "succeeded"] == ["work", "work", "after"]
    assert await dependent.result(timeout=5) == "after 3"


async def test_a_dependent_waiting_is_handed_back_not_failed(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    first = await t.work.enqueue(N(1), delay=60)  # not due yet
    dependent = await t.after.enqueue(N(2), depends_on=[first])
    held = await TestWorker(app).run_pending()  # fetched, held, handed back
    assert [(r.task, r.outcome) for r in held] == [("after", "released")]
    assert await dependent.status() is JobStatus.PENDING
    ran = await TestWorker(app).run_pending(delayed=True)
    assert [r.task for r in ran if r.outcome == "succeeded"] == ["work", "after"]
    outcome = await dependent.outcome()
    assert outcome is not None and outcome.attempts == 1  # holding was no attempt


@pytest.mark.parametrize("failing", ["failed", "cancelled"])
async def test_a_dependency_that_did_not_succeed_cancels_the_dependent(
    unique_name: str, failing: str
) -> None:
    app = _app(unique_name)
    t = build(app)
    ok = await t.work.enqueue(N(1))
    if failing == "failed":
        bad = await t.boom.enqueue(N(2))
    else:
        bad = await t.work.enqueue(N(2), delay=60)
        await bad.cancel()
    dependent = await t.after.enqueue(N(3), depends_on=[ok, bad])
    ran = await TestWorker(app).run_pending(delayed=True)
    assert "after" not in [r.task for r in ran if r.outcome == "succeeded"]
    outcome = await dependent.outcome()
    assert outcome is not None
    assert (outcome.status, outcome.error_type) == ("cancelled", DEPENDENCY_FAILED)
    assert outcome.started_at is None  # it never ran
    assert outcome.error == f"dependency {bad.id} ({bad.task_name}) ended {failing}"
    with pytest.raises(vaultq.DependencyFailed) as caught:
        await dependent.result(timeout=1)
    assert isinstance(caught.value, vaultq.JobCancelled)
    assert caught.value.detail == outcome.error
    (letter,) = [
        d for d in await (await app.broker()).dead_letters("default") if d.job_id == dependent.id
    ]
    assert letter.reason == "dependency_failed"


async def test_a_workflow_dependency_needs_every_step(unique_name: str) -> None:
    app = _app(unique_name)
    flow = build_flow(app)
    t = build(app)
    good = await flow.parse.s(Text("pen:3")).then(flow.price).enqueue()
    bad = await flow.parse.s(Text("cup:1")).then(flow.explode).then(flow.receipt).enqueue()
    after_good = await t.after.enqueue(N(1), depends_on=[good])
    after_bad = await t.after.enqueue(N(2), depends_on=[bad])
    await TestWorker(app).run_pending(delayed=True)
    assert await after_good.result(timeout=5) == "after 1"
    outcome = await after_bad.outcome()
    assert outcome is not None and outcome.error_type == DEPENDENCY_FAILED
    assert f"dependency {bad.id}.1 (explode) ended failed" == outcome.error


async def test_group_and_chord_dependencies(unique_name: str) -> None:
    """A group is every member; a chord with allow_failures=True is its callback (it
    succeeded although a member was denied); a strict chord's denied member fails it."""
    app = _app(unique_name)
    flow = build_flow(app)
    t = build(app)

    def members() -> vaultq.Group[Any]:
        return vaultq.group(
            flow.checked_price.s(Order("pen", 2)), flow.checked_price.s(Order("blocked", 1))
        )

    good = await vaultq.group(flow.price.s(Order("pen", 1))).enqueue()
    strict = await vaultq.chord(members(), flow.total).enqueue()
    lenient = await vaultq.chord(members(), flow.tally, allow_failures=True).enqueue()
    after_good, after_strict, after_lenient = [
        await t.after.enqueue(N(i), depends_on=[h]) for i, h in enumerate((good, strict, lenient))
    ]
    await TestWorker(app).run_pending(delayed=True)
    assert await after_good.result(timeout=5) == "after 0"
    outcome = await after_strict.outcome()
    assert outcome is not None and outcome.error_type == DEPENDENCY_FAILED
    assert outcome.error == f"dependency {strict.id}.1 (checked_price) ended denied"
    assert await after_lenient.result(timeout=5) == "after 2"


async def test_an_outcome_that_does_not_open_never_releases_a_dependent(unique_name: str) -> None:
    """A SUCCEEDED outcome of another job written under the dependency's id (as someone
    with write access to the broker could) is bound to that other job: it does not
    open, and the dependent ends cancelled without running."""
    app = _app(unique_name)
    t = build(app)
    done = await t.work.enqueue(N(1))
    await TestWorker(app).run_pending()
    ghost = app.job("ghost-1", task=t.work)
    dependent = await t.after.enqueue(N(3), depends_on=[ghost])
    broker = await app.broker()
    stolen = await broker.get_result("default", done.id)
    assert stolen is not None
    written = await broker.tombstone(  # type: ignore[attr-defined]
        "default", ghost.id, result=stolen, result_ttl=60, remember_until=time.time() + 60
    )
    assert written
    await TestWorker(app).run_pending()
    outcome = await dependent.outcome()
    assert outcome is not None and outcome.error_type == DEPENDENCY_FAILED
    assert outcome.started_at is None
    assert "does not open" in (outcome.error or "")


async def test_a_verify_only_worker_releases_the_dependent_but_cannot_alter_it(
    unique_name: str,
) -> None:
    keys = vaultq.Keyring.generate(signing="ed25519")
    producer, worker_app = _app(unique_name, keys), _app(unique_name, keys.public())
    t, _ = build(producer), build(worker_app)
    first = await t.work.enqueue(N(1))
    dependent = await t.after.enqueue(N(2), depends_on=[first])
    broker = await worker_app.broker()
    (entry,) = [e for e in await broker.queued("default") if e.job_id == dependent.id]
    opened = worker_app.open_job(
        entry.envelope,
        tasks=worker_app.tasks,
        now=time.time(),
        queue="default",
        job_id=dependent.id,
        skew=5,
    )
    assert opened.body.meta.depends is not None
    assert [d.job_id for d in opened.body.meta.depends] == [first.id]
    assert peek_header(entry.envelope).signer_id  # producer-signed
    # The worker's keyring cannot seal a replacement (say, without the dependency).
    with pytest.raises(KeyringError):
        seal_job(
            worker_app.keyring,
            job_id=dependent.id,
            app="deptest",
            task="after",
            queue="default",
            payload=b'{"n":2}',
            principal=None,
            meta=JobMeta(),
            issued_at=time.time(),
            not_before=time.time(),
            expires_at=time.time() + 60,
        )
    ran = await TestWorker(worker_app).run_pending(delayed=True)
    assert [r.task for r in ran if r.outcome == "succeeded"] == ["work", "after"]
    assert await dependent.result(timeout=5) == "after 2"


def test_depends_on_refuses_what_it_cannot_seal(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    with pytest.raises(ConfigurationError, match="does not know its task"):
        t.after.enqueue_sync(N(1), depends_on=[app.job("x1")])
    with pytest.raises(ConfigurationError, match="takes JobHandle and WorkflowHandle"):
        t.after.enqueue_sync(N(1), depends_on=["x1"])
    typed = app.job("x1", task=t.work)
    handle = t.after.enqueue_sync(N(1), depends_on=[typed, typed])
    assert handle.status_sync() is JobStatus.PENDING


@pytest.mark.slow
@pytest.mark.other_processes
def test_kill_9_workers_while_dependents_wait_loses_and_duplicates_nothing(
    broker_url: str, unique_name: str, tmp_path: Path
) -> None:
    """Twelve dependents on pairs of slow jobs (and two on a failing one), three worker
    processes holding only verification keys, killed with SIGKILL at random: each
    dependent ends once, SUCCEEDED after both its dependencies ran (or CANCELLED without
    running when one failed), and nothing is left in the queue."""
    keys = vaultq.Keyring.generate(signing="ed25519")
    log = tmp_path / "runs.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": keys.public().to_json(),
            "DEPENDS_APP": unique_name,
            "DEPENDS_SLEEP": "0.3",
            "DEPENDS_LOG": str(log),
        }
    )
    app = vaultq.App(unique_name, broker=broker_url, keyring=keys)
    t = build(app)
    rng = random.Random(16)  # noqa: S311  # nosec B311 -- a test's fault schedule
    try:
        dependents = []
        for i in range(12):
            a, b = t.work.enqueue_sync(N(100 + i)), t.work.enqueue_sync(N(200 + i))
            dependents.append(t.after.enqueue_sync(N(i), depends_on=[a, b]))
        bad = t.boom.enqueue_sync(N(999))
        doomed = [t.after.enqueue_sync(N(50 + i), depends_on=[bad]) for i in range(2)]
        workers = [start_worker_process("depends_app", env, "--lease", "2") for _ in range(3)]
        try:
            wait_until_serving(workers)
            for _ in range(6):
                time.sleep(rng.uniform(0.3, 0.9))
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start_worker_process("depends_app", env, "--lease", "2")
            for i, handle in enumerate(dependents):
                assert handle.result_sync(timeout=180) == f"after {i}"
            for handle in doomed:
                outcome = handle.outcome_sync()
                deadline = time.monotonic() + 60
                while outcome is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                    outcome = handle.outcome_sync()
                assert outcome is not None and outcome.error_type == DEPENDENCY_FAILED
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)
        lines = log.read_text().splitlines()
        for i in range(12):
            first_after = lines.index(f"after {i}")
            assert f"work {100 + i}" in lines[:first_after]
            assert f"work {200 + i}" in lines[:first_after]
        assert not any(line in lines for line in ("after 50", "after 51"))
        stats = app.run_sync(_stats, app)
        assert stats == (0, 0, 0)
    finally:
        app.close()


async def _stats(app: vaultq.App) -> tuple[int, int, int]:
    stats = await (await app.broker()).stats("default")
    return stats.ready, stats.delayed, stats.running
