"""The per-attempt metrics of a ``--processes N`` child, written as prometheus-client's
multiprocess files (``pip install 'vaultq[metrics]'``).

The supervisor serves the sum of its children's files (``vaultq/metrics.py``): a child's
numbers must be in prometheus-client's own metric objects, whose values it writes to
``$PROMETHEUS_MULTIPROC_DIR``. One process uses ``vaultq/metrics_counts.py`` instead
(plain numbers, no lock per job). Same families, same labels.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vaultq.metrics_counts import (
    DURATION,
    DURATION_BUCKETS,
    IN_FLIGHT,
    JOBS,
    LATENCY,
    LATENCY_BUCKETS,
)
from vaultq.middleware import Outcome

__all__ = ["SharedCounts"]

_Start = tuple[Callable[[], None], Callable[[float], None], Callable[[], None]]


class SharedCounts:
    """The four per-attempt families as prometheus-client objects, and each (task,
    queue)'s children looked up once (``labels()`` validates and locks per call)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(*JOBS[:2], JOBS[2], registry=registry)
        self.attempt_duration = Histogram(
            *DURATION[:2], DURATION[2], buckets=DURATION_BUCKETS, registry=registry
        )
        self.queue_latency = Histogram(
            *LATENCY[:2], LATENCY[2], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.in_flight = Gauge(
            *IN_FLIGHT[:2], IN_FLIGHT[2], registry=registry, multiprocess_mode="livesum"
        )
        self._series: dict[tuple[str, str], _Series] = {}

    def series(self, task: str, queue: str) -> _Series:
        found = self._series.get((task, queue))
        if found is None:
            found = self._series[task, queue] = _Series(self, task, queue)
        return found

    def started(self, task: str, queue: str, waited: float | None) -> None:
        series = self.series(task, queue)
        start = series.start or series.bind_start()
        start[0]()
        if waited is not None:
            start[1](waited)

    def finished(self, task: str, queue: str, outcome: Outcome, duration: float) -> None:
        series = self.series(task, queue)
        (series.start or series.bind_start())[2]()
        (series.durations.get(outcome) or series.bind_duration(outcome))(duration)

    def settled(self, task: str, queue: str, outcome: Outcome) -> None:
        series = self.series(task, queue)
        (series.counts.get(outcome) or series.bind_count(outcome))()


class _Series:
    """The children of one (task, queue), each made on first use (a series appears in
    /metrics once it has something to say), kept as the bound methods the hooks call."""

    __slots__ = ("_shared", "counts", "durations", "queue", "start", "task")

    def __init__(self, shared: SharedCounts, task: str, queue: str) -> None:
        self._shared = shared
        self.task, self.queue = task, queue
        self.start: _Start | None = None
        """In-flight ``inc``, queue latency ``observe``, in-flight ``dec``."""
        self.durations: dict[Outcome, Callable[[float], None]] = {}
        self.counts: dict[Outcome, Callable[[], None]] = {}

    def bind_start(self) -> _Start:
        gauge = self._shared.in_flight.labels(self.task, self.queue)
        latency = self._shared.queue_latency.labels(self.task, self.queue)
        self.start = (gauge.inc, latency.observe, gauge.dec)
        return self.start

    def bind_duration(self, outcome: Outcome) -> Callable[[float], None]:
        child = self._shared.attempt_duration.labels(self.task, self.queue, outcome.value)
        found: Callable[[float], None] = child.observe
        self.durations[outcome] = found
        return found

    def bind_count(self, outcome: Outcome) -> Callable[[], None]:
        child = self._shared.jobs.labels(self.task, self.queue, outcome.value)
        found: Callable[[], None] = child.inc
        self.counts[outcome] = found
        return found
