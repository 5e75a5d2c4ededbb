"""``vaultq/metrics.py`` without a worker: the metric names, the dashboard in examples/
uses only metrics that exist, label values stay bounded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from msgspec.structs import replace as msgspec_replace

import vaultq
from vaultq.middleware import JobInfo, Outcome

pytest.importorskip("prometheus_client")

from prometheus_client import generate_latest  # noqa: E402

from vaultq.metrics import PrometheusMetrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "vaultq-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


class Empty(msgspec.Struct, frozen=True):
    pass


def metrics() -> PrometheusMetrics:
    return PrometheusMetrics(vaultq.App("m", broker="sqlite:///:memory:"))


def exposed_names(m: PrometheusMetrics) -> set[str]:
    names = set()
    for family in m.registry.collect():
        for suffix in SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def test_the_grafana_dashboard_loads_and_queries_only_existing_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["title"] == "vaultq" and doc["panels"]
    known = exposed_names(metrics())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {name for e in exprs for name in re.findall(r"\bvaultq_[a-z_]+\b", e)}
    assert used, exprs
    assert used <= known, used - known
    # every metric vaultq exports is on the dashboard (counters/gauges by their name)
    families = {f.name for f in metrics().registry.collect()}
    assert {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used} >= families


pytestmark = pytest.mark.anyio


def test_an_unauthenticated_delivery_never_becomes_a_task_label() -> None:
    m = metrics()
    forged = JobInfo(
        job_id="j1", queue="default", attempt=1, app="m", worker_id="w", task="attacker-chosen"
    )
    m.settled(forged, Outcome.DROPPED, None)
    m.rejected(forged, "unauthenticated")
    text = generate_latest(m.registry).decode()
    assert "attacker-chosen" not in text and "j1" not in text
    assert 'vaultq_rejections_total{queue="default",reason="unauthenticated"} 1.0' in text


async def test_reclaimed_leases_lost_leases_and_abandoned_threads_are_counted() -> None:
    from vaultq.middleware import WorkerInfo

    m = metrics()
    again = JobInfo(
        job_id="j2",
        queue="default",
        attempt=1,
        app="m",
        worker_id="w",
        authenticated=True,
        task="t",
        redelivered=True,
    )
    m.settled(again, Outcome.SUCCEEDED, None)
    m.rejected(msgspec_replace(again, authenticated=False), "replayed")
    m.settled(msgspec_replace(again, redelivered=False), Outcome.SUCCEEDED, None)
    stats = [0, 0, 3, 2]  # in flight, processed, abandoned threads, fenced
    started: list[object] = []
    info = WorkerInfo(
        worker_id="w",
        app="m",
        queues=["default"],
        concurrency=4,
        stats=lambda: tuple(stats),  # type: ignore[arg-type,return-value]
        spawn=lambda fn, name: started.append(fn),
    )
    await m.worker_started(info)
    watch = started[0]
    with anyio.move_on_after(0.5):
        await watch()  # type: ignore[operator]
    text = generate_latest(m.registry).decode()
    assert 'vaultq_leases_reclaimed_total{queue="default"} 2.0' in text
    assert "vaultq_leases_lost_total 2.0" in text
    assert "vaultq_abandoned_threads 3.0" in text


def test_the_denial_policy_label_is_a_bounded_name_never_arguments() -> None:
    from vaultq.metrics import policy_label

    @vaultq.rule(name="orders.own")
    def own(request: vaultq.PolicyRequest) -> bool:
        return False

    def plain(request: vaultq.PolicyRequest) -> bool:
        return False

    assert policy_label(vaultq.require_permission("perm-SECRETISH")) == "require_permission"
    assert policy_label(vaultq.all_of(own, vaultq.require_role("r1"))) == "all_of"
    assert policy_label(own) == "orders.own"
    assert policy_label(plain).endswith(".<locals>.plain")
    assert policy_label(vaultq.rule(plain, name='has spaces and "quotes"')) == "other"
    assert policy_label(vaultq.rule(plain, name="x" * 101)) == "other"
    assert policy_label(None) == "none"

    # In the metric: the task's own policy, else the app's default; looked up by the
    # authenticated task name only.
    app = vaultq.App("m", broker="sqlite:///:memory:", default_policy=vaultq.deny_all)

    @app.task(name="t.own", policy=vaultq.require_role("role-SECRETISH"))
    async def with_own(job: Empty) -> None: ...

    @app.task(name="t.default")
    async def with_default(job: Empty) -> None: ...

    m = PrometheusMetrics(app)
    for task in ("t.own", "t.default", "t.gone"):
        job = JobInfo(
            job_id="j1", queue="q", attempt=1, app="m", worker_id="w", task=task,
            authenticated=True,
        )  # fmt: skip
        m.settled(job, Outcome.DENIED, "denied")
    text = generate_latest(m.registry).decode()
    assert 'vaultq_denials_total{policy="require_role",queue="q",task="t.own"} 1.0' in text
    assert 'vaultq_denials_total{policy="deny_all",queue="q",task="t.default"} 1.0' in text
    assert 'vaultq_denials_total{policy="unknown",queue="q",task="t.gone"} 1.0' in text
    assert "SECRETISH" not in text


async def test_the_in_flight_gauge_counts_running_attempts_in_a_real_worker(
    tmp_path: Path, unique_name: str
) -> None:
    # One process: the gauge is read from a plain count when scraped (not written per
    # attempt): it must still say how many attempts run now, per task and queue.
    from support.workers import make_app, running_worker

    app = make_app(unique_name, f"sqlite:///{tmp_path}/m.db")
    m = PrometheusMetrics(app)
    app.add_middleware(m)
    entered = anyio.Event()
    release = anyio.Event()

    @app.task(name="met.hold")
    async def hold(job: Empty) -> None:
        entered.set()
        await release.wait()

    @app.task(name="met.quick")
    async def quick(job: Empty) -> None:
        return None

    def in_flight(task: str) -> float | None:
        labels = {"task": task, "queue": "default"}
        return m.registry.get_sample_value("vaultq_jobs_in_flight", labels)

    async with running_worker(app):
        held = await hold.enqueue(Empty())
        with anyio.fail_after(15):
            await entered.wait()
        assert in_flight("met.hold") == 1
        await (await quick.enqueue(Empty())).result(timeout=15)
        assert in_flight("met.quick") == 0
        assert in_flight("met.hold") == 1
        release.set()
        await held.result(timeout=15)
        assert in_flight("met.hold") == 0
        text = generate_latest(m.registry).decode()
        assert 'vaultq_jobs_in_flight{queue="default",task="met.hold"} 0.0' in text
    await app.aclose()


# -- the lock-free per-attempt counts (vaultq/metrics_counts.py) --------------------------


class Marked(msgspec.Struct, frozen=True):
    text: str


def scrape_http(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def assert_histograms_consistent(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> int:
    """Every histogram series: cumulative buckets never decrease, ``+Inf`` is ``_count``,
    the sum is not negative. Returns how many series were checked."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    for (name, labels), v in found.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault((name[: -len("_bucket")], rest), []).append((float(le), v))
    for (base, labels), buckets in series.items():
        counts = [n for _, n in sorted(buckets)]
        assert counts == sorted(counts), (base, labels, counts)
        assert found[(f"{base}_count", labels)] == counts[-1]
        assert found[(f"{base}_sum", labels)] >= 0
    return len(series)


