"""A/B of two vaultq revisions on a busy machine: single enqueues and a one-worker drain of
no-op jobs, alternating the revisions round by round, on Redis and SQLite.

    .venv/bin/python benchmarks/compare.py REV_A REV_B [--rounds 6] [--n 20000]

Each revision is exported with ``git archive`` into a temporary directory and run with
this checkout's interpreter, but always with *this* checkout's ``benchmarks/throughput.py``
(its ``make_app`` and ``--drain`` mode), so only vaultq differs. Wall-clock rates on a
shared machine swing by tens of percent from one run to the next; the CPU time the
producer or the worker process spends per job barely moves, so medians of it over
alternating rounds are what tell two revisions apart. Figures only: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402

import vaultq  # noqa: E402

ENQUEUE = r"""
import os, sys, time
import anyio
import throughput as t

async def main(url, n):
    app, noop = t.make_app(url, os.environ["BENCH_KEYS"])
    await noop.enqueue(t.Noop(0))
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await noop.enqueue(t.Noop(i))
    print(time.perf_counter() - w0, time.process_time() - c0)
    await app.aclose()

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""

FILL = r"""
import os, sys
import anyio
import throughput as t

async def main(url, n):
    app, noop = t.make_app(url, os.environ["BENCH_KEYS"])
    for s in range(0, n, 1000):
        await noop.enqueue_many(t.Noop(i) for i in range(s, min(n, s + 1000)))
    await app.aclose()

anyio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def export(rev: str, into: Path) -> Path:
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev, "vaultq"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    # The same harness for both: it puts its parent (the exported tree) first on sys.path.
    (tree / "benchmarks").mkdir()
    shutil.copy(HERE / "throughput.py", tree / "benchmarks" / "throughput.py")
    return tree


def run(tree: Path, code: list[str], env: dict[str, str]) -> tuple[float, float]:
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "benchmarks")])}
    out = subprocess.run(
        [sys.executable, *code], cwd=tree, env=env, check=True, capture_output=True, text=True
    )
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="git revision A (e.g. the commit before a change)")
    parser.add_argument("b", help="git revision B")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--enqueues", type=int, default=5_000, help="single enqueues per run")
    args = parser.parse_args()
    keys = vaultq.Keyring.generate().to_json()
    env = {**os.environ, "BENCH_KEYS": keys}
    brokers = ("redis", "sqlite")
    results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {args.a: export(args.a, Path(tmp)), args.b: export(args.b, Path(tmp))}
        redis_proc, redis_url = throughput.start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                order = [args.a, args.b] if r % 2 == 0 else [args.b, args.a]
                for rev in order:
                    for broker in brokers:
                        # One fresh file per run: a revision with a newer SQLite schema
                        # must not leave its file to an older one (which refuses it).
                        db = Path(tmp) / f"r{r}-{rev}-{broker}.db"
                        url = redis_url if broker == "redis" else f"sqlite:///{db}"
                        if broker == "redis":
                            throughput.flushall(redis_url)
                        wall, cpu = run(trees[rev], ["-c", ENQUEUE, url, str(args.enqueues)], env)
                        enq = results.setdefault((rev, broker, "enqueue"), [])
                        enq.append((args.enqueues / wall, cpu / args.enqueues * 1e6))
                        if broker == "redis":
                            throughput.flushall(redis_url)
                        else:
                            url = f"sqlite:///{db}.drain"
                        run(trees[rev], ["-c", FILL + "\nprint(0, 0)", url, str(args.n)], env)
                        harness = trees[rev] / "benchmarks" / "throughput.py"
                        drain = [str(harness), "--drain", url, "--n", str(args.n)]
                        wall, cpu = run(trees[rev], drain, env)
                        results.setdefault((rev, broker, "drain"), []).append(
                            (args.n / wall, cpu / args.n * 1e6)
                        )
                        print(
                            f"round {r} {rev:>12} {broker:6} enqueue/s {enq[-1][0]:6.0f} "
                            f"({enq[-1][1]:5.1f} cpu us) drain/s {args.n / wall:6.0f} "
                            f"({cpu / args.n * 1e6:5.1f} cpu us/job)",
                            flush=True,
                        )
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(f"\nmedians over {args.rounds} alternating rounds (B vs A)")
    for broker in brokers:
        for phase in ("enqueue", "drain"):
            a = results[args.a, broker, phase]
            b = results[args.b, broker, phase]
            for i, what in ((0, f"{phase}/s"), (1, "cpu us/job")):
                ma = statistics.median(x[i] for x in a)
                mb = statistics.median(x[i] for x in b)
                print(
                    f"{broker:6} {phase:7} {what:11} A {ma:8.1f}  B {mb:8.1f}  "
                    f"({(mb / ma - 1) * 100:+.1f}%)"
                )


if __name__ == "__main__":
    main()
