"""Where the time goes per job: each stage of the worker's hot path and of the enqueue
path, timed alone over a batch of real jobs on a private ``redis-server``.

    .venv/bin/python benchmarks/profile_hotpath.py [--n 5000] [--batch 50] [--rounds 3]
        [--signing hmac|ed25519] [--pyinstrument]

Each stage is the same call the worker (or ``task.enqueue``) makes, run over all N jobs in
a row, so its CPU time (``time.process_time``, this process, all threads) per job is
stable on a busy machine. Wall-clock microseconds are printed beside it: they include the
broker's round trips (and the other sessions on the machine). The last rows put the
stages against a real one-worker drain and a real ``enqueue`` loop of the same jobs: the
difference is what the worker spends between the stages (memory streams, task switches,
lease bookkeeping, log calls). Figures are the median over ``--rounds``.

``--pyinstrument`` (``benchmarks/requirements.txt``) also prints a call-tree profile of
an in-process drain of N jobs. Figures only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402

import vaultq  # noqa: E402
from vaultq.brokers.base import Ack, EnqueueItem  # noqa: E402
from vaultq.enqueue import authorize as authorize_enqueue  # noqa: E402
from vaultq.envelope import JobMeta, OpenedJob, new_job_id, seal_job  # noqa: E402
from vaultq.jobs import JobStatus  # noqa: E402
from vaultq.policy import PolicyRequest, evaluate  # noqa: E402
from vaultq.runtime.execute import Executor, JobSlot  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402

Stage = tuple[float, float]  # (cpu us/job, wall us/job)


def keys_for(signing: str) -> str:
    if signing == "ed25519":
        return vaultq.Keyring.generate(signing="ed25519").to_json()
    return vaultq.Keyring.generate().to_json()


async def timed(n: int, fn: Callable[[], Awaitable[None]]) -> Stage:
    c0, w0 = time.process_time(), time.perf_counter()
    await fn()
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


async def one_round(url: str, keys: str, n: int, batch: int) -> dict[str, Stage]:
    throughput.flushall(url)
    app, noop = throughput.make_app(url, keys)
    task = app.tasks["bench.noop"]
    broker = await app.broker()
    out: dict[str, Stage] = {}
    payloads = [throughput.Noop(i) for i in range(n)]
    now = app.clock.local()

    # -- enqueue path ------------------------------------------------------------------
    encoded: list[bytes] = []

    async def check() -> None:
        encoded.extend(task.check_payload(p) for p in payloads)

    out["enqueue: check payload"] = await timed(n, check)

    async def authorize() -> None:
        for p in payloads:
            await authorize_enqueue(app, task, p, None, "0")

    out["enqueue: policy"] = await timed(n, authorize)
    envelopes: list[bytes] = []
    ids = [new_job_id(now) for _ in range(n)]

    async def seal() -> None:
        meta = JobMeta()
        for job_id, body in zip(ids, encoded, strict=True):
            envelopes.append(
                seal_job(
                    app.keyring,
                    job_id=job_id,
                    app=app.name,
                    task=task.name,
                    queue=task.queue,
                    payload=body,
                    principal=None,
                    meta=meta,
                    issued_at=now,
                    not_before=now,
                    expires_at=now + task.options.expires,
                    version=app.envelope_version,
                )
            )

    out["enqueue: seal"] = await timed(n, seal)
    items = [
        EnqueueItem(queue=task.queue, job_id=i, envelope=e, not_before=None)
        for i, e in zip(ids, envelopes, strict=True)
    ]

    async def write_one_by_one() -> None:
        for item in items:
            await broker.enqueue([item])

    out["enqueue: broker write (1 job)"] = await timed(n, write_one_by_one)
    throughput.flushall(url)

    async def enqueue_full() -> None:
        for p in payloads:
            await noop.enqueue(p)

    out["enqueue: await task.enqueue (all)"] = await timed(n, enqueue_full)

    def enqueue_sync_full() -> None:
        for p in payloads:
            noop.enqueue_sync(p)

    # From a thread with no loop, as a Django view calls it; its CPU includes the loop
    # thread's (process_time counts every thread).
    out["enqueue: task.enqueue_sync (all)"] = await timed(
        n, lambda: anyio.to_thread.run_sync(enqueue_sync_full)
    )
    out["enqueue: sync hop (difference)"] = tuple(  # type: ignore[assignment]
        a - b
        for a, b in zip(
            out["enqueue: task.enqueue_sync (all)"],
            out["enqueue: await task.enqueue (all)"],
            strict=True,
        )
    )

    async def enqueue_many() -> None:
        for s in range(0, n, 1000):
            await noop.enqueue_many(payloads[s : s + 1000])

    out["enqueue: enqueue_many (per job)"] = await timed(n, enqueue_many)

    # -- worker path -------------------------------------------------------------------
    throughput.flushall(url)
    for s in range(0, n, 1000):
        await noop.enqueue_many(payloads[s : s + 1000])
    executor = Executor(app, worker_id="profile", max_abandoned_threads=2, thread_tokens=batch)
    deliveries: list[Any] = []

    async def fetch() -> None:
        while len(deliveries) < n:
            got = await broker.fetch(
                [task.queue],
                batch,
                consumer="profile",
                lease=60.0,
                block=0.05,
                max_size=app.max_envelope_size,
            )
            deliveries.extend(got)

    out["worker: fetch (batches)"] = await timed(n, fetch)
    clock_now = app.clock.now()
    opened: list[OpenedJob] = []

    async def open_all() -> None:
        for d in deliveries:
            o = executor.open(d, clock_now)
            assert isinstance(o, OpenedJob)
            opened.append(o)

    out["worker: open envelope"] = await timed(n, open_all)
    decoded: list[Any] = []

    async def decode() -> None:
        decoded.extend(task.payload_codec.decode(bytes(o.body.payload)) for o in opened)

    out["worker: decode payload"] = await timed(n, decode)

    async def policy() -> None:
        for d, o, p in zip(deliveries, opened, decoded, strict=True):
            await evaluate(
                task.policy or app.default_policy,
                PolicyRequest(
                    principal=o.body.principal,
                    payload=p,
                    task=task.name,
                    signer_id=o.header.signer_id,
                    attempt=d.attempt,
                    job_id=o.header.job_id,
                    stage="run",
                ),
                timeout=app.policy_timeout,
            )

    out["worker: policy"] = await timed(n, policy)

    async def call() -> None:
        for p in decoded:
            with anyio.CancelScope(deadline=anyio.current_time() + 60):
                await task.fn(p)

    out["worker: call (no-op, in a cancel scope)"] = await timed(n, call)
    settlements: list[Any] = []

    async def seal_result() -> None:
        started = time.time()
        for d, o in zip(deliveries, opened, strict=True):
            done = JobStatus.SUCCEEDED
            settlements.append(
                executor.outcomes.finish(d, o, done, task=task, started=started, value=b"null")
            )

    out["worker: seal result"] = await timed(n, seal_result)
    assert all(isinstance(s, Ack) for s in settlements)

    async def run_all() -> None:
        for d in deliveries:
            await executor.run(JobSlot(d))

    out["worker: Executor.run (open..seal)"] = await timed(n, run_all)

    async def settle() -> None:
        for s in range(0, n, batch):
            await broker.settle(settlements[s : s + batch])

    out["worker: settle (batches)"] = await timed(n, settle)
    await app.aclose()

    # -- the real thing ----------------------------------------------------------------
    throughput.flushall(url)
    app, noop = throughput.make_app(url, keys)
    for s in range(0, n, 1000):
        await noop.enqueue_many(payloads[s : s + 1000])
    await app.aclose()
    wall, cpu = await anyio.to_thread.run_sync(drain_subprocess, url, keys, n, batch)
    out["worker: one-worker drain (real)"] = (cpu / n * 1e6, wall / n * 1e6)
    return out


def drain_subprocess(url: str, keys: str, n: int, concurrency: int) -> tuple[float, float]:
    import subprocess

    env = {**os.environ, "BENCH_KEYS": keys}
    cmd = [sys.executable, str(HERE / "throughput.py"), "--drain", url, "--n", str(n)]
    out = subprocess.run(
        [*cmd, "--concurrency", str(concurrency)], env=env, capture_output=True, check=True
    )
    wall, cpu = out.stdout.decode().strip().splitlines()[-1].split()
    return float(wall), float(cpu)


async def pyinstrument_drain(url: str, keys: str, n: int, concurrency: int) -> None:
    from pyinstrument import Profiler

    throughput.flushall(url)
    app, noop = throughput.make_app(url, keys)
    for s in range(0, n, 1000):
        await noop.enqueue_many(throughput.Noop(i) for i in range(s, min(n, s + 1000)))
    worker = Worker(app, concurrency=concurrency, block=0.05, grace=1)
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        profiler.start()
        while worker.processed < n:  # noqa: ASYNC110 - polling the counter is the measurement
            await anyio.sleep(0.005)
        profiler.stop()
        worker.stop()
    await app.aclose()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=50, help="fetch/settle batch = concurrency")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--signing", choices=("hmac", "ed25519"), default="hmac")
    parser.add_argument("--pyinstrument", action="store_true")
    args = parser.parse_args()
    keys = keys_for(args.signing)
    rounds: list[dict[str, Stage]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = throughput.start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                rounds.append(anyio.run(one_round, url, keys, args.n, args.batch))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            if args.pyinstrument:
                anyio.run(pyinstrument_drain, url, keys, args.n, args.batch)
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(
        f"\nper-job cost, {args.signing} signing, N={args.n}, batch {args.batch}, "
        f"median of {args.rounds} rounds, {threading.active_count()} threads"
    )
    print(f"{'stage':<42}{'cpu us/job':>12}{'wall us/job':>13}")
    for name in rounds[0]:
        cpu = statistics.median(r[name][0] for r in rounds)
        wall = statistics.median(r[name][1] for r in rounds)
        print(f"{name:<42}{cpu:>12.1f}{wall:>13.1f}")
    parts = [
        "worker: fetch (batches)",
        "worker: Executor.run (open..seal)",
        "worker: settle (batches)",
    ]
    stages = sum(statistics.median(r[p][0] for r in rounds) for p in parts)
    real = statistics.median(r["worker: one-worker drain (real)"][0] for r in rounds)
    print(f"{'worker: fetch + run + settle, summed':<42}{stages:>12.1f}")
    print(f"{'worker: scheduling overhead (real - sum)':<42}{real - stages:>12.1f}")


if __name__ == "__main__":
    main()
