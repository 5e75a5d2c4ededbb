"""``task.enqueue_sync`` writes from the calling thread (no hop onto the app's loop
thread) and behaves as ``await task.enqueue`` does, on a real Redis and a real SQLite
file: authorization at enqueue, unique keys, custom ids, delayed jobs, the enqueue hooks,
after a fork, and from many threads at once. Every job it writes opens and runs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import msgspec
import pytest
from support.workers import make_app

import vaultq
from vaultq.brokers.writer import SyncWriter
from vaultq.middleware import EnqueueInfo, Middleware
from vaultq.policy import PolicyRequest, deny_all, rule
from vaultq.testing import run_pending

pytestmark = [pytest.mark.anyio, pytest.mark.broker_kinds("sqlite", "redis")]


class Item(msgspec.Struct, frozen=True):
    n: int


class Recorder(Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def before_enqueue(self, job: EnqueueInfo, trace: dict[str, str]) -> None:
        self.events.append(("before", job.task, None))

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        self.events.append(("after", job.task, error))


@pytest.fixture
def app(broker_url: str, unique_name: str) -> Iterator[vaultq.App]:
    app = make_app(unique_name, broker_url)
    yield app
    app.close()


def _loop_threads(app: vaultq.App) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"vaultq-{app.name}-sync"]


async def _stats(app: vaultq.App, queue: str = "default") -> vaultq.brokers.base.QueueStats:
    broker = await app.broker()
    return await broker.stats(queue)


async def test_sync_enqueue_writes_from_the_calling_thread_and_the_job_runs(
    app: vaultq.App,
) -> None:
    seen: list[int] = []

    @app.task(name="sync.item")
    def item(job: Item) -> None:
        seen.append(job.n)

    assert isinstance(app.sync_writer(), SyncWriter)
    handle = item.enqueue_sync(Item(1))
    handles = item.enqueue_many_sync([Item(2), Item(3)])
    # No background event loop was needed for any of it.
    assert _loop_threads(app) == []
    assert len({handle.id, *(h.id for h in handles)}) == 3
    await run_pending(app)
    assert sorted(seen) == [1, 2, 3]
    assert (await app.job(handle.id).status()).name == "SUCCEEDED"


async def test_a_denying_policy_refuses_on_both_paths_and_nothing_is_written(
    app: vaultq.App,
) -> None:
    @app.task(name="sync.denied", policy=deny_all)
    def denied(job: Item) -> None:
        raise AssertionError("must never run")

    with pytest.raises(vaultq.AuthorizationDenied):
        denied.enqueue_sync(Item(1))
    with pytest.raises(vaultq.AuthorizationDenied):
        denied.enqueue_many_sync([Item(1), Item(2)])
    with pytest.raises(vaultq.AuthorizationDenied):
        await denied.enqueue(Item(1))
    stats = await _stats(app)
    assert (stats.ready, stats.delayed) == (0, 0)


async def test_the_principal_reaches_the_policy_and_an_async_policy_still_decides(
    app: vaultq.App,
) -> None:
    asked: list[str] = []

    @rule
    async def staff_only(req: PolicyRequest) -> bool:
        asked.append(req.principal.id if req.principal else "-")
        return req.principal is not None and "staff" in req.principal.roles

    @app.task(name="sync.staff", policy=staff_only)
    def staff(job: Item) -> None:
        return None

    staff.enqueue_sync(Item(1), principal=vaultq.Principal(id="ann", roles=frozenset({"staff"})))
    with pytest.raises(vaultq.AuthorizationDenied):
        staff.enqueue_sync(Item(2), principal=vaultq.Principal(id="bob"))
    with pytest.raises(vaultq.AuthorizationDenied):
        staff.enqueue_sync(Item(3))
    assert asked[:3] == ["ann", "bob", "-"]
    assert (await _stats(app)).ready == 1
    # The worker evaluates it again before the attempt, with the sealed principal.
    ran = await run_pending(app)
    assert len(ran) == 1
    assert asked[3:] == ["ann"]


async def test_unique_keys_are_shared_between_the_sync_and_async_paths(app: vaultq.App) -> None:
    @app.task(name="sync.unique")
    def unique(job: Item) -> None:
        return None

    first = unique.enqueue_sync(Item(1), unique_key="order-7")
    again = await unique.enqueue(Item(2), unique_key="order-7")
    third = unique.enqueue_sync(Item(3), unique_key="order-7")
    assert first.id == again.id == third.id
    with pytest.raises(vaultq.DuplicateJob) as raised:
        unique.enqueue_sync(Item(4), unique_key="order-7", on_duplicate="raise")
    assert raised.value.job_id == first.id
    other = unique.enqueue_sync(Item(5), unique_key="order-8")
    assert other.id != first.id
    assert (await _stats(app)).ready == 2
    await run_pending(app)
    # Settled: the key is free again.
    assert unique.enqueue_sync(Item(6), unique_key="order-7").id != first.id


async def test_a_custom_job_id_is_written_once_whichever_path_tries_again(
    app: vaultq.App,
) -> None:
    @app.task(name="sync.custom")
    def custom(job: Item) -> None:
        return None

    handle = custom.enqueue_sync(Item(1), job_id="invoice-42")
    assert handle.id == "invoice-42"
    with pytest.raises(vaultq.DuplicateJob):
        custom.enqueue_sync(Item(2), job_id="invoice-42")
    with pytest.raises(vaultq.DuplicateJob):
        await custom.enqueue(Item(3), job_id="invoice-42")
    with pytest.raises(vaultq.ConfigurationError):
        custom.enqueue_sync(Item(4), job_id="bad id with spaces")
    assert (await _stats(app)).ready == 1


async def test_a_delayed_sync_enqueue_waits_for_its_time(app: vaultq.App) -> None:
    seen: list[int] = []

    @app.task(name="sync.later")
    def later(job: Item) -> None:
        seen.append(job.n)

    later.enqueue_sync(Item(1), delay=3600)
    later.enqueue_many_sync([Item(2)], delay=3600)
    stats = await _stats(app)
    assert (stats.ready, stats.delayed) == (0, 2)
    assert await run_pending(app) == []
    assert seen == []
    with pytest.raises(vaultq.ConfigurationError):
        later.enqueue_sync(Item(3), delay=-1)


async def test_payload_checks_and_hooks_match_the_async_path(app: vaultq.App) -> None:
    recorder = Recorder()
    app.add_middleware(recorder)

    @app.task(name="sync.hooked")
    def hooked(job: Item) -> None:
        return None

    @app.task(name="sync.refused", policy=deny_all)
    def refused(job: Item) -> None:
        return None

    with pytest.raises(vaultq.PayloadError):
        hooked.enqueue_sync(Item("seven"))  # type: ignore[arg-type]
    hooked.enqueue_sync(Item(1))
    with pytest.raises(vaultq.AuthorizationDenied):
        refused.enqueue_sync(Item(1))
    sync_events = list(recorder.events)
    recorder.events.clear()
    with pytest.raises(vaultq.PayloadError):
        await hooked.enqueue(Item("seven"))  # type: ignore[arg-type]
    await hooked.enqueue(Item(1))
    with pytest.raises(vaultq.AuthorizationDenied):
        await refused.enqueue(Item(1))
    assert (
        sync_events
        == recorder.events
        == [
            ("before", "sync.hooked", None),
            ("after", "sync.hooked", None),
        ]
    )


async def test_many_threads_enqueue_at_once(app: vaultq.App) -> None:
    seen: list[int] = []

    @app.task(name="sync.threads")
    def threaded(job: Item) -> None:
        seen.append(job.n)

    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def producer(base: int) -> None:
        try:
            barrier.wait()
            for i in range(40):
                ids.append(threaded.enqueue_sync(Item(base + i)).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 320
    ran = await run_pending(app, limit=1000)
    assert len(ran) == 320
    assert sorted(seen) == sorted(k * 1000 + i for k in range(8) for i in range(40))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_forked_child_enqueues_on_its_own_connections(app: vaultq.App) -> None:
    seen: list[int] = []

    @app.task(name="sync.forked")
    def forked(job: Item) -> None:
        seen.append(job.n)

    forked.enqueue_sync(Item(1))  # the parent's writer is open before the fork
    parent_writer = app.sync_writer()
    pid = os.fork()
    if pid == 0:  # the child: enqueue, then leave without running any cleanup
        code = 1
        try:
            for n in (100, 101, 102):
                forked.enqueue_sync(Item(n))
            code = 0 if app.sync_writer() is not parent_writer else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connections still work after the child came and went.
    forked.enqueue_sync(Item(2))
    assert app.sync_writer() is parent_writer
    await run_pending(app)
    assert sorted(seen) == [1, 2, 100, 101, 102]


@pytest.mark.broker_kinds("redis")
async def test_a_pooled_connection_the_server_dropped_is_replaced(app: vaultq.App) -> None:
    import redis

    @app.task(name="sync.dropped")
    def dropped(job: Item) -> None:
        return None

    first = dropped.enqueue_sync(Item(1))  # leaves an idle connection in the pool
    url = str(app.broker_url)
    admin = redis.Redis.from_url(url)
    try:
        # As a server restart or an idle timeout would: the writer's idle connection (its
        # last command was the enqueue script) is cut off.
        killed = 0
        for client in admin.client_list():
            if client.get("cmd") in ("evalsha", "eval"):
                killed += admin.client_kill_filter(_id=client["id"])
        assert killed >= 1
    finally:
        admin.close()
    second = dropped.enqueue_sync(Item(2))
    assert first.id != second.id
    assert len(await run_pending(app)) == 2
