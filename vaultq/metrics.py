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
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Final

import anyio

from vaultq.errors import BrokerError, ConfigurationError
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome, WorkerInfo
from vaultq.policies import Policy, policy_name

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "Prometheus metrics need the prometheus-client package: pip install 'vaultq[metrics]'"
    ) from exc

# Below the check above: both import prometheus-client.
from vaultq.metrics_counts import (
    DURATION_BUCKETS,
    LATENCY_BUCKETS,
    JobCounts,
    Slot,
)
from vaultq.metrics_shared import SharedCounts

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

_DEPTH_STATES: Final = ("ready", "delayed", "running", "dead")
# Read per settled job: an enum member read from its class is a Python-level lookup on 3.11.
_RETRYING: Final = Outcome.RETRYING
_DENIED: Final = Outcome.DENIED
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

    The per-attempt families (``vaultq_jobs``, ``vaultq_attempt_duration_seconds``,
    ``vaultq_queue_latency_seconds``, ``vaultq_jobs_in_flight``) are plain numbers the
    hooks bump without a lock, exposed at scrape time by a collector on ``registry``
    (``vaultq/metrics_counts.py``); in a ``--processes`` child, prometheus-client's
    multiprocess objects (``vaultq/metrics_shared.py``). The others change on rare
    events (or in producers' threads: ``vaultq_jobs_enqueued``) and stay
    prometheus-client objects.
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
        r = self.registry
        self.counts: JobCounts | None = None
        """This process's per-attempt counts (None in a ``--processes`` child)."""
        self.shared: SharedCounts | None = None
        """The per-attempt metrics of a ``--processes`` child (None in one process)."""
        if _multiprocess():
            self.shared = SharedCounts(r)
        else:
            self.counts = JobCounts()
            r.register(self.counts)
        self._local = None if self.counts is None else self.counts.local
        self.enqueued = Counter(
            "vaultq_jobs_enqueued", "Jobs enqueued by this process", ["task", "queue"], registry=r
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
        # Producers' threads (enqueue_sync, web servers) call this concurrently: a
        # prometheus-client counter, whose lock makes that safe.
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

    # The three per-attempt hooks below are the hot path: in one process, one dict lookup
    # in this thread's table for the (task, queue) slot, then plain int updates and a
    # bisect for the histogram bucket -- no lock, no label work, no call per metric.

    def attempt_started(self, job: JobInfo) -> None:
        enqueued_at, not_before = job.enqueued_at, job.not_before
        ready_at = enqueued_at if enqueued_at > not_before else not_before
        local = self._local
        if local is None:
            waited = max(time.time() - ready_at, 0.0) if ready_at > 0 else None
            self.shared.started(job.task, job.queue, waited)  # type: ignore[union-attr]
            return
        slot = local.slots.get((job.task, job.queue)) or self._slot(job.task, job.queue)
        latency = slot.latency or slot.started()
        slot.running += 1
        if ready_at > 0:
            waited = time.time() - ready_at
            if waited < 0.0:
                waited = 0.0
            latency.counts[bisect_left(LATENCY_BUCKETS, waited)] += 1
            latency.total += waited

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        local = self._local
        if local is None:
            self.shared.finished(job.task, job.queue, outcome, duration)  # type: ignore[union-attr]
            return
        slot = local.slots.get((job.task, job.queue)) or self._slot(job.task, job.queue)
        if slot.latency is None:
            slot.started()
        slot.running -= 1
        durations = slot.durations.get(outcome) or slot.duration(outcome)
        durations.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        durations.total += duration

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        if job.redelivered:
            self._child(self.reclaimed, job.queue).inc()
        # An unopened delivery's task name is the broker's claim: never a label value.
        task = job.task if job.authenticated else ""
        local = self._local
        if local is None:
            self.shared.settled(task, job.queue, outcome)  # type: ignore[union-attr]
        else:
            slot = local.slots.get((task, job.queue)) or self._slot(task, job.queue)
            (slot.outcomes.get(outcome) or slot.outcome(outcome)).n += 1
        if outcome is _RETRYING:
            self._child(self.retries, task, job.queue).inc()
        elif outcome is _DENIED:
            self._child(self.denials, task, job.queue, self._policy_of(task)).inc()

    def _slot(self, task: str, queue: str) -> Slot:
        return self.counts.slot(task, queue)  # type: ignore[union-attr]

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
