"""``vaultq/tracing.py``'s hooks with the real OpenTelemetry SDK, in one process: the
W3C context it writes and reads, and the spans it skips when the sampler would drop
them (the end-to-end run across processes is tests/test_observability.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq.middleware import EnqueueInfo, JobInfo, Outcome

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import (  # noqa: E402
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
)
from opentelemetry.trace.propagation.tracecontext import (  # noqa: E402
    TraceContextTextMapPropagator,
)

from vaultq.tracing import Tracing  # noqa: E402


class Setup:
    def __init__(self, sampler: Sampler) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(tracer_provider=self.provider)

    def send(self, job_id: str) -> dict[str, str]:
        info = EnqueueInfo(
            job_id=job_id, task="t", queue="q", app="a", principal_id=None,
            enqueued_at=0.0, not_before=0.0,
        )  # fmt: skip
        carrier: dict[str, str] = {}
        self.tracing.before_enqueue(info, carrier)
        self.tracing.after_enqueue(info, None)
        return carrier

    def process(self, job_id: str, carrier: dict[str, str]) -> trace.SpanContext:
        """One attempt; returns the span context of a span the task itself starts."""
        job = JobInfo(
            job_id=job_id, queue="q", attempt=1, app="a", worker_id="w", authenticated=True,
            task="t", trace=carrier,
        )  # fmt: skip
        seen: list[trace.SpanContext] = []

        async def task() -> None:
            inner = self.provider.get_tracer("app").start_span("inner")
            seen.append(inner.get_span_context())
            inner.end()

        # As the runtime does: the task runs in the context the attempt hooks run in.
        self.tracing.attempt_started(job)
        anyio.run(task)
        self.tracing.attempt_finished(job, Outcome.SUCCEEDED, 0.0)
        assert trace.get_current_span() is trace.INVALID_SPAN  # detached again
        return seen[0]

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


def sampled_flag(carrier: dict[str, str]) -> bool:
    # The last field's low bit (the SDK also sets 0x02, "random trace id").
    return bool(int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 1)


@pytest.fixture
def setups() -> Iterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for s in made:
        s.provider.shutdown()


def test_a_sampled_trace_continues_in_the_worker_with_its_tracestate(
    setups: list[Setup],
) -> None:
    s = Setup(ALWAYS_ON)
    setups.append(s)
    carrier = s.send("j1")
    # The header the generic propagator reads back to the same context.
    ctx = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
    (send,) = s.spans("send q")
    assert ctx.get_span_context().span_id == send.context.span_id
    assert sampled_flag(carrier)
    carrier["tracestate"] = "vendor=abc"
    inner = s.process("j1", carrier)
    (process,) = s.spans("process q")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert process.parent.trace_state.get("vendor") == "abc"
    assert dict(process.attributes or {}) == {
        "messaging.system": "vaultq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "q",
        "messaging.message.id": "j1",
        "vaultq.task": "t",
        "vaultq.attempt": 1,
        "vaultq.outcome": "succeeded",
    }
    # The task's own span is a child of the process span.
    (child,) = s.spans("inner")
    assert child.parent is not None and child.parent.span_id == process.context.span_id
    assert inner.trace_id == send.context.trace_id


def test_an_unsampled_trace_creates_no_worker_span_and_stays_one_trace(
    setups: list[Setup],
) -> None:
    # The producer samples nothing; the worker's ParentBased sampler (default) follows.
    producer, worker = Setup(ParentBased(ALWAYS_OFF)), Setup(ParentBased(ALWAYS_ON))
    setups += [producer, worker]
    carrier = producer.send("j2")
    assert not sampled_flag(carrier)
    inner = worker.process("j2", carrier)
    assert worker.exporter.get_finished_spans() == ()  # neither process nor inner
    # The task ran in the producer's trace, unsampled: its spans are not new root traces
    # (which the root sampler, ALWAYS_ON here, would have recorded).
    assert inner.trace_id == int(carrier["traceparent"].split("-")[1], 16)
    assert not inner.trace_flags.sampled


def test_an_unsampled_task_sees_the_producers_span_context_and_tracestate(
    setups: list[Setup],
) -> None:
    # No worker span: the task's current span is the producer's, its context (built on
    # first request from the sealed traceparent) exactly the one the producer sent.
    producer, worker = Setup(ParentBased(ALWAYS_OFF)), Setup(ParentBased(ALWAYS_ON))
    setups += [producer, worker]
    carrier = producer.send("j6")
    carrier["tracestate"] = "vendor=abc"
    sent = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
    job = JobInfo(
        job_id="j6", queue="q", attempt=1, app="a", worker_id="w", authenticated=True,
        task="t", trace=carrier,
    )  # fmt: skip
    worker.tracing.attempt_started(job)
    try:
        current = trace.get_current_span()
        assert not current.is_recording()
        assert current.get_span_context() == sent.get_span_context()
        assert current.get_span_context().is_remote
        assert current.get_span_context().trace_state.get("vendor") == "abc"
        assert f"{sent.get_span_context().span_id:016x}" in repr(current)
    finally:
        worker.tracing.attempt_finished(job, Outcome.SUCCEEDED, 0.0)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert worker.exporter.get_finished_spans() == ()


def test_a_sampler_that_records_unsampled_parents_is_asked(setups: list[Setup]) -> None:
    producer = Setup(ParentBased(ALWAYS_OFF))
    worker = Setup(ParentBased(ALWAYS_OFF, remote_parent_not_sampled=ALWAYS_ON))
    setups += [producer, worker]
    carrier = producer.send("j3")
    worker.process("j3", carrier)
    (process,) = worker.spans("process q")
    assert process.context.trace_id == int(carrier["traceparent"].split("-")[1], 16)


def test_other_versions_go_through_the_propagator_and_invalid_ids_start_a_trace(
    setups: list[Setup],
) -> None:
    s = Setup(ALWAYS_ON)
    setups.append(s)
    future = {"traceparent": "01-" + "ab" * 16 + "-" + "cd" * 8 + "-01-extra"}
    s.process("j4", future)
    zeros = {"traceparent": "00-" + "0" * 32 + "-" + "cd" * 8 + "-01"}
    s.process("j5", zeros)
    by_id = {(p.attributes or {})["messaging.message.id"]: p for p in s.spans("process q")}
    assert by_id["j4"].context.trace_id == int("ab" * 16, 16)
    assert by_id["j4"].parent is not None and by_id["j4"].parent.span_id == int("cd" * 8, 16)
    assert by_id["j5"].parent is None  # invalid parent: a new trace


class Item(msgspec.Struct, frozen=True):
    n: int


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_in_a_real_worker_the_tasks_own_spans_are_children_of_its_process_span(
    kind: str, tmp_path: Path, setups: list[Setup]
) -> None:
    s = Setup(ALWAYS_ON)
    setups.append(s)
    app = make_app("tr", f"sqlite:///{tmp_path}/q.db")
    app.add_middleware(s.tracing)
    inner_tracer = s.provider.get_tracer("app")

    if kind == "async":

        @app.task(name="work", policy=vaultq.allow_all)
        async def work_async(job: Item) -> int:
            inner_tracer.start_span("inner").end()
            return job.n

    else:

        @app.task(name="work", policy=vaultq.allow_all)
        def work_sync(job: Item) -> int:  # in a worker thread
            inner_tracer.start_span("inner").end()
            return job.n

    async def go() -> None:
        task = app.get_task("work")
        assert task is not None
        async with running_worker(app):
            handles = [await task.enqueue(Item(n)) for n in range(3)]
            for n, handle in enumerate(handles):
                assert await handle.result(timeout=60) == n
        await app.aclose()

    anyio.run(go)
    process = {p.context.span_id: p for p in s.spans("process default")}
    inner = s.spans("inner")
    assert len(process) == 3 and len(inner) == 3
    for span in inner:
        assert span.parent is not None and span.parent.span_id in process
    assert {p.parent.span_id for p in process.values() if p.parent} == {
        x.context.span_id for x in s.spans("send default")
    }


@pytest.mark.parametrize("fast", [True, False], ids=["contextvar", "api"])
def test_the_attempt_context_keeps_the_callers_values_and_is_restored(
    setups: list[Setup], monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    # The worker sets OpenTelemetry's current context directly (one ContextVar.set/reset)
    # instead of set_span_in_context + attach/detach: the context the task sees must
    # still be the caller's plus the span (baggage kept), and the caller's afterwards.
    from opentelemetry import baggage
    from opentelemetry import context as otel_context

    import vaultq.tracing as tracing_module

    assert tracing_module._FAST is not None  # the stock runtime context: the fast path
    if not fast:
        monkeypatch.setattr(tracing_module, "_FAST", None)
    for sampler in (ParentBased(ALWAYS_OFF), ParentBased(ALWAYS_ON)):
        producer, worker = Setup(sampler), Setup(sampler)
        setups += [producer, worker]
        carrier = producer.send("j7")
        job = JobInfo(
            job_id="j7", queue="q", attempt=1, app="a", worker_id="w", authenticated=True,
            task="t", trace=carrier,
        )  # fmt: skip
        outer = otel_context.attach(baggage.set_baggage("tenant", "t1"))
        try:
            before = otel_context.get_current()
            worker.tracing.attempt_started(job)
            try:
                assert baggage.get_baggage("tenant") == "t1"
                sc = trace.get_current_span().get_span_context()
                assert f"{sc.trace_id:032x}" == carrier["traceparent"].split("-")[1]
            finally:
                worker.tracing.attempt_finished(job, Outcome.SUCCEEDED, 0.0)
            assert otel_context.get_current() is before
        finally:
            otel_context.detach(outer)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_context_detached_elsewhere_is_logged_not_raised(
    setups: list[Setup], caplog: pytest.LogCaptureFixture
) -> None:
    # attempt_finished in another context than attempt_started (a middleware stack run
    # out of order): the token cannot be reset there; as OpenTelemetry's detach, log it.
    import contextvars

    producer, worker = Setup(ParentBased(ALWAYS_ON)), Setup(ParentBased(ALWAYS_ON))
    setups += [producer, worker]
    job = JobInfo(
        job_id="j8", queue="q", attempt=1, app="a", worker_id="w", authenticated=True,
        task="t", trace=producer.send("j8"),
    )  # fmt: skip
    contextvars.copy_context().run(worker.tracing.attempt_started, job)
    with caplog.at_level("ERROR", logger="opentelemetry.context"):
        worker.tracing.attempt_finished(job, Outcome.SUCCEEDED, 0.0)
    assert "Failed to detach context" in caplog.text
    assert len(worker.spans("process q")) == 1  # the span still ended


def test_a_warm_worker_treats_every_traceparent_as_the_first_one(setups: list[Setup]) -> None:
    # After its first job the worker knows its sampler drops unsampled remote parents and
    # takes an inline path for them: the results must be those of the general path for
    # unsampled, sampled, all-zero and malformed traceparents alike, job after job.
    producer = Setup(ParentBased(ALWAYS_OFF))
    sampled_producer = Setup(ParentBased(ALWAYS_ON))
    worker = Setup(ParentBased(ALWAYS_ON))
    setups += [producer, sampled_producer, worker]
    worker.process("warm", producer.send("warm"))
    assert worker.tracing._drops_unsampled  # the inline path is the one taken below
    for i in range(3):
        carrier = producer.send(f"u{i}")
        carrier["tracestate"] = f"vendor=v{i}"
        sent = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
        job = JobInfo(
            job_id=f"u{i}", queue="q", attempt=1, app="a", worker_id="w", authenticated=True,
            task="t", trace=carrier,
        )  # fmt: skip
        worker.tracing.attempt_started(job)
        try:
            current = trace.get_current_span()
            assert not current.is_recording()
            assert current.get_span_context() == sent.get_span_context()
            assert current.get_span_context().trace_state.get("vendor") == f"v{i}"
        finally:
            worker.tracing.attempt_finished(job, Outcome.SUCCEEDED, 0.0)
        assert trace.get_current_span() is trace.INVALID_SPAN
        # A span the task starts joins the producer's trace, unsampled: dropped.
        inner = worker.process(f"u{i}", carrier)
        assert inner.trace_id == sent.get_span_context().trace_id
        assert not inner.trace_flags.sampled
    assert worker.spans("process q") == []
    # A sampled producer's job still gets its process span, child of the producer's.
    carrier = sampled_producer.send("s1")
    worker.process("s1", carrier)
    (process,) = worker.spans("process q")
    assert process.parent is not None
    assert f"{process.parent.span_id:016x}" == carrier["traceparent"].split("-")[2]
    # All-zero ids and malformed values are no parent: the worker starts a new trace.
    bad = [
        "00-" + "0" * 32 + "-00f067aa0ba902b7-00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-00",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-00",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    ]
    for n, value in enumerate(bad):
        inner = worker.process(f"b{n}", {"traceparent": value})
        assert inner.trace_id != 0x4BF92F3577B34DA6A3CE929D0E0E4736, value
        assert inner.trace_flags.sampled, value  # a new trace, sampled by ALWAYS_ON
    assert len(worker.spans("process q")) == 1 + len(bad)
