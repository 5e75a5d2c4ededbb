"""Typed groups and chords (issue 16): ``group(...)`` -> ``list[R]``, ``chord(group,
callback)`` fed every member's sealed result exactly once through the broker's atomic
``chord_arrive``, ``allow_failures=True`` typed outcomes; checked by mypy and the
builder; a worker may only enqueue the callback the producer sealed into the plan;
real worker processes on Redis and SQLite, kill -9 included (``docs/workflows.md``)."""

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
from vaultq.brokers.base import Ack
from vaultq.brokers.chords import chord_store
from vaultq.envelope import open_job, peek_header
from vaultq.envelope_types import ChordLink, FlowStep, JobMeta
from vaultq.errors import KeyringError, TaskDefinitionError, WorkflowRefused
from vaultq.jobs import JobStatus
from vaultq.policy import AUDIT_LOGGER
from vaultq.runtime import chords
from vaultq.testing import TestWorker
from vaultq.workflows import WorkflowFailed

pytestmark = pytest.mark.anyio

PLAIN = vaultq.Principal("user:2")
OTHER = vaultq.Principal("user:3")


def _app(name: str, keyring: vaultq.Keyring | None = None) -> vaultq.App:
    return vaultq.App("flowtest", broker=f"memory://{name}", keyring=keyring)