@pytest.mark.broker_kinds("sqlite", "redis")
async def test_counts_per_label_are_exact_for_500_concurrent_jobs_scraped_over_http(
    broker_url: str, unique_name: str
) -> None:
    # 500 jobs, 50 at a time, over four tasks and five outcomes, scraped over HTTP while
    # they run (a scrape reads what the worker's loop writes) and once drained.
    import threading

    from support.workers import make_app, running_worker

    from vaultq.metrics import serve_metrics

    marker = f"PLAINTEXT-{unique_name}"
    app = make_app(unique_name, broker_url)
    m = PrometheusMetrics(app)
    app.add_middleware(m)

    @app.task(name="c.ok", policy=vaultq.allow_all)
    async def ok(job: Marked) -> str:
        await anyio.sleep(0)
        return job.text

    @app.task(name="c.boom", policy=vaultq.allow_all, retries=0)
    async def boom(job: Marked) -> None:
        raise vaultq.Fatal(job.text)

    @app.task(name="c.flaky", policy=vaultq.allow_all, retries=1, backoff=0.01)
    def flaky(job: Marked) -> str:  # sync: its attempts run in threads
        if vaultq.current_job().attempt == 1:
            raise RuntimeError(job.text)
        return job.text

    @vaultq.rule(name="c.enqueue_only")
    def enqueue_only(request: vaultq.PolicyRequest) -> bool:
        return request.stage != "run"

    @app.task(name="c.denied", policy=enqueue_only)
    async def denied(job: Marked) -> None:
        return None

    port = free_port()
    server = serve_metrics(port, "127.0.0.1", m.registry)
    scrapes: list[str] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            scrapes.append(scrape_http(port))
            stop.wait(0.02)

    plan: list[tuple[vaultq.Task[Any, Any], int]] = [
        (ok, 200),
        (boom, 150),
        (flaky, 100),
        (denied, 50),
    ]
    scraping = threading.Thread(target=scraper)
    try:
        async with running_worker(app, concurrency=50, block=0.05) as worker:
            scraping.start()
            for task, n in plan:
                for start in range(0, n, 50):
                    await task.enqueue_many([Marked(marker)] * min(50, n - start))
            with anyio.fail_after(120):
                while worker.processed < 600:  # 500 jobs + 100 retries settled
                    await anyio.sleep(0.02)
        stop.set()
        scraping.join(timeout=30)
        final = parsed(scrape_http(port))
    finally:
        stop.set()
        server.shutdown()
        await app.aclose()

    jobs = "vaultq_jobs_total"
    expected = {
        ("c.ok", "succeeded"): 200,
        ("c.boom", "failed"): 150,
        ("c.flaky", "retrying"): 100,
        ("c.flaky", "succeeded"): 100,
        ("c.denied", "denied"): 50,
    }
    got = {
        (dict(labels)["task"], dict(labels)["outcome"]): v
        for (name, labels), v in final.items()
        if name == jobs
    }
    assert got == expected
    durations = "vaultq_attempt_duration_seconds_count"
    assert sample(final, durations, task="c.ok", queue="default", outcome="succeeded") == 200
    assert sample(final, durations, task="c.boom", queue="default", outcome="failed") == 150
    assert sample(final, durations, task="c.flaky", queue="default", outcome="failed") == 100
    assert sample(final, durations, task="c.flaky", queue="default", outcome="succeeded") == 100
    assert sample(final, durations, task="c.denied", queue="default", outcome="denied") is None
    latency = "vaultq_queue_latency_seconds_count"
    assert sample(final, latency, task="c.ok", queue="default") == 200
    assert sample(final, latency, task="c.flaky", queue="default") == 200  # both attempts
    assert sample(final, latency, task="c.denied", queue="default") is None  # never started
    for name in ("c.ok", "c.boom", "c.flaky"):
        assert sample(final, "vaultq_jobs_in_flight", task=name, queue="default") == 0
    assert sample(final, "vaultq_retries_total", task="c.flaky", queue="default") == 100
    denials = "vaultq_denials_total"
    assert sample(final, denials, task="c.denied", queue="default", policy="c.enqueue_only") == 50
    assert assert_histograms_consistent(final) == 4 + 3  # durations + latencies

    # Every scrape during the run was well formed and consistent, and counts only grew.
    assert scrapes
    previous = 0.0
    for text in scrapes:
        during = parsed(text)
        assert_histograms_consistent(during)
        settled = sum(v for (name, _), v in during.items() if name == jobs)
        assert previous <= settled <= 600
        previous = settled
        in_flight = [v for (name, _), v in during.items() if name == "vaultq_jobs_in_flight"]
        assert all(0 <= v <= 50 for v in in_flight), in_flight
    for text in [*scrapes, scrape_text(final)]:
        assert marker not in text and unique_name not in text.replace(f'app="{unique_name}"', "")


