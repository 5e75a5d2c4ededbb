"""What observability costs: no-op jobs drained without and with metrics, tracing and events.

    .venv/bin/python benchmarks/observability.py [--n 3000] [--rounds 3]
        [--brokers sqlite,redis] [--setups metrics,tracing,metrics+tracing,events,...]

For each broker: N no-op jobs are enqueued, then drained by one in-process worker
(concurrency 50); the clock runs from the worker's start to the last settlement. Each
set-up is measured ``--rounds`` times, alternating so a noisy neighbour hurts all alike;
printed: the best jobs/s and the lowest CPU time of this process per job (all its
threads), which is the steadier figure on a shared machine, and for both the ratio
with/without: the median over the rounds of the set-up's figure divided by plain's in
the same round.

* ``plain``: no middleware (always measured: the baseline);
* ``metrics``: :class:`vaultq.metrics.PrometheusMetrics`;
* ``tracing``: :class:`vaultq.tracing.Tracing`, SDK tracer provider with its default
  sampler (``ParentBased(ALWAYS_ON)``: every span sampled), a ``BatchSpanProcessor`` into
  an exporter that drops the spans (what an OTLP exporter costs besides is its own);
* ``tracing10``: the same with ``ParentBased(TraceIdRatioBased(0.1))``, a common
  production set-up: the producer samples one trace in ten, the worker follows
  (``tracingN``: N percent; ``tracing0``: tracing installed, nothing sampled);
* ``events``: :class:`vaultq.events.EventStream` (three events per job, batched writes);
* ``nop``: a middleware whose three per-job hooks do nothing: what having any middleware
  costs (each job's ``JobInfo``, the dispatch, reporting the settlement);
* ``+``-joined names combine them.

Redis runs on a private ``redis-server`` started on a free port. Figures only: nothing
here asserts a time (tests/test_observability.py checks behaviour; docs/observability.md
has the measured table).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vaultq  # noqa: E402
from vaultq.middleware import JobInfo, Middleware, Outcome  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402


class Item(msgspec.Struct, frozen=True):
    n: int


SETUPS = (
    "plain",
    "metrics",
    "tracing",
    "tracing10",
    "metrics+tracing",
    "metrics+tracing10",
    "events",
    "metrics+tracing+events",
)


def tracer_provider(ratio: float | None) -> object:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Dropping(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = None if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


class Nop(Middleware):
    """Watches every delivery and does nothing with it."""

    def attempt_started(self, job: JobInfo) -> None:
        pass

    def attempt_finished(self, job: JobInfo, outcome: Outcome, duration: float) -> None:
        pass

    def settled(self, job: JobInfo, outcome: Outcome, reason: str | None) -> None:
        pass


def make_app(name: str, url: str, keys: vaultq.Keyring, setup: str) -> vaultq.App:
    app = vaultq.App(name, broker=url, keyring=keys)

    @app.task(name="noop", policy=vaultq.allow_all)
    async def noop(job: Item) -> int:
        return job.n

    if "nop" in setup.split("+"):
        app.add_middleware(Nop())
    if "metrics" in setup:
        from vaultq.metrics import PrometheusMetrics

        app.add_middleware(PrometheusMetrics(app))
    if "tracing" in setup:
        from vaultq.tracing import Tracing

        percent = re.search(r"tracing(\d+)", setup)
        provider = tracer_provider(None if percent is None else int(percent[1]) / 100)
        app.add_middleware(Tracing(tracer_provider=provider))  # type: ignore[arg-type]
    if "events" in setup:
        from vaultq.events import EventStream

        app.add_middleware(EventStream(app))
    return app


async def one_round(url: str, setup: str, n: int, index: int) -> tuple[float, float]:
    """(jobs/s, CPU µs of this process per job) draining ``n`` jobs."""
    keys = vaultq.Keyring.generate()
    app = make_app(f"obsbench{index}", url, keys, setup)
    task = app.get_task("noop")
    for start in range(0, n, 500):
        await task.enqueue_many([Item(i) for i in range(start, min(n, start + 500))])
    worker = Worker(app, concurrency=50, block=0.05)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        began, cpu = time.perf_counter(), time.process_time()
        while worker.processed < n:  # noqa: ASYNC110 - 5 ms polling, no hook in "plain"
            await anyio.sleep(0.005)
        took, cpu = time.perf_counter() - began, time.process_time() - cpu
        worker.stop()
    await app.aclose()
    return n / took, cpu / n * 1e6


def job_info(i: int, now: float, trace: dict[str, str]) -> Any:
    return JobInfo(
        job_id=f"j{i}", queue="default", attempt=1, app="hooks", worker_id="w",
        authenticated=True, task="noop", enqueued_at=now, trace=trace,
    )  # fmt: skip


def hook_costs(setups: list[str], calls: int = 20_000) -> None:
    """CPU µs per job of the worker-side hooks alone (attempt_started, attempt_finished,
    settled through vaultq's dispatch), on jobs whose trace context a producer with the
    same set-up wrote: the steadier part of the figures above."""
    from vaultq.middleware import EnqueueInfo, Hooks

    print(f"worker hooks alone ({calls} jobs, CPU us/job):")
    for setup in setups:
        if setup == "plain" or "events" in setup:
            continue
        app = make_app("hooks", "sqlite:///:memory:", vaultq.Keyring.generate(), setup)
        hooks = Hooks(app.middleware)
        traces = []
        for i in range(100):
            sent = EnqueueInfo(
                job_id=f"e{i}", task="noop", queue="default", app="hooks", principal_id=None,
                enqueued_at=time.time(), not_before=0.0,
            )  # fmt: skip
            traces.append(hooks.before_enqueue(sent) or {})
            hooks.after_enqueue(sent, None)
        now = time.time()
        jobs = [job_info(i, now, traces[i % 100]) for i in range(calls)]
        began = time.process_time()
        for job in jobs:
            hooks.attempt_started(job)
            hooks.attempt_finished(job, Outcome.SUCCEEDED, 0.001)
            hooks.settled(job, Outcome.SUCCEEDED, None)
        print(f"  {setup:<24} {(time.process_time() - began) / calls * 1e6:>6.1f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--hooks-only", action="store_true", help="only the hooks' cost")
    args = parser.parse_args()
    setups = ["plain", *(s for s in args.setups.split(",") if s != "plain")]
    if args.hooks_only:
        hook_costs(setups)
        return
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc = None
        try:
            index = 0
            for broker in args.brokers.split(","):
                if broker == "redis":
                    redis_proc, url = start_redis(Path(tmp))
                rates: dict[str, list[float]] = {s: [] for s in setups}
                cpus: dict[str, list[float]] = {s: [] for s in setups}
                for round_no in range(args.rounds):
                    # Every other round backwards, so a machine getting busier or quieter
                    # during a round weighs on every set-up alike.
                    for setup in setups if round_no % 2 == 0 else setups[::-1]:
                        index += 1
                        if broker == "sqlite":
                            url = f"sqlite:///{tmp}/bench{index}.db"
                        rate, per_job = anyio.run(one_round, url, setup, args.n, index)
                        rates[setup].append(rate)
                        cpus[setup].append(per_job)
                print(
                    f"{broker}: {args.rounds} rounds, n={args.n}; best jobs/s and lowest CPU us "
                    "per job; 'ratio': the median over rounds of with/without (plain, the same "
                    "round), CPU time the steadier figure on a shared machine"
                )
                for setup in setups:
                    rate_ratio = statistics.median(
                        r / p for r, p in zip(rates[setup], rates["plain"], strict=True)
                    )
                    cpu_ratio = statistics.median(
                        c / p for c, p in zip(cpus[setup], cpus["plain"], strict=True)
                    )
                    print(
                        f"  {setup:<24} {max(rates[setup]):>7.0f} jobs/s (ratio {rate_ratio:.2f})"
                        f"  {min(cpus[setup]):>6.0f} CPU us/job (ratio {cpu_ratio:.2f}, "
                        f"{(cpu_ratio - 1) * 100:+.1f}%)"
                    )
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait()


if __name__ == "__main__":
    main()
