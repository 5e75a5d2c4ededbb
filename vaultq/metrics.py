"""Prometheus metrics for vaultq workers and producers (``pip install 'vaultq[metrics]'``).

``vaultq worker myapp.jobs --metrics-port 9108`` installs :class:`PrometheusMetrics` and
serves ``/metrics``; in code, ``app.add_middleware(PrometheusMetrics(app))`` and
:func:`serve_metrics`. ``docs/observability.md`` lists every metric.

Labels are bounded by construction: ``task`` (a registered task name, taken only from
authenticated envelopes), ``queue`` (the worker's queues), ``outcome`` and ``reason``
(vaultq's own codes), and ``policy`` on denials (:func:`policy_label`: the kind or rule
name of the policy the task was registered with, one per task, never its arguments).
Never a job id, a principal, a payload value or anything an unauthenticated broker
entry could choose.

With ``--processes N`` the metrics use prometheus-client's *multiprocess mode*: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a private temporary directory before it
starts the children, each child writes its samples there, and the supervisor alone
serves ``/metrics`` on the port, summing the children (counters and histograms survive
a child's restart; gauges count live processes only). One scrape target per host.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio

from vaultq.errors import BrokerError, ConfigurationError
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome, WorkerInfo
from vaultq.policies import Policy, policy_name

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "Prometheus metrics need the prometheus-client package: pip install 'vaultq[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "DEPTH_INTERVAL",
    "MULTIPROC_ENV",
    "PrometheusMetrics",
    "multiprocess_registry",
    "policy_label",
    "serve_metrics",
]

log = logging.getLogger("vaultq.metrics")

DEPTH_INTERVAL: Final = 5.0
"""Seconds between two reads of the queue depths from the broker (never per scrape)."""
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
_DEPTH_STATES: Final = ("ready", "delayed", "running", "dead")
_LABEL_TEXT: Final = re.compile(r"[A-Za-z0-9_.:<>-]{1,100}")


def policy_label(policy: Policy | None) -> str:
    """The ``policy`` label of ``vaultq_denials_total``: a bounded, code-defined name.

    The policy's kind for the built-in ones (``require_permission``, ``all_of``...), a
    rule's name (``@rule(name="orders.own")``) or a function's qualname -- the audit
    name (``policy_name``) cut before its arguments, so no role, permission or signer
    list goes into a label (the audit log has them). Anything else -- a name with other
    characters, longer than 100 -- is ``other``; ``none`` when there is no policy.
    """
    if policy is None:
        return "none"
    kind = policy_name(policy).split("(", 1)[0]
    return kind if _LABEL_TEXT.fullmatch(kind) else "other"


def _multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class PrometheusMetrics(Middleware):
    """Counts and times every job the app enqueues or runs (see the module docstring).

    ``app``: the app whose broker the queue depths are read from (every
    ``depth_interval`` seconds, by each worker). ``registry``: where the metrics are
    registered (default: a private registry, served by :func:`serve_metrics`).
    """

    def __init__(
        self,
        app: App,
        *,
        registry: CollectorRegistry | None = None,
        depth_interval: float = DEPTH_INTERVAL,
    ) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.depth_interval = depth_interval
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._by_task: dict[tuple[str, str], _Series] = {}
        r = self.registry
        self.enqueued = Counter(
            "vaultq_jobs_enqueued", "Jobs enqueued by this process", ["task", "queue"], registry=r
        )
        self.jobs = Counter(
            "vaultq_jobs",
            "Deliveries settled, by outcome (succeeded, failed, timed_out, cancelled, expired, "
            "denied, retrying, released, dropped, internal_error)",
            ["task", "queue", "outcome"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "vaultq_attempt_duration_seconds",
            "Wall-clock time of one attempt (the task call), by outcome",
            ["task", "queue", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_latency = Histogram(
            "vaultq_queue_latency_seconds",
            "Seconds from when a job could start (enqueue or its delay) to its attempt's start",
            ["task", "queue"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "vaultq_jobs_in_flight",
            "Attempts running now",
            ["task", "queue"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.retries = Counter(
            "vaultq_retries",
            "Attempts that failed and will run again",
            ["task", "queue"],
            registry=r,
        )
        self.rejections = Counter(
            "vaultq_rejections",
            "Deliveries refused without running (the envelope failed its checks), by reason",
            ["queue", "reason"],
            registry=r,
        )
        self.denials = Counter(
            "vaultq_denials",
            "Jobs the task's policy refused in the worker, by the policy's kind or rule name",
            ["task", "queue", "policy"],
            registry=r,
        )
        self._policies: dict[str, str] = {}
        self.depth = Gauge(
            "vaultq_queue_depth",
            f"Jobs in the queue by state ({', '.join(_DEPTH_STATES)}), read from the broker "
            f"every {depth_interval:g} s",
            ["queue", "state"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.reclaimed = Counter(
            "vaultq_leases_reclaimed",
            "Deliveries of jobs whose previous lease ran out (a worker died or stalled)",
            ["queue"],
            registry=r,
        )
        self.fenced = Counter(
            "vaultq_leases_lost",
            "Attempts this worker cancelled (or never started) because their lease could no "
            "longer be proven",
            registry=r,
        )
        self.abandoned = Gauge(
            "vaultq_abandoned_threads",
            "Sync attempts stopped at their deadline whose threads still run",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.workers = Gauge(
            "vaultq_worker_processes",
            "Worker processes serving",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_concurrency = Gauge(
            "vaultq_worker_concurrency",
            "Jobs a worker may run at once",
            registry=r,
            multiprocess_mode="livesum",
        )

    def _series(self, task: str, queue: str) -> _Series:
        # The hot path (three hooks per attempt) looks up one bundle per (task, queue)
        # instead of a child per metric and label tuple.
        found = self._by_task.get((task, queue))
        if found is None:
            found = self._by_task[task, queue] = _Series(self, task, queue)
        return found

    def _child(self, metric: Any, *labels: str) -> Any:
        # prometheus-client's labels() validates and locks on every call; the label sets
        # are few (tasks x queues x outcomes), so each child is looked up once.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- producer -------------------------------------------------------------------------

    def after_enqueue(self, job: EnqueueInfo, error: str | None) -> None:
        if error is None:
            self._child(self.enqueued, job.task, job.queue).inc()

    # -- worker ---------------------------------------------------------------------------

    async def worker_started(self, worker: WorkerInfo) -> None:
        self.workers.inc()
        self.worker_concurrency.inc(worker.concurrency)
        worker.start_soon(self._watch, worker, name="queue depth and worker counters")

    async def worker_stopped(self, worker: WorkerInfo) -> None:
        self.workers.dec()
        self.worker_concurrency.dec(worker.concurrency)
        if _multiprocess():
            # This process's "live" gauges leave the sum (a crashed child's stay until
            # the supervisor's directory is removed: counters are what to alert on).
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call,unused-ignore]

    # The three per-attempt hooks below are the hot path: one dict lookup per hook for
    # the (task, queue) bundle, then prebound methods of the label children (no property,
    # no labels() call, no max() call per job).

    def attempt_started(self, job: JobInfo) -> None:
        series = self._by_task.get((job.task, job.queue)) or self._series(job.task, job.queue)
        start = series.start or series.bind_start()
        start[0]()
        enqueued_at, not_before = job.enqueued_at, job.not_before
        ready_at = enqueued_at if enqueued_at > not_before else not_before
        if ready_at > 0:
            waited = time.time() - ready_at
            start[1](waited if waited > 0.0 else 0.0)

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        series = self._by_task.get((job.task, job.queue)) or self._series(job.task, job.queue)
        (series.start or series.bind_start())[2]()
        (series.durations.get(outcome) or series.bind_duration(outcome))(duration)

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        if job.redelivered:
            self._child(self.reclaimed, job.queue).inc()
        # An unopened delivery's task name is the broker's claim: never a label value.
        task = job.task if job.authenticated else ""
        series = self._by_task.get((task, job.queue)) or self._series(task, job.queue)
        (series.counts.get(outcome) or series.bind_count(outcome))()
        if outcome is Outcome.RETRYING:
            series.retries.inc()
        elif outcome is Outcome.DENIED:
            self._child(self.denials, series.task, job.queue, self._policy_of(series.task)).inc()

    def _policy_of(self, task: str) -> str:
        # The policy the worker evaluated: the task's own, else the app's default (the
        # same app object the worker runs). Looked up once per task name.
        label = self._policies.get(task)
        if label is None:
            found = self.app.get_task(task) if task else None
            if found is None:
                label = "unknown"
            else:
                label = policy_label(found.policy or self.app.default_policy)
            self._policies[task] = label
        return label

    def rejected(self, job: JobInfo, reason: str) -> None:
        if job.redelivered:
            self._child(self.reclaimed, job.queue).inc()
        self._child(self.rejections, job.queue, reason).inc()

    async def _watch(self, worker: WorkerInfo) -> None:
        broker = await self.app.broker()
        fenced = 0
        while True:
            self.abandoned.set(worker.abandoned_threads)
            now_fenced = worker.fenced
            if now_fenced > fenced:
                self.fenced.inc(now_fenced - fenced)
            fenced = now_fenced
            for queue in worker.queues:
                try:
                    stats = await broker.stats(queue)
                except BrokerError as exc:
                    log.debug("queue depth of %s not read: %s", queue, type(exc).__name__)
                    continue
                for state in _DEPTH_STATES:
                    self.depth.labels(queue, state).set(getattr(stats, state))
            await anyio.sleep(self.depth_interval)


class _Series:
    """The children of one (task, queue), each made on first use (a series appears in
    /metrics once it has something to say: no zero ``task=""`` in-flight gauge), kept as
    the bound methods the hooks call."""

    __slots__ = ("_metrics", "counts", "durations", "queue", "start", "task")

    def __init__(self, metrics: PrometheusMetrics, task: str, queue: str) -> None:
        self._metrics = metrics
        self.task, self.queue = task, queue
        self.start: tuple[Callable[[], None], Callable[[float], None], Callable[[], None]] | None
        self.start = None
        """In-flight ``inc``, queue latency ``observe``, in-flight ``dec``."""
        self.durations: dict[Outcome, Callable[[float], None]] = {}
        """Attempt duration ``observe`` by outcome."""
        self.counts: dict[Outcome, Callable[[], None]] = {}
        """Settled deliveries' ``inc`` by outcome."""

    def bind_start(
        self,
    ) -> tuple[Callable[[], None], Callable[[float], None], Callable[[], None]]:
        metrics = self._metrics
        gauge = metrics.in_flight.labels(self.task, self.queue)
        latency = metrics.queue_latency.labels(self.task, self.queue)
        if _multiprocess():
            # Each process writes its own value to the shared directory: a real gauge.
            self.start = (gauge.inc, latency.observe, gauge.dec)
        else:
            # One process: the gauge reads a plain count when scraped, instead of taking
            # prometheus-client's lock twice per attempt (the hooks run on one thread).
            live = _Live()
            gauge.set_function(live.value)
            self.start = (live.inc, latency.observe, live.dec)
        return self.start

    def bind_duration(self, outcome: Outcome) -> Callable[[float], None]:
        child = self._metrics.attempt_duration.labels(self.task, self.queue, outcome.value)
        found: Callable[[float], None] = child.observe
        self.durations[outcome] = found
        return found

    def bind_count(self, outcome: Outcome) -> Callable[[], None]:
        child = self._metrics.jobs.labels(self.task, self.queue, outcome.value)
        found: Callable[[], None] = child.inc
        self.counts[outcome] = found
        return found

    @property
    def retries(self) -> Any:
        return self._metrics._child(self._metrics.retries, self.task, self.queue)


class _Live:
    """A count the worker's loop changes and a scrape reads (an int read is atomic)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> None:
        self.n += 1

    def dec(self) -> None:
        self.n -= 1

    def value(self) -> float:
        return float(self.n)


def multiprocess_registry() -> CollectorRegistry:
    """A registry summing the samples every process wrote to ``$PROMETHEUS_MULTIPROC_DIR``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call,unused-ignore]
    return registry


def serve_metrics(port: int, address: str, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` on ``http://address:port/metrics`` from a daemon thread; returns
    the server (``.shutdown()`` stops it). Raises ConfigurationError when the port is taken."""
    try:
        started = prometheus_client.start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {address}:{port} ({exc.strerror}): pick another "
            "--metrics-port or stop what listens there"
        ) from None
    return started[0] if isinstance(started, tuple) else started
