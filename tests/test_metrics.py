"""``vaultq/metrics.py`` without a worker: the metric names, the dashboard in examples/
uses only metrics that exist, label values stay bounded."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