def scrape_text(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    return repr(found)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def observations(n: int) -> list[float]:
    # Values on, just below and just above every bound, zero, huge and negative (a clock
    # step): the ``le`` edge cases of both histograms.
    from vaultq.metrics_counts import DURATION_BUCKETS, LATENCY_BUCKETS

    edges = [float(b) for b in (*DURATION_BUCKETS, *LATENCY_BUCKETS)]
    values = [0.0, -0.5, 1e9, *edges, *(b * 0.999 for b in edges), *(b * 1.001 for b in edges)]
    return [values[i % len(values)] * (1 + (i // len(values)) * 1e-7) for i in range(n)]


def test_histograms_match_what_prometheus_client_would_count() -> None:
    # The same observations into the hooks and into prometheus-client's own Histogram:
    # identical buckets and count, the same sum.
    from prometheus_client import CollectorRegistry, Histogram

    from vaultq.metrics_counts import DURATION, DURATION_BUCKETS, LATENCY, LATENCY_BUCKETS

    reference = CollectorRegistry()
    ref_duration = Histogram(
        *DURATION[:2], DURATION[2], buckets=DURATION_BUCKETS, registry=reference
    )
    ref_latency = Histogram(*LATENCY[:2], LATENCY[2], buckets=LATENCY_BUCKETS, registry=reference)
    m = metrics()
    now = 1_700_000_000.0
    import time as real_time

    values = observations(2000)
    outcomes = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMED_OUT)
    for i, value in enumerate(values):
        outcome = outcomes[i % 3]
        job = JobInfo(
            job_id=f"j{i}", queue=f"q{i % 2}", attempt=1, app="m", worker_id="w",
            authenticated=True, task=f"t{i % 4}", enqueued_at=now, not_before=0.0,
        )  # fmt: skip
        m.attempt_finished(job, outcome, value)
        ref_duration.labels(f"t{i % 4}", f"q{i % 2}", outcome.value).observe(value)
    # Queue latency is measured against the clock: observe what the hook computes.
    waits: list[float] = []
    for i in range(300):
        ready = real_time.time() - values[i % len(values)]
        job = JobInfo(
            job_id=f"l{i}", queue="q0", attempt=1, app="m", worker_id="w",
            authenticated=True, task="lat", enqueued_at=ready, not_before=0.0,
        )  # fmt: skip
        m.attempt_started(job)
        waits.append(max(real_time.time() - ready, 0.0))
    ours = parsed(generate_latest(m.registry).decode())
    ref = parsed(generate_latest(reference).decode())
    for (name, labels), v in ref.items():
        if name.startswith("vaultq_attempt_duration_seconds") and not name.endswith("_created"):
            if name.endswith("_sum"):
                assert ours[(name, labels)] == pytest.approx(v, rel=1e-12), (name, labels)
            else:
                assert ours[(name, labels)] == v, (name, labels)
    duration_series = {k for k in ours if k[0] == "vaultq_attempt_duration_seconds_count"}
    assert len(duration_series) == 4 * 3  # t0..t3 x their outcomes, nothing else
    assert sample(ours, "vaultq_queue_latency_seconds_count", task="lat", queue="q0") == 300
    assert sample(
        ours, "vaultq_queue_latency_seconds_sum", task="lat", queue="q0"
    ) == pytest.approx(sum(waits), rel=1e-3, abs=1.0)
    assert sample(ours, "vaultq_jobs_in_flight", task="lat", queue="q0") == 300
    # Both families carry prometheus-client's _created samples, like its own objects.
    assert {n for n, _ in ref if n.endswith("_created")} <= {n for n, _ in ours}
    del ref_latency


def test_threads_counting_at_once_lose_nothing() -> None:
    # Each thread that runs hooks (a second worker, the test kit in another thread)
    # writes its own table: eight threads, 5000 attempts each, scraped meanwhile.
    import threading

    m = metrics()
    per_thread, threads = 5000, 8
    go = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        go.wait()
        try:
            for i in range(per_thread):
                job = JobInfo(
                    job_id=f"{n}-{i}", queue="default", attempt=1, app="m", worker_id="w",
                    authenticated=True, task=f"t{i % 3}", enqueued_at=1.0, not_before=0.0,
                )  # fmt: skip
                m.attempt_started(job)
                outcome = Outcome.SUCCEEDED if i % 2 else Outcome.FAILED
                m.attempt_finished(job, outcome, 0.001 * (i % 7))
                m.settled(job, outcome, None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    go.wait()
    seen = 0.0
    while any(t.is_alive() for t in workers):
        found = parsed(generate_latest(m.registry).decode())
        assert_histograms_consistent(found)
        total = sum(v for (name, _), v in found.items() if name == "vaultq_jobs_total")
        assert total >= seen
        seen = total
    for t in workers:
        t.join()
    assert not errors
    found = parsed(generate_latest(m.registry).decode())
    for task in ("t0", "t1", "t2"):
        per_task = sum(1 for i in range(per_thread) if f"t{i % 3}" == task) * threads
        ok = sum(1 for i in range(per_thread) if f"t{i % 3}" == task and i % 2) * threads
        labels = {"task": task, "queue": "default"}
        assert sample(found, "vaultq_jobs_total", **labels, outcome="succeeded") == ok
        assert sample(found, "vaultq_jobs_total", **labels, outcome="failed") == per_task - ok
        durations = "vaultq_attempt_duration_seconds_count"
        assert sample(found, durations, **labels, outcome="succeeded") == ok
        assert sample(found, "vaultq_queue_latency_seconds_count", **labels) == per_task
        assert sample(found, "vaultq_jobs_in_flight", **labels) == 0
