"""What observability costs, in instructions per job: the steady figure on a shared machine.

    .venv/bin/python benchmarks/observability_instructions.py [--brokers sqlite,redis]
        [--setups nop,metrics,tracing0,...] [--n 500,2500]
    .venv/bin/python benchmarks/observability_instructions.py --hooks [--setups ...]

The wall-clock and CPU-time figures of ``benchmarks/observability.py`` move by ±10 points
on a machine that other work shares (caches, a second hyperthread). Instructions do
not: for each set-up this enqueues N no-op jobs, then drains them in a worker process
run under ``valgrind --tool=cachegrind --cache-sim=no`` (concurrency 50, the same app
as ``observability.py``), for two values of N; the difference over the difference in
N is the instructions one job costs in the worker process (all its threads: SQLite's
too), start-up and imports cancelled out. Still not exact (polling loops and batch sizes
depend on timing: about ±2 % between runs), but far steadier than time. Needs valgrind;
slow (about 40 s per set-up and broker). Redis runs on a private ``redis-server``.
Figures only: nothing here asserts anything.

A set-up written ``PRODUCER:WORKER`` enqueues with the first and drains with the second:
``nop,tracing0:nop,tracing0`` splits tracing's cost into the sealed trace context (read
by a worker that does not trace) and the worker's hooks.

``--hooks``: the worker-side hooks alone (``attempt_started``, ``attempt_finished``,
``settled`` through vaultq's dispatch, as ``observability.py --hooks-only`` times them)
for 1,000 and 5,000 jobs under cachegrind; no broker, no event loop, no polling, so the
figure is the same from run to run (but for ``tracing10``: which of its 100 producer
traces were sampled is random). Printed over ``nop`` (the dispatch and the loop).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import observability as bench  # noqa: E402

import vaultq  # noqa: E402
from vaultq.cli_worker import freeze_startup_heap  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402


async def produce(url: str, setup: str, n: int, keys: vaultq.Keyring) -> None:
    app = bench.make_app("irbench", url, keys, setup)
    task = app.get_task("noop")
    assert task is not None
    for start in range(0, n, 500):
        await task.enqueue_many([bench.Item(i) for i in range(start, min(n, start + 500))])
    await app.aclose()


async def drain(url: str, setup: str, n: int, keys: vaultq.Keyring) -> None:
    app = bench.make_app("irbench", url, keys, setup)
    freeze_startup_heap()  # as `vaultq worker` does once its app is loaded
    worker = Worker(app, concurrency=50, block=0.05)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        while worker.processed < n:  # noqa: ASYNC110 - as observability.py measures
            await anyio.sleep(0.005)
        worker.stop()
    await app.aclose()


def instructions(url: str, setup: str, n: int, keyfile: Path, workdir: Path) -> int:
    """Instructions the worker process executed draining ``n`` jobs (cachegrind's Ir).
    ``setup`` may be ``PRODUCER:WORKER`` (e.g. ``tracing0:nop``: jobs sealed with a trace
    context, drained by a worker without tracing) to tell the two costs apart."""
    keys = vaultq.Keyring.from_json(keyfile.read_text())
    producer, _, worker = setup.rpartition(":")
    setup = worker
    anyio.run(produce, url, producer or worker, n, keys)
    out = workdir / "cachegrind.out"
    subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
         sys.executable, __file__, "--drain", url, setup, str(n), str(keyfile)],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    assert found is not None, "no cachegrind summary"
    return int(found[1])


def run_hooks(setup: str, n: int) -> None:
    """The hooks of ``n`` jobs, as ``observability.hook_costs`` runs them."""
    import time

    from vaultq.middleware import EnqueueInfo, Hooks, Outcome

    app = bench.make_app("hooks", "sqlite:///:memory:", vaultq.Keyring.generate(), setup)
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
    for job in [bench.job_info(i, now, traces[i % 100]) for i in range(n)]:
        hooks.attempt_started(job)
        hooks.attempt_finished(job, Outcome.SUCCEEDED, 0.001)
        hooks.settled(job, Outcome.SUCCEEDED, None)


def hook_instructions(setups: list[str], workdir: Path) -> None:
    low, high = 1000, 5000
    per_job: dict[str, float] = {}
    for setup in ["nop", *(s for s in setups if s not in ("nop", "plain"))]:
        counts = []
        for n in (low, high):
            out = workdir / "cachegrind.out"
            subprocess.run(
                ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                 f"--cachegrind-out-file={out}", sys.executable, __file__, "--hooks-run",
                 setup, str(n)],
                check=True, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
            assert found is not None, "no cachegrind summary"
            counts.append(int(found[1]))
        per_job[setup] = (counts[1] - counts[0]) / (high - low)
        print(
            f"hooks   {setup:<20} {per_job[setup] - per_job['nop']:>9.0f} instructions/job "
            "over nop",
            flush=True,
        )


def main() -> None:
    if sys.argv[1:2] == ["--hooks-run"]:
        run_hooks(sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--drain"]:
        url, setup, n, keyfile = sys.argv[2:6]
        keys = vaultq.Keyring.from_json(Path(keyfile).read_text())
        anyio.run(drain, url, setup, int(n), keys)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument(
        "--setups",
        default="nop,metrics,tracing0,tracing10,tracing,metrics+tracing0,metrics+tracing10,"
        "metrics+tracing",
    )
    parser.add_argument("--n", default="500,2500", help="the two job counts")
    parser.add_argument("--hooks", action="store_true", help="the worker hooks alone")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found on PATH")
    if args.hooks:
        with tempfile.TemporaryDirectory() as tmp:
            hook_instructions(args.setups.split(","), Path(tmp))
        return
    low, high = (int(x) for x in args.n.split(","))
    setups = ["plain", *(s for s in args.setups.split(",") if s != "plain")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        keyfile = workdir / "keys.json"
        keyfile.write_text(vaultq.Keyring.generate().to_json())
        for broker in args.brokers.split(","):
            redis_proc = None
            try:
                if broker == "redis":
                    redis_proc, base = bench.start_redis(workdir)
                per_job: dict[str, float] = {}
                for setup in setups:
                    counts = []
                    for n in (low, high):
                        if broker == "redis":
                            import redis

                            client = redis.Redis.from_url(base)
                            client.flushall()  # the private server of this run only
                            client.close()
                            url = base
                        else:
                            url = f"sqlite:///{tmp}/{setup.replace(':', '-')}-{n}.db"
                        counts.append(instructions(url, setup, n, keyfile, workdir))
                    per_job[setup] = (counts[1] - counts[0]) / (high - low)
                    ratio = per_job[setup] / per_job["plain"]
                    print(
                        f"{broker:<7} {setup:<20} {per_job[setup]:>9.0f} instructions/job "
                        f"(ratio {ratio:.3f}, {(ratio - 1) * 100:+.1f}%)",
                        flush=True,
                    )
            finally:
                if redis_proc is not None:
                    redis_proc.terminate()
                    redis_proc.wait()


if __name__ == "__main__":
    main()