async def test_a_group_returns_its_members_results_in_order(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    handle = await vaultq.group(*[t.price.s(Order(f"s{i}", i)) for i in range(5)]).enqueue(
        principal=PLAIN
    )
    await TestWorker(app).run_pending()
    assert await handle.result(timeout=5) == [Priced(f"s{i}", i * 250) for i in range(5)]
    steps = await handle.steps()
    assert [s.status for s in steps] == [JobStatus.SUCCEEDED] * 5
    assert [s.job_id for s in steps] == [f"{handle.id}.{i}" for i in range(5)]


async def test_a_chord_feeds_every_result_to_the_callback_once(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    members = vaultq.group(*[t.price.s(Order(f"s{i}", 1)) for i in range(4)])
    handle = await vaultq.chord(members, t.total).enqueue(principal=PLAIN, workflow_id="wf-c")
    again = await vaultq.chord(members, t.total).enqueue(principal=PLAIN, workflow_id="wf-c")
    ran = await TestWorker(app).run_pending()
    assert [r.task for r in ran] == ["price"] * 4 + ["total"]  # the same id twice: once
    assert await handle.result(timeout=5) == 1000 == await again.result(timeout=5)
    assert [s.task for s in await handle.steps()] == ["price"] * 4 + ["total"]
    outcome = await handle.handles[-1].outcome()
    assert outcome is not None and outcome.principal_id == "user:2"


async def test_a_failed_member_stops_the_chord_and_the_handle_names_it(
    unique_name: str,
) -> None:
    app = _app(unique_name)
    t = build(app)
    members = vaultq.group(t.price.s(Order("a", 1)), t.explode.s(Order("cup", 1)))
    handle = await vaultq.chord(members, t.total).enqueue()
    ran = await TestWorker(app).run_pending(delayed=True)
    assert [(r.task, r.outcome) for r in ran] == [("price", "succeeded"), ("explode", "failed")]
    with pytest.raises(WorkflowFailed, match="member 1 .*RuntimeError: no price for cup") as err:
        await handle.result(timeout=5)
    assert (err.value.step, err.value.status) == (1, "failed")
    statuses = [s.status for s in await handle.steps()]
    assert statuses == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING]


async def test_a_member_denied_at_run_time(unique_name: str) -> None:
    """Without allow_failures the denied member stops the chord (its callback never
    runs); with it, the callback gets that member's typed outcome."""
    app = _app(unique_name)
    t = build(app)

    def members() -> vaultq.Group[Priced]:
        return vaultq.group(
            t.checked_price.s(Order("pen", 2)), t.checked_price.s(Order("blocked", 1))
        )

    strict = await vaultq.chord(members(), t.total).enqueue(principal=PLAIN)
    lenient = await vaultq.chord(members(), t.tally, allow_failures=True).enqueue(principal=PLAIN)
    await TestWorker(app).run_pending(delayed=True)
    with pytest.raises(WorkflowFailed) as caught:
        await strict.result(timeout=5)
    assert (caught.value.step, caught.value.status) == (1, "denied")
    assert [s.status for s in await strict.steps()][2] == JobStatus.PENDING
    assert await lenient.result(timeout=5) == "ok=1 cents=200 bad=1:denied"


async def test_cancelling_a_chord_stops_its_members_and_its_callback(
    unique_name: str,
) -> None:
    app = _app(unique_name)
    t = build(app)
    members = vaultq.group(*[t.price.s(Order(f"x{i}", 1)) for i in range(3)])
    strict = await vaultq.chord(members, t.total).enqueue()
    lenient = await vaultq.chord(members, t.tally, allow_failures=True).enqueue()
    assert await strict.cancel() == vaultq.brokers.CancelState.REQUESTED
    assert await lenient.cancel() == vaultq.brokers.CancelState.REQUESTED
    assert await TestWorker(app).run_pending(delayed=True) == []  # nothing runs
    with pytest.raises(WorkflowFailed) as caught:
        await strict.result(timeout=5)
    assert (caught.value.step, caught.value.status) == (0, "cancelled")
    with pytest.raises(WorkflowFailed) as caught:
        await lenient.result(timeout=5)  # its callback was tombstoned: never enqueued
    assert (caught.value.step, caught.value.status) == (3, "cancelled")
    assert [s.status for s in await lenient.steps()] == [JobStatus.CANCELLED] * 4
    assert await strict.cancel() == vaultq.brokers.CancelState.FINISHED
    # A finished group: nothing to cancel.
    done = await vaultq.group(t.price.s(Order("y", 1))).enqueue()
    await TestWorker(app).run_pending()
    assert await done.cancel() == vaultq.brokers.CancelState.FINISHED


async def test_the_callback_refuses_a_result_recorded_for_another_job(unique_name: str) -> None:
    """A compromised worker (broker access, no signing key) records another workflow's
    sealed member result under this chord's member 0 before that member runs: the
    first recorded result stays, and the callback, which opens each result bound to
    its own member's job id, refuses it and ends cancelled instead of running on it."""
    app = _app(unique_name)
    t = build(app)
    done = vaultq.chord(vaultq.group(t.price.s(Order("a", 1))), t.total)
    first = await done.enqueue(workflow_id="wf-a")
    await TestWorker(app).run_pending()
    assert await first.result(timeout=5) == 250
    store = chord_store(await app.broker())
    spliced = (await store.chord_results("default", "wf-a"))[0]
    members = vaultq.group(t.price.s(Order("b", 4)), t.price.s(Order("c", 1)))
    handle = await vaultq.chord(members, t.total).enqueue(workflow_id="wf-b")
    assert not await store.chord_arrive(
        "default", "wf-b", 0, spliced, total=2, until=time.time() + 60
    )
    ran = await TestWorker(app).run_pending()
    assert [(r.task, r.outcome) for r in ran] == [
        ("price", "succeeded"),
        ("price", "succeeded"),
        ("total", "cancelled"),
    ]
    with pytest.raises(WorkflowFailed) as caught:
        await handle.result(timeout=5)
    assert (caught.value.step, caught.value.status) == (2, "cancelled")
    outcome = await handle.handles[2].outcome()
    assert (
        outcome is not None
        and outcome.error == "the result of member 0 does not open: WrongDestination"
    )


def test_the_builder_refuses_miswired_groups_and_chords(unique_name: str) -> None:
    app = _app(unique_name)
    t = build(app)
    with pytest.raises(TaskDefinitionError, match="'parse' returns Order but 'price' returns"):
        vaultq.group(t.price.s(Order("a", 1)), t.parse.s(Text("a:1")))
    with pytest.raises(TaskDefinitionError, match="a group member is one step"):
        vaultq.group(t.parse.s(Text("a:1")).then(t.price))
    with pytest.raises(TaskDefinitionError, match="at least one member"):
        vaultq.group()
    prices = vaultq.group(t.price.s(Order("a", 1)))
    with pytest.raises(TaskDefinitionError, match=r"subclass of vaultq.Gathered\[Priced\]"):
        vaultq.chord(prices, t.receipt)  # takes a Priced, not the gathered results
    with pytest.raises(TaskDefinitionError, match=r"vaultq.MemberOutcomes\[Priced\]"):
        vaultq.chord(prices, t.total, allow_failures=True)  # wants outcomes, not results
    orders = vaultq.group(t.parse.s(Text("a:1")))
    with pytest.raises(TaskDefinitionError, match="the members return Order"):
        vaultq.chord(orders, t.total)


def test_mypy_rejects_a_mistyped_chord_and_accepts_a_typed_one(tmp_path: Path) -> None:
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

            class Bs(vaultq.Gathered[B], frozen=True):
                pass

            class As(vaultq.Gathered[A], frozen=True):
                pass

            class BOutcomes(vaultq.MemberOutcomes[B], frozen=True):
                pass

            @app.task
            def a_to_b(p: A) -> B:
                return B(str(p.x))

            @app.task
            def count(p: Bs) -> int:
                return len(p.results)

            @app.task
            def count_as(p: As) -> int:
                return len(p.results)

            @app.task
            def tally(p: BOutcomes) -> str:
                return str(len(p.outcomes))

            async def main() -> None:
                members = vaultq.group(a_to_b.s(A(1)), a_to_b.s(A(2)))
                reveal_type(await (await members.enqueue()).result())
                reveal_type(await (await vaultq.chord(members, count).enqueue()).result())
                lenient = vaultq.chord(members, tally, allow_failures=True)
                reveal_type(await (await lenient.enqueue()).result())
                vaultq.chord(members, count_as)  # As is not Gathered[B]
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
    notes = [line.split("note: ")[1] for line in lines if "note: Revealed type" in line]
    assert notes == [
        'Revealed type is "list[snippet.B]"',
        'Revealed type is "int"',
        'Revealed type is "str"',
    ], done.stdout
    errors = [line for line in lines if ": error:" in line]
    # Exactly one error: the callback whose payload gathers A results after B members.
    assert len(errors) == 1, done.stdout
    assert ':44: error: Cannot infer value of type parameter "R" of "chord"' in errors[0]


@pytest.mark.broker_kinds("sqlite", "redis", "memory")
async def test_a_verify_only_worker_enqueues_only_the_callback_the_producer_signed(
    broker_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = vaultq.Keyring.generate(signing="ed25519")
    producer = vaultq.App("flowtest", broker=broker_url, keyring=keys)
    elsewhere = _app(unique_name + "-elsewhere", keys)  # the same producer, another store
    worker_app = vaultq.App("flowtest", broker=broker_url, keyring=keys.public())
    pt, et = build(producer), build(elsewhere)
    build(worker_app)
    mine = await vaultq.chord(vaultq.group(pt.price.s(Order("pen", 1))), pt.total).enqueue(
        principal=PLAIN, workflow_id="wf-mine"
    )
    # Producer-signed callbacks the plan of wf-mine does not name: another workflow's,
    # and wf-mine's own id for another principal.
    other = vaultq.chord(vaultq.group(et.price.s(Order("ink", 1))), et.total)
    await other.enqueue(principal=PLAIN, workflow_id="wf-other")
    await other.enqueue(principal=OTHER, workflow_id="wf-mine")
    broker = await worker_app.broker()
    member = _opened(worker_app, await _envelope(broker, "wf-mine.0"))
    flow = member.body.meta.flow
    assert flow is not None and flow.chord is not None
    ebroker = await elsewhere.broker()
    foreign = _opened(elsewhere, await _envelope(ebroker, "wf-other.0")).body.meta.flow
    stolen = _opened(elsewhere, await _envelope(ebroker, "wf-mine.0")).body.meta.flow
    assert foreign is not None and foreign.chord is not None
    assert stolen is not None and stolen.chord is not None

    # The worker's keyring cannot seal a callback of its choosing at all...
    with pytest.raises(KeyringError):
        vaultq.envelope.seal_job(
            worker_app.keyring,
            job_id="wf-mine.1",
            app="flowtest",
            task="total",
            queue="default",
            payload=b'{"results":[]}',
            principal=OTHER,
            meta=JobMeta(),
            issued_at=time.time(),
            not_before=time.time(),
            expires_at=time.time() + 60,
        )
    # ...and a member's arrival writes nothing the plan does not name.
    rogue = vaultq.Keyring.generate(signing="ed25519")
    untrusted = vaultq.envelope.seal_job(
        rogue,
        job_id="wf-mine.1",
        app="flowtest",
        task="total",
        queue="default",
        payload=b"null",
        principal=PLAIN,
        meta=JobMeta(),
        issued_at=time.time(),
        not_before=time.time(),
        expires_at=time.time() + 60,
    )
    settled = Ack(delivery=_delivery(member), result=b"sealed", result_ttl=60, remember_until=0)
    with caplog.at_level(logging.WARNING, logger=AUDIT_LOGGER):
        for link, why in [
            (foreign.chord, "not the one this workflow's plan names"),
            (stolen.chord, "names another principal"),
            (ChordLink(callback=untrusted), "does not open"),
        ]:
            forged = FlowStep(flow.workflow, flow.step, flow.steps, chord=link)
            with pytest.raises(WorkflowRefused, match=why):
                chords.check_callback(worker_app, member, forged)
            assert await chords.arrive(worker_app, member, forged, settled) is settled
    refused = [r for r in caplog.records if "callback refused" in r.getMessage()]
    assert len(refused) == 6  # each forgery, checked and then on the arrival path
    assert all(r.vaultq["decision"] == "refused" for r in refused)  # type: ignore[attr-defined]
    assert await chord_store(broker).chord_results("default", "wf-mine") == {}
    assert await broker.get_result("default", "wf-mine.1") is None

    # The real plan completes on the verify-only worker.
    await TestWorker(worker_app).run_pending()
    assert await mine.result(timeout=10) == 250
    for app in (producer, elsewhere, worker_app):
        await app.aclose()


async def _envelope(broker: object, job_id: str) -> bytes:
    for entry in await broker.queued("default"):  # type: ignore[attr-defined]
        if entry.job_id == job_id:
            return bytes(entry.envelope)
    raise AssertionError(f"{job_id} is not queued")


def _opened(app: vaultq.App, envelope: bytes) -> vaultq.envelope.OpenedJob:
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


def _delivery(opened: vaultq.envelope.OpenedJob) -> vaultq.brokers.Delivery:
    return vaultq.brokers.Delivery(
        queue=opened.header.queue, job_id=opened.header.job_id, envelope=b"", attempt=1, tag="t"
    )


def _run_workers(env: dict[str, str], count: int, *args: str) -> list[subprocess.Popen[bytes]]:
    workers = [start_worker_process("flow_app", env, *args) for _ in range(count)]
    wait_until_serving(workers)
    return workers


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(timeout=30)


@pytest.mark.other_processes
def test_a_group_of_100_and_a_chord_over_100_on_real_workers(
    broker_url: str, unique_name: str
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
        many = vaultq.group(*[t.price.s(Order(f"g{i}", i)) for i in range(100)])
        grouped = many.enqueue_sync(principal=PLAIN)
        over = vaultq.group(*[t.price.s(Order(f"c{i}", i % 7)) for i in range(100)])
        chorded = vaultq.chord(over, t.total).enqueue_sync(principal=PLAIN)
        blocked = vaultq.group(
            *[t.checked_price.s(Order(f"blocked{i}" if i == 3 else f"k{i}", 1)) for i in range(5)]
        )
        denied = vaultq.chord(blocked, t.total).enqueue_sync(principal=PLAIN)
        lenient = vaultq.chord(blocked, t.tally, allow_failures=True).enqueue_sync(principal=PLAIN)
        workers = _run_workers(env, 2)
        try:
            results = grouped.result_sync(timeout=120)
            assert results == [Priced(f"g{i}", i * 250) for i in range(100)]
            assert all(type(r) is Priced for r in results)
            total = chorded.result_sync(timeout=120)
            assert total == sum((i % 7) * 250 for i in range(100)) and type(total) is int
            with pytest.raises(WorkflowFailed) as caught:
                denied.result_sync(timeout=60)
            assert (caught.value.step, caught.value.status) == (3, "denied")
            assert lenient.result_sync(timeout=60) == "ok=4 cents=400 bad=3:denied"
        finally:
            _stop(workers)
    finally:
        app.close()


@pytest.mark.slow
@pytest.mark.other_processes
def test_kill_9_workers_during_a_chord_of_500_runs_the_callback_exactly_once(
    broker_url: str, unique_name: str, tmp_path: Path
) -> None:
    """Workers killed with SIGKILL at random while the 500 members of a chord run (a
    member may die after recording its result and before settling, or between the last
    arrival and the callback's write): every member's result reaches the callback, the
    callback is enqueued and runs exactly once."""
    keys = vaultq.Keyring.generate(signing="ed25519")
    log = tmp_path / "runs.log"
    env = worker_env(
        {
            "VAULTQ_BROKER": broker_url,
            "VAULTQ_KEYS": keys.public().to_json(),
            "FLOW_APP": unique_name,
            "FLOW_SLEEP": "0.05",
            "FLOW_LOG": str(log),
        }
    )
    app = vaultq.App(unique_name, broker=broker_url, keyring=keys)
    t = build(app)
    rng = random.Random(16)  # noqa: S311  # nosec B311 -- a test's fault schedule
    members = vaultq.group(*[t.price.s(Order(f"m{i}", i % 5 + 1)) for i in range(500)])
    args = ("--lease", "2", "--concurrency", "8")
    try:
        handle = vaultq.chord(members, t.total).enqueue_sync(principal=PLAIN)
        workers = _run_workers(env, 3, *args)
        try:
            kills = 0
            store = chord_store(app.run_sync(app.broker))
            while kills < 8:
                time.sleep(rng.uniform(0.2, 0.8))
                arrived = app.run_sync(store.chord_results, "default", handle.id)
                if len(arrived) == 500:
                    break  # complete: the rest is the callback's run
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = start_worker_process("flow_app", env, *args)
                kills += 1
            assert handle.result_sync(timeout=150) == sum((i % 5 + 1) * 250 for i in range(500))
            steps = handle.steps_sync()
            assert [s.status for s in steps] == [JobStatus.SUCCEEDED] * 501
        finally:
            _stop(workers)
        runs = log.read_text().splitlines()
        assert runs.count("total 500") == 1 and not [
            r for r in runs if r.startswith("total") and r != "total 500"
        ]
        assert {r for r in runs if r.startswith("price ")} == {f"price m{i}" for i in range(500)}
        assert kills >= 1
        print(f"kills: {kills}, member runs: {len([r for r in runs if r.startswith('price ')])}")
    finally:
        app.close()
