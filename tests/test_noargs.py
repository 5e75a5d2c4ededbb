"""Tasks without arguments (issue 18): ``def cleanup() -> None`` is a task whose payload is
``vaultq.NoArgs``; it is enqueued with no payload and runs through the whole pipeline
(sealed, signed, decoded strictly, authorized) like any other job."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

import vaultq
from vaultq.testing import TestWorker

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: int


async def test_a_task_without_parameters_is_enqueued_without_a_payload(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")
    calls: list[str] = []

    @app.task(name="ping")
    async def ping() -> str:
        calls.append("async")
        return "pong"

    @app.task(name="sweep")
    def sweep() -> None:
        calls.append("sync")

    assert ping.payload_type is vaultq.NoArgs and sweep.payload_type is vaultq.NoArgs
    worker = TestWorker(app)
    handle = await ping.enqueue()
    await sweep.enqueue(vaultq.NoArgs())  # the explicit form works too
    assert worker.enqueued(ping) == [vaultq.NoArgs()]

    ran = await worker.run_pending()
    assert [r.outcome for r in ran] == ["succeeded", "succeeded"]
    assert sorted(calls) == ["async", "sync"]
    assert await handle.result(timeout=1) == "pong"
    # Called directly (tests, composition), with or without the empty payload.
    assert await ping() == "pong"  # type: ignore[misc]
    sweep()
    assert calls.count("sync") == 2


def test_enqueue_sync_and_schedules_need_no_payload(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")

    @app.task(name="tick")
    def tick() -> int:
        return 1

    handle = tick.enqueue_sync()
    assert handle.status_sync() == "pending"
    # A schedule of an argument-less task needs no payload= either.
    schedule = app.schedule(tick, every=60)
    assert schedule.payload == vaultq.NoArgs()


async def test_a_task_with_a_payload_still_requires_one(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")

    @app.task(name="ship")
    async def ship(job: Order) -> None: ...

    with pytest.raises(vaultq.PayloadError, match="takes a Order payload and none was given"):
        await ship.enqueue()


def test_a_task_without_parameters_must_still_annotate_its_return(unique_name: str) -> None:
    app = vaultq.App(unique_name, broker="memory://")

    def untyped():  # type: ignore[no-untyped-def]
        return 1

    with pytest.raises(vaultq.TaskDefinitionError, match="annotate the return type"):
        app.task(name="untyped")(untyped)


def test_no_args_envelopes_with_fields_are_refused() -> None:
    # A forged payload carrying fields does not decode as NoArgs.
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"x": 1}', type=vaultq.NoArgs)


async def test_an_argument_less_task_runs_in_process_isolation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child process finds the task by name and calls it without arguments."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))
    import testkit_isolated_app as iso

    worker = TestWorker(iso.app)
    worker.clear()
    handle = await iso.pid_noargs.enqueue()
    (ran,) = await worker.run_pending()
    assert (ran.task, ran.outcome) == ("pid_noargs", "succeeded")
    assert await handle.result(timeout=1) != os.getpid()
