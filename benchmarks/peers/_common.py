"""What every peer driver shares: the command line, the completion counter, the output.

Peer drivers run under the separate ``.venv-bench`` interpreter (the peers' pins clash with
vaultq's venv), so this module is standard library only. A driver is called once per phase:

* ``produce --n N``: enqueue N no-op jobs one by one (timed), then N more with the peer's
  bulk API when it has one (timed), else N more one by one (not timed), so the queue always
  holds 2N jobs for the drain;
* ``drain --n TOTAL``: run ONE worker process in this process; the clock starts when the
  worker reports ready and stops when TOTAL jobs are done (see ``Completion``);
* ``serve``: run the same worker idle, print ``READY`` once it consumes, until killed;
* ``latency --samples S``: enqueue one job at a time and wait for its result.

Each phase prints one ``RESULT {json}`` line on stdout; the parent parses only that line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "drain", "serve", "latency"])
    parser.add_argument("--url", required=True, help="redis://host:port/db or sqlite:///path")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    return parser.parse_args()


def emit(payload: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(payload), flush=True)


def ready() -> None:
    print("READY", flush=True)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 in ms, computed exactly like benchmarks/throughput.py does for vaultq."""
    out = sorted(samples)
    p99 = out[max(int(len(out) * 0.99) - 1, 0)]
    return {"p50_ms": statistics.median(out) * 1000, "p99_ms": p99 * 1000}


class Completion:
    """Counts finished jobs in the worker process and ends the drain at the target.

    "Done" means the same thing for every peer as for vaultq's ``Worker.processed``: the
    job ran and the broker was told (result stored and message acked/removed). Each driver
    calls ``hit()`` from the peer's latest hook that still runs per job (arq
    ``after_job_end``, dramatiq ``after_ack``, celery ``task_postrun``, huey
    ``SIGNAL_COMPLETE``). When the target is reached the elapsed time since ``start()`` is
    printed and the process exits at once: tearing the worker down is not measured.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.t0 = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._elapsed = 0.0
        threading.Thread(target=self._exit_when_done, daemon=True).start()

    def start(self) -> None:
        if not self.t0:
            self.t0 = time.perf_counter()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count == self.target:
                self._elapsed = time.perf_counter() - self.t0
                self._done.set()

    def _exit_when_done(self) -> None:
        self._done.wait()
        emit({"drain_s": self._elapsed, "done": self.count})
        sys.stdout.flush()
        os._exit(0)
