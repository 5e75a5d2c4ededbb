"""The per-attempt metrics of one worker process, kept as plain numbers and turned into
Prometheus metric families only when scraped (``pip install 'vaultq[metrics]'``).

:class:`~vaultq.metrics.PrometheusMetrics` counts every attempt three times (start,
finish, settlement). prometheus-client's metric objects take a lock and walk the
histogram's bounds on every ``inc``/``observe``; at a no-op job's 60-80 µs that was a
few per cent of the job. Here the hooks bump ints in a :class:`Slot` per (task, queue)
and a histogram bucket found by ``bisect``; :class:`JobCounts`, a prometheus-client
collector registered on the exporter's registry, builds the same families (names,
types, labels, help, buckets, ``_created``) from them at scrape time.

No locks, and still exact with several threads: each thread that runs hooks (a worker's
event loop; a second worker or the test kit in another thread) writes only its own
table of slots (a ``threading.local``), so no two threads ever update the same number;
a scrape sums the tables. A scrape that reads a slot while its thread writes it sees
each number before or after that write (the GIL makes a single read or store atomic):
the sample of one family may miss the attempt another already counts, as with
prometheus-client's separately locked values.

Used in one process only; with ``--processes N`` the children write prometheus-client's
multiprocess files instead (``vaultq/metrics_shared.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Final, TypeVar

from prometheus_client import Metric
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "DURATION",
    "DURATION_BUCKETS",
    "IN_FLIGHT",
    "JOBS",
    "LATENCY",
    "LATENCY_BUCKETS",
    "Buckets",
    "Count",
    "JobCounts",
    "Slot",
]

DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)

# (name, help, label names): the one definition of each family, for both exporters.
JOBS: Final = (
    "vaultq_jobs",
    "Deliveries settled, by outcome (succeeded, failed, timed_out, cancelled, expired, "
    "denied, retrying, released, dropped, internal_error)",
    ("task", "queue", "outcome"),
)
DURATION: Final = (
    "vaultq_attempt_duration_seconds",
    "Wall-clock time of one attempt (the task call), by outcome",
    ("task", "queue", "outcome"),
)
LATENCY: Final = (
    "vaultq_queue_latency_seconds",
    "Seconds from when a job could start (enqueue or its delay) to its attempt's start",
    ("task", "queue"),
)
IN_FLIGHT: Final = ("vaultq_jobs_in_flight", "Attempts running now", ("task", "queue"))

_EDGES: Final[dict[tuple[float, ...], list[str]]] = {
    # Each bucket's ``le`` label as prometheus-client spells it ("1.0", "+Inf").
    bounds: [*(floatToGoString(b) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call,unused-ignore]
    for bounds in (DURATION_BUCKETS, LATENCY_BUCKETS)
}
_K = TypeVar("_K", tuple[str, str], tuple[str, str, str])


class Count:
    """One counter's value and when its series was first written."""

    __slots__ = ("created", "n")

    def __init__(self) -> None:
        self.n = 0
        self.created = time.time()


class Buckets:
    """One histogram series: ``counts[i]`` observations fell in bucket ``i`` alone (not
    cumulative; the last is ``+Inf``), found with ``bisect_left(bounds, value)`` --
    the first bound >= value, prometheus-client's ``le`` rule."""

    __slots__ = ("counts", "created", "total")

    def __init__(self, size: int) -> None:
        self.counts: list[int] = [0] * (size + 1)
        self.total = 0.0
        self.created = time.time()


class Slot:
    """What one thread counted for one (task, queue).

    ``latency`` is None until an attempt started here: the in-flight gauge and the
    latency histogram appear in ``/metrics`` from then on (a ``task=""`` slot, made for
    an unopened delivery's settlement, never has them)."""

    __slots__ = ("durations", "latency", "outcomes", "running")

    def __init__(self) -> None:
        self.running = 0
        self.latency: Buckets | None = None
        self.outcomes: dict[str, Count] = {}
        self.durations: dict[str, Buckets] = {}

    def started(self) -> Buckets:
        self.latency = Buckets(len(LATENCY_BUCKETS))
        return self.latency

    def outcome(self, outcome: str) -> Count:
        found = self.outcomes[outcome] = Count()
        return found

    def duration(self, outcome: str) -> Buckets:
        found = self.durations[outcome] = Buckets(len(DURATION_BUCKETS))
        return found


class _Tables(threading.local):
    """Each thread's own slots, registered with the collector on the thread's first use."""

    def __init__(self, owner: JobCounts) -> None:
        self.slots: dict[tuple[str, str], Slot] = {}
        owner._adopt(self.slots)


