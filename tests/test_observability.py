"""Prometheus metrics, OpenTelemetry traces and the job event stream, against real worker
processes on Redis and SQLite (``vaultq/metrics.py``, ``vaultq/tracing.py``,
``vaultq/events.py``). A unique marker in every payload and in the principal's
attributes must appear in none of /metrics, spans, events or heartbeats."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from obs_app import NEVER_A_LABEL, Note, build, span_doc
from support.workers import ROOT, start_worker_process, wait_until_serving, worker_env

import vaultq

pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from support.brokers import url_for  # noqa: E402

from vaultq.brokers.monitor import JobEvent  # noqa: E402
from vaultq.events import EventStream  # noqa: E402
from vaultq.tracing import Tracing  # noqa: E402


def task_of(app: vaultq.App, name: str) -> vaultq.Task[Any, Any]:
    found = app.get_task(name)
    assert found is not None, name
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[s.name, frozenset(s.labels.items())] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Run:
    """One worker process (or supervisor) on a fresh app, with a producer app beside it."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.url = url_for(kind, tmp_path, request)
        self.name = "o" + uuid.uuid4().hex[:10]
        self.keys = vaultq.Keyring.generate()
        self.marker = "MARK" + uuid.uuid4().hex
        self.spans = tmp_path / "spans.jsonl"
        self.port = free_port()
        self.env = worker_env(
            {
                "VAULTQ_BROKER": self.url,
                "VAULTQ_KEYS": self.keys.to_json(),
                "VAULTQ_APP": "obs_app:app",
                "OBS_APP": self.name,
                "OBS_SPANS": str(self.spans),
            }
        )
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.app = build(self.name, broker=self.url, keyring=self.keys)
        self.app.add_middleware(Tracing(tracer_provider=provider))
        self.principal = vaultq.Principal("user:7", attrs={"email": f"{self.marker}@example.com"})

    @property
    def worker_spans(self) -> list[dict[str, Any]]:
        if not self.spans.exists():
            return []
        return [json.loads(line) for line in self.spans.read_text().splitlines()]

    def raw_broker_bytes(self) -> bytes:
        """Everything the broker holds for this app, as raw bytes."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            out = b""
            for key in client.scan_iter(match=f"vaultq:{{{self.name}*"):
                kind = client.type(key)
                if kind == b"stream":
                    out += repr(client.xrange(key)).encode()
                elif kind == b"hash":
                    out += repr(client.hgetall(key)).encode()
                elif kind == b"zset":
                    out += repr(client.zrange(key, 0, -1)).encode()
                elif kind == b"list":
                    out += repr(client.lrange(key, 0, -1)).encode()
                elif kind == b"string":
                    out += repr(client.get(key)).encode()
                elif kind == b"set":
                    out += repr(client.smembers(key)).encode()
            client.close()
            return out
        db = sqlite3.connect(self.url.removeprefix("sqlite:///"))
        out = b""
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - table names from sqlite_master
                out += repr(row).encode()
        db.close()
        return out


@pytest.fixture
def run_of(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Run]:
    return lambda kind: Run(kind, tmp_path, request)


@contextlib.contextmanager
def worker(run: Run, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker_process(
        "obs_app:app", run.env, "--metrics-port", str(run.port), "--events",
        "--health-interval", "0.3", *args,
    )  # fmt: skip
    try:
        wait_until_serving([proc])
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.log_path.read_text()[-3000:]  # type: ignore[attr-defined]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.other_processes
@pytest.mark.broker_kinds("sqlite", "redis")  # reads what they store
def test_metrics_traces_and_events_of_a_real_run(
    broker_kind: str, run_of: Callable[[str], Run]
) -> None:
    run = run_of(broker_kind)
    run.app.add_middleware(EventStream(run.app))

    def task(name: str) -> vaultq.Task[Any, Any]:
        found = run.app.get_task(name)
        assert found is not None, name
        return found

    m = run.marker
    handles: dict[str, list[Any]] = {}

    async def produce() -> None:
        note = Note(text=m, n=5)
        p = run.principal
        handles["ok"] = [await task("ok").enqueue(note, principal=p) for _ in range(3)]
        handles["boom"] = [await task("boom").enqueue(note, principal=p) for _ in range(2)]
        handles["flaky"] = [await task("flaky").enqueue(note, principal=p)]
        handles["slow"] = [await task("slow").enqueue(note, principal=p)]
        handles["guarded"] = [await task("guarded").enqueue(note, principal=p)]
        handles["guarded_role"] = [await task("guarded_role").enqueue(note, principal=p)]
        handles["sync_ok"] = [await task("sync_ok").enqueue(note, principal=p)]
        handles["later"] = [await task("ok").enqueue(note, principal=p, delay=300)]
        # Sealed with keys the worker does not trust: rejected, never run.
        stranger = build(run.name, broker=run.url, keyring=vaultq.Keyring.generate())
        stranger_ok = stranger.get_task("ok")
        assert stranger_ok is not None
        handles["stranger"] = [await stranger_ok.enqueue(note, principal=p)]
        await stranger.aclose()
        await anyio.sleep(0.5)  # let the producer's event flush finish
        await run.app.aclose()

    async def outcomes() -> None:
        for h in handles["ok"]:
            assert await h.result(timeout=60) == m
        for h in handles["boom"]:
            with pytest.raises(vaultq.JobFailed):
                await h.result(timeout=60)
        assert await handles["flaky"][0].result(timeout=60) == 5
        assert await handles["sync_ok"][0].result(timeout=60) == 5
        with pytest.raises(vaultq.JobTimedOut):
            await handles["slow"][0].result(timeout=60)
        with pytest.raises(vaultq.JobDenied):
            await handles["guarded"][0].result(timeout=60)
        with pytest.raises(vaultq.JobDenied):
            await handles["guarded_role"][0].result(timeout=60)
        await run.app.aclose()

    with worker(run) as proc:
        anyio.run(produce)
        anyio.run(outcomes)

        # -- /metrics over HTTP: the expected count per label, no plaintext anywhere ----
        def counted() -> bool:
            f = samples(scrape(run.port))
            settled = sum(v for (name, _), v in f.items() if name == "vaultq_jobs_total")
            return (
                settled == 11  # every settlement counted (just after it is written)
                and value(f, "vaultq_rejections_total", queue="default", reason="unauthenticated")
                == 1
                and value(f, "vaultq_queue_depth", queue="default", state="delayed") == 1
            )

        wait_for(counted, "the rejection and the queue depth in /metrics")
        text = scrape(run.port)
        f = samples(text)
        jobs = "vaultq_jobs_total"
        q = "default"
        assert value(f, jobs, task="ok", queue=q, outcome="succeeded") == 3
        assert value(f, jobs, task="sync_ok", queue=q, outcome="succeeded") == 1
        assert value(f, jobs, task="boom", queue=q, outcome="failed") == 2
        assert value(f, jobs, task="flaky", queue=q, outcome="retrying") == 1
        assert value(f, jobs, task="flaky", queue=q, outcome="succeeded") == 1
        assert value(f, jobs, task="slow", queue=q, outcome="timed_out") == 1
        assert value(f, jobs, task="guarded", queue=q, outcome="denied") == 1
        assert value(f, "vaultq_retries_total", task="flaky", queue=q) == 1
        assert value(f, jobs, task="guarded_role", queue=q, outcome="denied") == 1
        # Denials by task and policy: a rule's name, a composite's kind (no arguments).
        denials = "vaultq_denials_total"
        assert value(f, denials, task="guarded", queue=q, policy="only_at_enqueue") == 1
        assert value(f, denials, task="guarded_role", queue=q, policy="any_of") == 1
        assert NEVER_A_LABEL not in text
        duration = "vaultq_attempt_duration_seconds_count"
        assert value(f, duration, task="ok", queue=q, outcome="succeeded") == 3
        assert value(f, duration, task="slow", queue=q, outcome="timed_out") == 1
        assert value(f, duration, task="flaky", queue=q, outcome="failed") == 1
        assert value(f, "vaultq_queue_latency_seconds_count", task="ok", queue=q) == 3
        assert value(f, "vaultq_jobs_in_flight", task="ok", queue=q) == 0
        assert value(f, "vaultq_worker_processes") == 1
        ids = [h.id for hs in handles.values() for h in hs]
        for secret in (m, "example.com", *ids):
            assert secret not in text
        label_values = {v for (_, labels) in f for (k, v) in labels if k != "le"}
        assert label_values <= {
            "ok", "sync_ok", "boom", "flaky", "slow", "guarded", "guarded_role", "default", "",
            "only_at_enqueue", "any_of",
            "succeeded", "failed", "retrying", "timed_out", "denied", "interrupted",
            "cancelled", "unauthenticated", "ready", "delayed", "running", "dead",
        }, label_values  # fmt: skip

        # -- the trace context is sealed: nowhere in the broker's raw bytes -------------
        later = handles["later"][0]
        send = {
            (s.attributes or {})["messaging.message.id"]: s
            for s in run.exporter.get_finished_spans()
        }
        raw = run.raw_broker_bytes()
        assert later.id.encode() in raw  # the delayed job's entry is there...
        later_trace = f"{send[later.id].context.trace_id:032x}"
        assert later_trace.encode() not in raw  # ...but not its trace context
        assert b"traceparent" not in raw and m.encode() not in raw

        # -- heartbeats carry no plaintext ----------------------------------------------
        beats = cli(run.env, "workers", "--json")
        assert beats.returncode == 0 and str(proc.pid) in beats.stdout
        assert m not in beats.stdout and "example.com" not in beats.stdout

    # -- spans: the worker's "process" spans continue the producer's trace --------------
    spans = run.worker_spans
    for h in handles["ok"] + handles["flaky"] + handles["sync_ok"]:
        sent = send[h.id]
        mine = [s for s in spans if s["attributes"].get("messaging.message.id") == h.id]
        assert mine, h.id
        for s in mine:
            assert s["name"] == "process default" and s["kind"] == "CONSUMER"
            assert s["trace_id"] == f"{sent.context.trace_id:032x}"
            assert s["parent_id"] == f"{sent.context.span_id:016x}"
            a = s["attributes"]
            assert a["messaging.system"] == "vaultq"
            assert a["messaging.destination.name"] == "default"
            assert a["messaging.operation.type"] == "process"
    flaky = [
        s for s in spans if s["attributes"].get("messaging.message.id") == handles["flaky"][0].id
    ]
    assert [
        (s["attributes"]["vaultq.attempt"], s["attributes"]["vaultq.outcome"]) for s in flaky
    ] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert flaky[0]["status"] == "ERROR" and flaky[0]["description"] is None
    sent_ok = send[handles["ok"][0].id]
    assert sent_ok.kind.name == "PRODUCER" and sent_ok.name == "send default"
    assert (sent_ok.attributes or {})["messaging.operation.type"] == "send"
    everything = json.dumps(spans) + repr([span_doc(s) for s in run.exporter.get_finished_spans()])
    assert m not in everything and "example.com" not in everything

    # -- the event stream: each job's life in order, no plaintext ------------------------
    out = cli(run.env, "events", "--json", "--last", "1000")
    assert out.returncode == 0, out.stderr
    assert m not in out.stdout and "example.com" not in out.stdout
    events = [json.loads(line) for line in out.stdout.splitlines()]

    def life(job_id: str) -> list[tuple[str, str]]:
        return in_order([(e["kind"], e.get("reason", "")) for e in events if e["job_id"] == job_id])

    assert life(handles["flaky"][0].id) == [
        ("enqueued", ""),
        ("started", ""),
        ("retried", "failed"),
        ("started", ""),
        ("succeeded", ""),
    ]
    assert life(handles["boom"][0].id) == [("enqueued", ""), ("started", ""), ("dead", "failed")]
    assert life(handles["slow"][0].id)[-1] == ("dead", "timed_out")
    assert life(handles["guarded"][0].id) == [("enqueued", ""), ("dead", "denied")]
    assert life(handles["stranger"][0].id) == [("dead", "rejected:unauthenticated")]
    assert life(handles["later"][0].id) == [("enqueued", "")]


def in_order(seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A job's events with its one ``enqueued`` moved first: the producer and the worker
    write from two processes, so on a busy machine the worker's ``started`` may reach the
    stream before the producer's ``enqueued``; each writer's own events keep their order."""
    enqueued = [e for e in seen if e[0] == "enqueued"]
    assert len(enqueued) <= 1, seen
    return enqueued + [e for e in seen if e[0] != "enqueued"]


