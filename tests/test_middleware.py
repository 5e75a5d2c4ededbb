"""The middleware protocol (vaultq/middleware.py) on real brokers and real workers.

Every hook fires once per event with safe arguments across success, failure, retry,
timeout, denial, rejection and cancellation; process-isolated attempts are reported by
the worker (the parent), not lost in the child; nothing of a payload, a result, a Secret
or a principal's attributes reaches a hook; a middleware that raises loses no job and
runs none twice; trace context added at enqueue travels inside the seal.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq.brokers.base import Release
from vaultq.envelope import open_job
from vaultq.middleware import Hooks

if TYPE_CHECKING:
    from middleware_app import Recorder

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
MARKER = "zq-marker-8c1f3d"
"""Appears in payloads, Secrets, principal attributes, results and error messages; must
never appear in anything a hook is given."""

Outcome = vaultq.Outcome


@pytest.fixture
def url(broker_kind: str, broker_url: str, request: pytest.FixtureRequest) -> str:
    if broker_kind == "redis":
        request.getfixturevalue("redis_clean")  # the middleware app's name is fixed
    return broker_url


class Doc(msgspec.Struct, frozen=True):
    text: str
    secret: vaultq.Secret[str]
    seconds: float = 0.0


def doc(seconds: float = 0.0) -> Doc:
    return Doc(text=f"plain {MARKER}", secret=vaultq.Secret(f"secret {MARKER}"), seconds=seconds)


PRINCIPAL = vaultq.Principal(
    "user:7", roles={f"role-{MARKER}"}, permissions={"p"}, attrs={"card": MARKER}
)


def recorder_class() -> type[Recorder]:
    from middleware_app import Recorder

    return Recorder


async def wait_for(
    check: Callable[[], bool], timeout: float = 15.0, what: str = "the condition"
) -> None:
    with anyio.fail_after(timeout, shield=False):
        while not check():
            await anyio.sleep(0.02)
    assert check(), what


def names(rec: Any, job_id: str) -> list[str]:
    """The hooks that saw ``job_id``, in order; ``after_enqueue`` (the producer's, which
    races the worker: an in-process worker may start the job before the producer's write
    returns) is moved right after ``before_enqueue`` once it is checked to come after it."""
    seen = [name for name, _ in rec.for_job(job_id)]
    if "after_enqueue" in seen:
        assert seen.count("after_enqueue") == 1
        assert seen.index("before_enqueue") < seen.index("after_enqueue")
        seen.remove("after_enqueue")
        seen.insert(seen.index("before_enqueue") + 1, "after_enqueue")
    return seen


def settled_or_rejected(rec: Any, job_id: str) -> bool:
    return any(n in ("settled", "rejected") for n in names(rec, job_id))


async def test_every_outcome_fires_each_hook_once_with_safe_arguments(
    url: str, unique_name: str
) -> None:
    rec = recorder_class()()
    app = make_app(unique_name, url, middleware=[rec])
    cancel_started = anyio.Event()

    @app.task(name="mw.ok")
    async def ok(job: Doc) -> str:
        return f"result {MARKER}"

    @app.task(name="mw.sync_ok")
    def sync_ok(job: Doc) -> str:
        return f"result {MARKER}"

    @app.task(name="mw.fail", retries=0)
    async def fail(job: Doc) -> str:
        raise ValueError(f"boom {MARKER} {job.text}")

    @app.task(name="mw.retry", retries=1)
    async def retry(job: Doc) -> str:
        if vaultq.current_job().attempt == 1:
            raise vaultq.Retry(f"again {MARKER}", delay=0.05)
        return "second"

    @app.task(name="mw.slow", timeout=0.3, retries=0)
    async def slow(job: Doc) -> str:
        await anyio.sleep(job.seconds)
        return "late"

    @app.task(name="mw.cancellable", timeout=60, retries=0)
    async def cancellable(job: Doc) -> str:
        cancel_started.set()
        await anyio.sleep(job.seconds)
        return "never"

    run_only_in_producer = vaultq.rule(lambda req: req.stage != "run", name="mw.enqueue_only")

    @app.task(name="mw.denied", policy=run_only_in_producer)
    async def denied(job: Doc) -> str:
        return "never"

    async with running_worker(app) as worker:
        h_ok = await ok.enqueue(doc(), principal=PRINCIPAL)
        h_sync = await sync_ok.enqueue(doc(), principal=PRINCIPAL)
        h_fail = await fail.enqueue(doc(), principal=PRINCIPAL)
        h_retry = await retry.enqueue(doc(), principal=PRINCIPAL)
        h_slow = await slow.enqueue(doc(10), principal=PRINCIPAL)
        h_denied = await denied.enqueue(doc(), principal=PRINCIPAL)
        h_cancel = await cancellable.enqueue(doc(60), principal=PRINCIPAL)
        # A job sealed with keys the worker does not trust (bad signature).
        forger = make_app(unique_name, url)

        @forger.task(name="mw.ok")
        async def forged_ok(job: Doc) -> str:
            return "forged"

        h_forged = await forged_ok.enqueue(doc())
        await forger.aclose()

        with anyio.fail_after(15):
            await cancel_started.wait()
        await h_cancel.cancel()

        all_ids = [
            h.id for h in (h_ok, h_sync, h_fail, h_retry, h_slow, h_denied, h_cancel, h_forged)
        ]
        await wait_for(
            lambda: (
                all(settled_or_rejected(rec, i) for i in all_ids)
                and names(rec, h_retry.id).count("settled") == 2
            ),
            what="every job settled or rejected",
        )
        worker_id = worker.name

    assert await h_ok.result(timeout=5) == f"result {MARKER}"
    started = "attempt_started"
    finished = "attempt_finished"
    enq = ["before_enqueue", "after_enqueue"]
    assert names(rec, h_ok.id) == [*enq, started, "around_async", finished, "settled"]
    assert names(rec, h_sync.id) == [*enq, started, "around_sync", finished, "settled"]
    assert names(rec, h_fail.id) == [*enq, started, "around_async", finished, "settled"]
    assert names(rec, h_retry.id) == [
        *enq,
        *[started, "around_async", finished, "settled"] * 2,
    ]
    assert names(rec, h_slow.id) == [*enq, started, "around_async", finished, "settled"]
    assert names(rec, h_denied.id) == [*enq, "settled"]
    assert names(rec, h_cancel.id) == [*enq, started, "around_async", finished, "settled"]
    assert names(rec, h_forged.id) == ["rejected"]

    def outcome_of(job_id: str, hook: str) -> list[tuple[Any, ...]]:
        return [args[1:] for name, args in rec.for_job(job_id) if name == hook]

    assert outcome_of(h_ok.id, "settled") == [(Outcome.SUCCEEDED, None)]
    assert outcome_of(h_fail.id, "settled") == [(Outcome.FAILED, "failed")]
    assert outcome_of(h_retry.id, "settled") == [
        (Outcome.RETRYING, None),
        (Outcome.SUCCEEDED, None),
    ]
    assert outcome_of(h_slow.id, "settled") == [(Outcome.TIMED_OUT, "timed_out")]
    assert outcome_of(h_denied.id, "settled") == [(Outcome.DENIED, "denied")]
    assert outcome_of(h_cancel.id, "settled") == [(Outcome.CANCELLED, "cancelled")]
    assert outcome_of(h_forged.id, "rejected") == [("unauthenticated",)]

    def attempt_outcomes(job_id: str) -> list[Outcome]:
        return [o for o, _ in outcome_of(job_id, finished)]

    assert attempt_outcomes(h_ok.id) == [Outcome.SUCCEEDED]
    assert attempt_outcomes(h_sync.id) == [Outcome.SUCCEEDED]
    assert attempt_outcomes(h_fail.id) == [Outcome.FAILED]
    assert attempt_outcomes(h_retry.id) == [Outcome.FAILED, Outcome.SUCCEEDED]
    assert attempt_outcomes(h_slow.id) == [Outcome.TIMED_OUT]
    assert attempt_outcomes(h_cancel.id) == [Outcome.CANCELLED]
    slow_duration = outcome_of(h_slow.id, finished)[0][1]
    assert 0.25 < slow_duration < 5

    # The safe fields are right.
    info = next(a[0] for n, a in rec.for_job(h_ok.id) if n == "before_enqueue")
    assert (info.task, info.queue, info.app, info.principal_id) == (
        "mw.ok",
        "default",
        unique_name,
        "user:7",
    )
    assert abs(info.enqueued_at - time.time()) < 60
    assert outcome_of(h_ok.id, "after_enqueue") == [(None,)]
    job = next(a[0] for n, a in rec.for_job(h_retry.id) if n == started)
    assert job.authenticated and job.task == "mw.retry" and job.attempt == 1
    assert (job.principal_id, job.worker_id, job.max_attempts) == ("user:7", worker_id, 2)
    assert job.enqueued_at <= time.time() and job.signer_id
    retried = [a[0] for n, a in rec.for_job(h_retry.id) if n == started]
    assert [j.attempt for j in retried] == [1, 2]
    forged = rec.for_job(h_forged.id)[0][1][0]
    assert not forged.authenticated and forged.task == "" and forged.principal_id is None

    # The worker's lifecycle, once each.
    assert [a[0] for a in rec.of("worker_started")] == [worker_id]
    assert [a[0] for a in rec.of("worker_stopped")] == [worker_id]

    # Nothing a hook was given carries the payload, the Secret, the principal's roles or
    # attributes, the result or the error message.
    assert MARKER not in repr(rec.calls)
    for _, args in rec.calls:
        for arg in args:
            if isinstance(arg, msgspec.Struct):
                assert MARKER not in repr(msgspec.structs.asdict(arg))


# -- process isolation: reported by the worker, wrappers run in the child -------------------


@pytest.fixture
def mwapp(url: str, tmp_path: Path) -> Iterator[tuple[ModuleType, Path]]:
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAULTQ_BROKER", url)
        mp.setenv("VAULTQ_KEYS", vaultq.Keyring.generate().to_json())
        mp.setenv("VAULTQ_TEST_MW_DIR", str(spool))
        paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        mp.setenv("PYTHONPATH", os.pathsep.join(paths))
        mp.syspath_prepend(str(REPO))
        sys.modules.pop("tests.middleware_app", None)
        module = importlib.import_module("tests.middleware_app")
        yield module, spool
        sys.modules.pop("tests.middleware_app", None)


async def test_isolated_attempts_are_reported_by_the_worker_not_the_child(
    mwapp: tuple[ModuleType, Path],
) -> None:
    module, spool = mwapp
    rec = module.recorder
    async with running_worker(module.app, concurrency=2):
        ok = await module.isolated_echo.enqueue(module.Word(MARKER), principal=PRINCIPAL)
        bad = await module.isolated_fail.enqueue(module.Word(MARKER), principal=PRINCIPAL)
        assert await ok.result(timeout=60) == MARKER
        with pytest.raises(vaultq.JobFailed):
            await bad.result(timeout=60)
        await wait_for(lambda: settled_or_rejected(rec, ok.id) and settled_or_rejected(rec, bad.id))
    # In this (the worker's) process: every event, once.
    for handle, outcome, reason in ((ok, Outcome.SUCCEEDED, None), (bad, Outcome.FAILED, "failed")):
        assert names(rec, handle.id) == [
            "before_enqueue",
            "after_enqueue",
            "attempt_started",
            "attempt_finished",
            "settled",
        ]
        (finished,) = [a for n, a in rec.for_job(handle.id) if n == "attempt_finished"]
        assert finished[1] == (Outcome.SUCCEEDED if reason is None else Outcome.FAILED)
        (settled,) = [a for n, a in rec.for_job(handle.id) if n == "settled"]
        assert settled[1:] == (outcome, reason)
        assert settled[0].isolation == "process"
    # In the children: only the wrapper around the call, with the same safe fields.
    children = [p for p in spool.iterdir() if p.name != f"hooks.{os.getpid()}"]
    assert children, "no isolated child recorded its around_sync"
    lines = [line for p in children for line in p.read_text().splitlines()]
    assert lines and all(line.startswith("around_sync ") for line in lines)
    for handle in (ok, bad):
        assert sum(handle.id in line for line in lines) == 1
    assert "principal_id='user:7'" in lines[0]
    everything = "".join(p.read_text() for p in spool.iterdir())
    assert MARKER not in everything
    assert MARKER not in repr(rec.calls)


# -- a middleware that raises, or misbehaves around the call ------------------------------


class Raising(vaultq.Middleware):
    """Raises from every hook; around_* raise before calling the task."""

    async def worker_started(self, worker: vaultq.WorkerInfo) -> None:
        raise RuntimeError("worker_started broke")

    async def worker_stopped(self, worker: vaultq.WorkerInfo) -> None:
        raise RuntimeError("worker_stopped broke")

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        trace["half"] = "written"
        raise RuntimeError("before_enqueue broke")

    def after_enqueue(self, job: vaultq.EnqueueInfo, error: str | None) -> None:
        raise RuntimeError("after_enqueue broke")

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        raise RuntimeError("attempt_started broke")

    def attempt_finished(
        self, job: vaultq.JobInfo, outcome: vaultq.Outcome, duration: float
    ) -> None:
        raise RuntimeError("attempt_finished broke")

    def settled(self, job: vaultq.JobInfo, outcome: vaultq.Outcome, reason: str | None) -> None:
        raise RuntimeError("settled broke")

    def rejected(self, job: vaultq.JobInfo, reason: str) -> None:
        raise RuntimeError("rejected broke")

    def around_sync(self, job: vaultq.JobInfo, call: Callable[[], None]) -> None:
        raise RuntimeError("around_sync broke")

    async def around_async(self, job: vaultq.JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        raise RuntimeError("around_async broke")


class Twice(vaultq.Middleware):
    """Calls the task twice and swallows its exception."""

    def around_sync(self, job: vaultq.JobInfo, call: Callable[[], None]) -> None:
        for _ in range(2):
            with contextlib.suppress(Exception):
                call()

    async def around_async(self, job: vaultq.JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        for _ in range(2):
            with contextlib.suppress(Exception):
                await call()


class Forgetful(vaultq.Middleware):
    """Returns without calling the task."""

    def around_sync(self, job: vaultq.JobInfo, call: Callable[[], None]) -> None:
        return None

    async def around_async(self, job: vaultq.JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        return None


class RaisingAfter(vaultq.Middleware):
    """Raises after the call, while the task's own exception may be in flight (it becomes
    the new exception's __context__: its message must not reach the log)."""

    def around_sync(self, job: vaultq.JobInfo, call: Callable[[], None]) -> None:
        try:
            call()
        finally:
            raise RuntimeError("around_sync broke after the call")  # noqa: B012

    async def around_async(self, job: vaultq.JobInfo, call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        finally:
            raise RuntimeError("around_async broke after the call")  # noqa: B012


class Count(msgspec.Struct, frozen=True):
    key: str
    fail: bool = False


@pytest.mark.parametrize("misbehaving", [Raising, RaisingAfter, Twice, Forgetful])
async def test_a_misbehaving_middleware_loses_no_job_and_runs_none_twice(
    url: str,
    unique_name: str,
    misbehaving: type[vaultq.Middleware],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = recorder_class()()
    # The recorder after the misbehaving one: it still sees everything.
    app = make_app(unique_name, url, middleware=[misbehaving(), rec])
    runs: dict[str, int] = {}
    lock = threading.Lock()

    def count(key: str) -> None:
        with lock:
            runs[key] = runs.get(key, 0) + 1

    @app.task(name="mw.count_async", retries=0)
    async def count_async(job: Count) -> str:
        count(job.key)
        if job.fail:
            raise ValueError(f"failing {MARKER}")
        return job.key

    @app.task(name="mw.count_sync", retries=0)
    def count_sync(job: Count) -> str:
        count(job.key)
        if job.fail:
            raise ValueError(f"failing {MARKER}")
        return job.key

    caplog.set_level(logging.WARNING, logger="vaultq.middleware")
    async with running_worker(app):
        a = await count_async.enqueue(Count("a"))
        s = await count_sync.enqueue(Count("s"))
        af = await count_async.enqueue(Count("af", fail=True))
        sf = await count_sync.enqueue(Count("sf", fail=True))
        assert await a.result(timeout=15) == "a"
        assert await s.result(timeout=15) == "s"
        # A wrapper that swallows the task's exception does not turn it into a success.
        for failed in (af, sf):
            with pytest.raises(vaultq.JobFailed):
                await failed.result(timeout=15)
        await wait_for(lambda: all(settled_or_rejected(rec, h.id) for h in (a, s, af, sf)))
    assert runs == {"a": 1, "s": 1, "af": 1, "sf": 1}
    if misbehaving is Raising:
        hooks = {
            "worker_started",
            "worker_stopped",
            "before_enqueue",
            "after_enqueue",
            "attempt_started",
            "attempt_finished",
            "settled",
            "around_sync",
            "around_async",
        }
        logged = caplog.text
        for hook in hooks:
            assert f"Raising.{hook} raised RuntimeError" in logged
        # The half-written trace of a hook that raised is kept (it is valid) ...
        started = [a[0] for n, a in rec.for_job(a.id) if n == "attempt_started"]
        assert dict(started[0].trace) == {"half": "written"}
    if misbehaving is RaisingAfter:
        assert "RaisingAfter.around_sync raised RuntimeError" in caplog.text
    if misbehaving is Forgetful:
        assert "returned without calling the task" in caplog.text
    # The task's own exception (it passed through the wrappers) is never logged here.
    ours = [r for r in caplog.records if r.name == "vaultq.middleware"]
    assert MARKER not in "\n".join(logging.Formatter().format(r) for r in ours)
    for h in (a, s):
        assert [x[1] for n, x in rec.for_job(h.id) if n == "settled"] == [Outcome.SUCCEEDED]


# -- trace context travels inside the seal -------------------------------------------------


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Propagate(vaultq.Middleware):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        trace["traceparent"] = TRACEPARENT
        trace["tracestate"] = f"vendor={MARKER}"

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        self.seen.append(dict(job.trace))


async def test_trace_added_before_enqueue_is_sealed_and_read_back_by_the_worker(
    url: str, unique_name: str
) -> None:
    mw = Propagate()
    app = make_app(unique_name, url, middleware=[mw])

    @app.task(name="mw.traced")
    async def traced(job: Count) -> str:
        return job.key

    handle = await traced.enqueue(Count("t"))
    broker = await app.broker()
    (delivery,) = await broker.fetch(
        [traced.queue], 1, consumer="peek", lease=30, block=1.0, max_size=1 << 20
    )
    # The broker holds sealed bytes only: neither the trace id nor its state is visible.
    assert TRACEPARENT.encode() not in delivery.envelope
    assert b"4bf92f3577b34da6" not in delivery.envelope
    assert MARKER.encode() not in delivery.envelope
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        for path in db.parent.glob(db.name + "*"):
            if path.is_file():  # not the -wake directory, which holds only sockets
                assert b"4bf92f3577b34da6" not in path.read_bytes()
    opened = open_job(
        delivery.envelope,
        app.keyring,
        app=app.name,
        tasks={traced.name},
        now=time.time(),
        queue=delivery.queue,
        job_id=delivery.job_id,
        skew=60,
    )
    assert opened.body.meta.trace == {"traceparent": TRACEPARENT, "tracestate": f"vendor={MARKER}"}
    await broker.settle([Release(delivery=delivery, not_before=app.clock.now())])

    async with running_worker(app):
        assert await handle.result(timeout=15) == "t"
    assert mw.seen == [{"traceparent": TRACEPARENT, "tracestate": f"vendor={MARKER}"}]
    await app.aclose()


async def test_an_oversized_or_malformed_trace_is_dropped_not_the_job(
    tmp_path: Path, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Huge(vaultq.Middleware):
        def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
            trace["big"] = "x" * (vaultq.middleware.MAX_TRACE_BYTES + 1)

    class NotText(vaultq.Middleware):
        def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, Any]) -> None:
            trace["n"] = 1

    seen: list[dict[str, str]] = []
    for bad in (Huge(), NotText()):
        app = make_app(unique_name, f"sqlite:///{tmp_path}/{type(bad).__name__}.db")
        app.add_middleware(bad)
        app.add_middleware(_Watch(lambda job: seen.append(dict(job.trace))))

        @app.task(name="mw.t")
        async def t(job: Count) -> str:
            return job.key

        caplog.set_level(logging.WARNING, logger="vaultq.middleware")
        async with running_worker(app):
            assert await (await t.enqueue(Count("x"))).result(timeout=15) == "x"
        await app.aclose()
    assert seen == [{}, {}]
    assert "enqueued without" in caplog.text


class _Watch(vaultq.Middleware):
    def __init__(self, fn: Callable[[vaultq.JobInfo], None]) -> None:
        self.fn = fn

    def attempt_started(self, job: vaultq.JobInfo) -> None:
        self.fn(job)


# -- the rest of the protocol ---------------------------------------------------------------


async def test_background_task_runs_in_the_worker_and_stops_with_it(
    tmp_path: Path, unique_name: str
) -> None:
    events: list[str] = []

    class Beat(vaultq.Middleware):
        async def worker_started(self, worker: vaultq.WorkerInfo) -> None:
            events.append(f"started {worker.app} {worker.concurrency} {worker.pid}")
            assert (worker.abandoned_threads, worker.fenced, worker.processed) == (0, 0, 0)

            async def beat() -> None:
                try:
                    while True:
                        events.append(f"beat in_flight={worker.in_flight}")
                        await anyio.sleep(0.05)
                finally:
                    events.append("beat cancelled")

            async def broken() -> None:
                raise RuntimeError("a background task that fails")

            worker.start_soon(beat, name="beat")
            worker.start_soon(broken)

        async def worker_stopped(self, worker: vaultq.WorkerInfo) -> None:
            events.append(f"stopped processed={worker.processed}")

    app = make_app(unique_name, f"sqlite:///{tmp_path}/v.db", middleware=[Beat()])

    @app.task(name="mw.noop")
    async def noop(job: Count) -> None:
        return None

    async with running_worker(app):
        await (await noop.enqueue(Count("n"))).result(timeout=15)
        await anyio.sleep(0.2)
    assert events[0] == f"started {unique_name} 4 {os.getpid()}"
    assert sum(e.startswith("beat in_flight") for e in events) >= 2
    # The background task was cancelled before worker_stopped ran; the broken one did
    # not take the worker down.
    assert events[-2:] == ["beat cancelled", "stopped processed=1"]


async def test_after_enqueue_hears_a_failed_enqueue(url: str, unique_name: str) -> None:
    rec = recorder_class()()
    app = make_app(unique_name, url, middleware=[rec])

    @app.task(name="mw.idem")
    async def idem(job: Count) -> None:
        return None

    await idem.enqueue(Count("1"), job_id="order-1")
    with pytest.raises(vaultq.DuplicateJob):
        await idem.enqueue(Count("2"), job_id="order-1")
    assert [a[1] for a in rec.of("after_enqueue")] == [None, "DuplicateJob"]
    assert [a[0].job_id for a in rec.of("before_enqueue")] == ["order-1", "order-1"]
    await app.aclose()


async def test_around_lists_still_wrap_each_call(tmp_path: Path, unique_name: str) -> None:
    app = make_app(unique_name, f"sqlite:///{tmp_path}/v.db")
    seen: list[str] = []

    def sync_wrap(call: Callable[[], Any]) -> Any:
        seen.append(f"sync in {threading.current_thread().name}")
        try:
            return call()
        finally:
            seen.append("sync out")

    async def async_wrap(call: Callable[[], Awaitable[Any]]) -> Any:
        seen.append("async in")
        try:
            return await call()
        finally:
            seen.append("async out")

    app.around_sync.append(sync_wrap)
    app.around_async.append(async_wrap)

    @app.task(name="mw.s")
    def s(job: Count) -> str:
        seen.append("sync body")
        return job.key

    @app.task(name="mw.a")
    async def a(job: Count) -> str:
        seen.append("async body")
        return job.key

    async with running_worker(app):
        assert await (await s.enqueue(Count("s"))).result(timeout=15) == "s"
        assert await (await a.enqueue(Count("a"))).result(timeout=15) == "a"
    assert seen == ["sync in vaultq-sync", "sync body", "sync out"] + [
        "async in",
        "async body",
        "async out",
    ]
    await app.aclose()


def test_only_middleware_is_accepted_and_no_hooks_means_nothing_dispatched(
    tmp_path: Path,
) -> None:
    app = make_app("plain", f"sqlite:///{tmp_path}/v.db")
    hooks = app.hooks()
    assert not hooks
    assert not (hooks.enqueue or hooks.jobs or hooks.lifecycle)
    assert not (hooks.wraps_sync or hooks.wraps_async)
    with pytest.raises(vaultq.ConfigurationError, match="not a vaultq.Middleware"):
        app.add_middleware(object())  # type: ignore[arg-type]

    class OnlySettled(vaultq.Middleware):
        def settled(self, job: vaultq.JobInfo, outcome: vaultq.Outcome, reason: str | None) -> None:
            pass

    only = OnlySettled()
    app.add_middleware(only)
    assert app.middleware == (only,)
    hooks = app.hooks()
    # Sorted per hook: a middleware is dispatched only for what it overrides.
    assert hooks.jobs and not hooks.enqueue and not hooks.wraps_sync and not hooks.lifecycle
    assert isinstance(hooks, Hooks)
    # The info structs encode as they are (an event stream can store them).
    job = vaultq.JobInfo(job_id="j", queue="q", attempt=1, app="a", worker_id="w")
    assert msgspec.json.decode(msgspec.json.encode(job), type=vaultq.JobInfo) == job


# -- the example in docs/extending.md ---------------------------------------------------------


def test_the_docs_show_the_example_file_verbatim() -> None:
    doc = (REPO / "docs" / "extending.md").read_text()
    example = (REPO / "examples" / "timing_middleware.py").read_text()
    blocks = doc.split("```python\n")
    assert any(block.split("```", 1)[0] == example for block in blocks[1:])


async def test_the_example_middleware_counts_times_and_carries_a_request_id(
    url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from examples.timing_middleware import Timing, request_id

    timing = Timing(slow=0.05)
    app = make_app(unique_name, url, middleware=[timing])

    @app.task(name="shop.ship", retries=0)
    async def ship(job: Count) -> str:
        if job.fail:
            raise ValueError("no stock")
        await anyio.sleep(0.1)
        return job.key

    forger = make_app(unique_name, url)
    forged = forger.task(name="shop.ship")(ship.fn)
    async with running_worker(app):
        token = request_id.set("req-42")
        try:
            good = await ship.enqueue(Count("a"))
        finally:
            request_id.reset(token)
        bad = await ship.enqueue(Count("b", fail=True))
        await forged.enqueue(Count("c"))
        await forger.aclose()
        assert await good.result(timeout=15) == "a"
        with pytest.raises(vaultq.JobFailed):
            await bad.result(timeout=15)
        await wait_for(lambda: sum(timing.outcomes.values()) == 2 and bool(timing.rejections))
    assert timing.outcomes == {("shop.ship", "succeeded"): 1, ("shop.ship", "failed"): 1}
    assert timing.rejections == {"unauthenticated": 1}
    assert sorted(timing.seen_request_ids) == ["", "req-42"]
    assert timing.busy >= 0.1
    await app.aclose()


async def test_an_expired_job_is_settled_expired_under_its_task_without_an_attempt(
    url: str, unique_name: str
) -> None:
    rec = recorder_class()()
    app = make_app(unique_name, url, middleware=[rec], clock_skew=0.2)

    @app.task(name="mw.stale", expires=0.2)
    async def stale(job: Count) -> None:
        return None

    handle = await stale.enqueue(Count("x"), principal=PRINCIPAL)
    await anyio.sleep(0.8)
    async with running_worker(app):
        with pytest.raises(vaultq.JobExpired):
            await handle.result(timeout=15)
        await wait_for(lambda: settled_or_rejected(rec, handle.id))
    assert names(rec, handle.id) == ["before_enqueue", "after_enqueue", "settled"]
    ((job, outcome, reason),) = [a for n, a in rec.for_job(handle.id) if n == "settled"]
    assert (outcome, reason) == (Outcome.EXPIRED, "expired")
    assert job.authenticated and job.task == "mw.stale" and job.principal_id == "user:7"
    await app.aclose()


async def test_what_attempt_started_puts_in_the_context_dies_with_the_attempt(
    url: str, unique_name: str
) -> None:
    """A middleware's context value (the tracing span) is freed when the attempt ends.

    The attempt's deadline timer copies the task's context when it is made, and asyncio
    keeps a cancelled timer until it purges its heap: were the timer made after
    ``attempt_started``, every finished job's span would stay alive with it, and the
    garbage collector ran a cycle every ~100 jobs at concurrency 50 for that alone."""
    import contextvars
    import gc
    import weakref

    current: contextvars.ContextVar[object] = contextvars.ContextVar("mw-test-current")

    class Marker:
        pass

    alive: list[weakref.ref[Marker]] = []
    tokens: dict[str, contextvars.Token[object]] = {}

    class Current(vaultq.Middleware):
        def attempt_started(self, job: vaultq.JobInfo) -> None:
            marker = Marker()
            alive.append(weakref.ref(marker))
            tokens[job.job_id] = current.set(marker)

        def attempt_finished(
            self, job: vaultq.JobInfo, outcome: vaultq.Outcome, duration: float
        ) -> None:
            current.reset(tokens.pop(job.job_id))

    app = make_app(unique_name, url, middleware=[Current()])

    @app.task(name="mw.sees", timeout=600)
    async def sees(job: Count) -> bool:
        return isinstance(current.get(None), Marker)

    gc.disable()  # only reference counting may free the markers here
    try:
        async with running_worker(app), anyio.create_task_group() as tg:
            # A live timer due before the jobs' deadlines, as a busy worker always has:
            # asyncio drops a cancelled timer only once it reaches the top of its heap.
            tg.start_soon(anyio.sleep, 60)
            handles = [await sees.enqueue(Count(str(i))) for i in range(5)]
            assert [await h.result(timeout=15) for h in handles] == [True] * 5
            assert len(alive) == 5 and not tokens  # every attempt_finished ran
            assert [ref() for ref in alive] == [None] * 5
            tg.cancel_scope.cancel()
    finally:
        gc.enable()
