"""What observability costs, in instructions per job: the steady figure on a shared machine.

    .venv/bin/python benchmarks/observability_instructions.py [--brokers sqlite,redis]
        [--setups nop,metrics,tracing0,...] [--n 500,2500]

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
    """Instructions the worker process executed draining ``n`` jobs (cachegrind's Ir)."""
    keys = vaultq.Keyring.from_json(keyfile.read_text())
    anyio.run(produce, url, setup, n, keys)
    out = workdir / "cachegrind.out"
    subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
         sys.executable, __file__, "--drain", url, setup, str(n), str(keyfile)],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    assert found is not None, "no cachegrind summary"
    return int(found[1])


def main() -> None:
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
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found on PATH")
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
                            url = f"sqlite:///{tmp}/{setup}-{n}.db"
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