@pytest.mark.redis
def test_processes_share_one_metrics_port(run_of: Callable[[str], Run]) -> None:
    run = run_of("redis")
    with worker(run, "--processes", "2") as proc:
        wait_for(
            lambda: value(samples(scrape(run.port)), "vaultq_worker_processes") == 2,
            "both processes counted on the supervisor's port",
        )

        async def produce() -> None:
            handles = [await task_of(run.app, "ok").enqueue(Note(text="x")) for _ in range(20)]
            for h in handles:
                assert await h.result(timeout=60) == "x"
            await run.app.aclose()

        anyio.run(produce)
        # Counted just after the settlement is written (the producer may see it first).
        wait_for(
            lambda: (
                value(
                    samples(scrape(run.port)),
                    "vaultq_jobs_total",
                    task="ok",
                    queue="default",
                    outcome="succeeded",
                )
                == 20
            ),
            "20 successes summed over both processes",
        )
        # The per-attempt families of the children (prometheus-client's multiprocess
        # files, not the one-process counts): histograms and the in-flight gauge summed.
        f = samples(scrape(run.port))
        labels = {"task": "ok", "queue": "default"}
        duration = "vaultq_attempt_duration_seconds_count"
        assert value(f, duration, **labels, outcome="succeeded") == 20
        assert value(f, "vaultq_queue_latency_seconds_count", **labels) == 20
        assert value(f, "vaultq_jobs_in_flight", **labels) == 0
        beats = json.loads(cli(run.env, "workers", "--json").stdout)["workers"]
        assert len([w for w in beats if w["alive"]]) == 2
        assert proc.poll() is None