class JobCounts:
    """The slots of every thread, and the collector that exposes them (register it on a
    ``CollectorRegistry``). ``local.slots`` is the calling thread's table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        """Guards ``_tables`` (a thread's first hook, a scrape); never taken per job."""
        self._tables: list[dict[tuple[str, str], Slot]] = []
        self.local = _Tables(self)

    def _adopt(self, slots: dict[tuple[str, str], Slot]) -> None:
        with self._lock:
            self._tables.append(slots)

    def slot(self, task: str, queue: str) -> Slot:
        """The calling thread's slot for (task, queue), made on first use."""
        slots = self.local.slots
        found = slots.get((task, queue))
        if found is None:
            found = slots[task, queue] = Slot()
        return found

    # -- the prometheus-client collector ----------------------------------------------------

    def describe(self) -> list[Metric]:
        """The families, without samples (the registry checks names with it)."""
        return [
            Metric(JOBS[0], JOBS[1], "counter"),
            Metric(DURATION[0], DURATION[1], "histogram"),
            Metric(LATENCY[0], LATENCY[1], "histogram"),
            Metric(IN_FLIGHT[0], IN_FLIGHT[1], "gauge"),
        ]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            # dict.copy() runs in C under the GIL: a hook adding a slot meanwhile cannot
            # change the dict under the iteration below.
            tables = [slots.copy() for slots in self._tables]
        jobs: dict[tuple[str, str, str], list[float]] = {}
        durations: dict[tuple[str, str, str], list[float]] = {}
        latencies: dict[tuple[str, str], list[float]] = {}
        running: dict[tuple[str, str], int] = {}
        for slots in tables:
            for (task, queue), slot in slots.items():
                for outcome, count in slot.outcomes.copy().items():
                    _add_count(jobs, (task, queue, outcome), count)
                for outcome, buckets in slot.durations.copy().items():
                    _add_buckets(durations, (task, queue, outcome), buckets)
                latency = slot.latency
                if latency is not None:
                    _add_buckets(latencies, (task, queue), latency)
                    running[task, queue] = running.get((task, queue), 0) + slot.running
        created = getattr(_prometheus_metrics, "_use_created", True)
        family = Metric(JOBS[0], JOBS[1], "counter")
        for key, (value, first) in jobs.items():
            labels = dict(zip(JOBS[2], key, strict=True))
            family.samples.append(Sample(f"{JOBS[0]}_total", labels, value))
            if created:
                family.samples.append(Sample(f"{JOBS[0]}_created", labels, first))
        yield family
        yield _histogram(DURATION, DURATION_BUCKETS, durations, created)
        yield _histogram(LATENCY, LATENCY_BUCKETS, latencies, created)
        family = Metric(IN_FLIGHT[0], IN_FLIGHT[1], "gauge")
        for pair, value_now in running.items():
            labels = dict(zip(IN_FLIGHT[2], pair, strict=True))
            family.samples.append(Sample(IN_FLIGHT[0], labels, float(value_now)))
        yield family


def _add_count(
    into: dict[tuple[str, str, str], list[float]], key: tuple[str, str, str], count: Count
) -> None:
    # [value, created]: summed over threads, the earliest creation.
    found = into.get(key)
    if found is None:
        into[key] = [float(count.n), count.created]
    else:
        found[0] += count.n
        found[1] = min(found[1], count.created)


def _add_buckets(into: dict[_K, list[float]], key: _K, buckets: Buckets) -> None:
    # [bucket counts..., sum, created]: summed over threads, the earliest creation.
    observed: list[int] = list(buckets.counts)
    found = into.get(key)
    if found is None:
        into[key] = [*map(float, observed), buckets.total, buckets.created]
        return
    for i, n in enumerate(observed):
        found[i] += n
    found[-2] += buckets.total
    found[-1] = min(found[-1], buckets.created)


def _histogram(
    definition: tuple[str, str, tuple[str, ...]],
    bounds: tuple[float, ...],
    series: dict[_K, list[float]],
    created: bool,
) -> Metric:
    """The family prometheus-client's Histogram would expose for these series: cumulative
    ``_bucket`` samples with its ``le`` spelling, ``_count``, ``_sum``, ``_created``."""
    name, text, label_names = definition
    family = Metric(name, text, "histogram")
    edges = _EDGES[bounds]
    for key, values in series.items():
        labels = dict(zip(label_names, key, strict=True))
        total = 0.0
        for edge, n in zip(edges, values, strict=False):
            total += n
            family.samples.append(Sample(f"{name}_bucket", {**labels, "le": edge}, total))
        family.samples.append(Sample(f"{name}_count", labels, total))
        family.samples.append(Sample(f"{name}_sum", labels, values[-2]))
        if created:
            family.samples.append(Sample(f"{name}_created", labels, values[-1]))
    return family
