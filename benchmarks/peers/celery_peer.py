"""Celery with the private Redis as broker and result backend, JSON serializer.

At a given concurrency: one worker process, ``--pool threads --concurrency C``, with
``--without-gossip --without-mingle --without-heartbeat`` (no other workers to talk to)
and default prefetch and early acks. Threads were picked over ``--pool solo`` (also one
process) because solo runs one task at a time, and over prefork with one child, which is
two processes and pays a pipe hop per task. ``BENCH_CELERY_POOL`` switches the pool for
comparison. With ``--concurrency 0`` (defaults mode) the worker runs celery's defaults:
the prefork pool with one child per CPU, so it is the one system measured there with more
than one process. Results are stored for every job. Celery has no bulk enqueue at the
broker; ``group(...).apply_async()`` in chunks of 1000 (what a user reaches for to send
many) is timed as "bulk".
"""

from __future__ import annotations

import os
import time
from typing import Any

import _common
from celery import Celery, group

POOL = os.environ.get("BENCH_CELERY_POOL", "threads")


def make_app(url: str) -> tuple[Celery, Any]:
    app = Celery("bench", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        worker_redirect_stdouts=False,
    )

    @app.task(name="bench.noop")
    def noop(n: int) -> None:
        _common.Body.done_sync()

    return app, noop


def worker_argv(concurrency: int) -> list[str]:
    if not concurrency:
        return ["worker", "--loglevel=WARNING"]
    return [
        "worker",
        f"--pool={POOL}",
        f"--concurrency={concurrency if POOL != 'solo' else 1}",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def produce(url: str, n: int) -> None:
    _, noop = make_app(url)
    t0 = time.perf_counter()
    for i in range(n):
        noop.delay(i)
    single = _common.rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for start in range(n, 2 * n, 1000):
        group(noop.s(i) for i in range(start, min(2 * n, start + 1000))).apply_async()
    bulk = _common.rate(n, time.perf_counter() - t0)
    _common.emit({"enqueue": single, "bulk": bulk, "queued": 2 * n})


def fill(url: str, n: int) -> None:
    _, noop = make_app(url)
    for start in range(0, n, 1000):
        group(noop.s(i) for i in range(start, min(n, start + 1000))).apply_async()
    _common.emit({"queued": n})


def worker(url: str, concurrency: int) -> None:
    app, _ = make_app(url)
    app.worker_main(argv=worker_argv(concurrency))


def latency(url: str, samples: int) -> None:
    _, noop = make_app(url)
    noop.delay(-1).get(timeout=_common.WARMUP_TIMEOUT)
    out: list[float] = []
    for i in range(samples):
        t0 = time.perf_counter()
        noop.delay(i).get(timeout=10)
        out.append(time.perf_counter() - t0)
    _common.emit(_common.percentiles(out))


def main() -> None:
    args = _common.parse_args()
    if args.mode == "produce":
        produce(args.url, args.n)
    elif args.mode == "fill":
        fill(args.url, args.n)
    elif args.mode == "worker":
        worker(args.url, args.concurrency)
    else:
        latency(args.url, args.samples)


if __name__ == "__main__":
    main()