@pytest.mark.other_processes
@pytest.mark.broker_kinds("sqlite", "redis")  # Monitoring
def test_events_follow_shows_a_live_run_in_order(
    broker_kind: str, run_of: Callable[[str], Run]
) -> None:
    run = run_of(broker_kind)
    run.app.add_middleware(EventStream(run.app))
    with worker(run):

        async def sentinel() -> None:
            broker = await run.app.broker()
            await broker.add_events([JobEvent("started", "sentinel", "default")])  # type: ignore[attr-defined]
            await run.app.aclose()

        anyio.run(sentinel)
        follower = subprocess.Popen(
            [sys.executable, "-m", "vaultq", "events", "--follow", "--last", "1", "--json"],
            env=run.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        try:
            # The newest event first: from then on the follower reads what comes after it.
            assert json.loads(lines.get(timeout=60))["job_id"] == "sentinel"

            async def produce() -> str:
                handle = await task_of(run.app, "flaky").enqueue(Note(text=run.marker, n=2))
                assert await handle.result(timeout=60) == 2
                await run.app.aclose()
                return handle.id

            job_id = anyio.run(produce)
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 30
            while not {("succeeded", ""), ("enqueued", "")} <= set(seen) and (
                time.monotonic() < deadline
            ):
                try:
                    event = json.loads(lines.get(timeout=1))
                except queue.Empty:
                    continue
                assert run.marker not in json.dumps(event)
                if event["job_id"] == job_id:
                    seen.append((event["kind"], event.get("reason", "")))
            assert in_order(seen) == [
                ("enqueued", ""),
                ("started", ""),
                ("retried", "failed"),
                ("started", ""),
                ("succeeded", ""),
            ]
        finally:
            follower.send_signal(signal.SIGINT)
            try:
                follower.wait(timeout=30)
            except subprocess.TimeoutExpired:
                follower.kill()
                follower.wait()
