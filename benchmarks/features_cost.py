"""What do periodic jobs, unique jobs and rate/concurrency limits cost a plain task that uses
none of them? Each feature landed in one commit; this compares that commit with its parent,
for a plain no-op task (no schedule, no unique key, no limit), on Redis and SQLite:

    .venv/bin/python benchmarks/features_cost.py [--rounds 4] [--n 10000] [--enqueues 3000]
    .venv/bin/python benchmarks/features_cost.py --only limits --only control

It uses ``benchmarks/compare.py``'s harness: each revision's ``vaultq/`` is exported with
``git archive`` and run with this checkout's interpreter and ``throughput.py``, so only
vaultq differs; the parent and the feature commit alternate round by round. Printed: CPU
microseconds per job spent by the producer (single ``enqueue`` calls) and by the worker
process (draining a pre-filled queue with one worker), medians over the rounds, and the
change. ``control`` runs one tree against itself: the difference it shows is this machine's
noise, to read the features' figures against. On a shared machine the wall-clock rates swing
by tens of percent; the CPU time per job barely moves, which is why it is the figure
compared. Figures only: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import throughput  # noqa: E402

import vaultq  # noqa: E402

_LIMITS = "5d1f47dc1b1636dfcabfcda4ed40fe414b5c584b"
FEATURES = {
    # feature: (before, after): the parent of the commit that added it, and that commit
    "periodic": (
        "4aca0b707b0c9bdb853ed603e278d4af378c4f58^",
        "4aca0b707b0c9bdb853ed603e278d4af378c4f58",
    ),
    "unique": (
        "7965d5d4131418efd10b2f6a342343cad0349717^",
        "7965d5d4131418efd10b2f6a342343cad0349717",
    ),
    "limits": (f"{_LIMITS}^", _LIMITS),
    # The same tree on both sides (two exports of it): how far apart two medians of
    # identical code land on this machine, the yardstick for the changes above.
    "control": (f"{_LIMITS}^", f"{_LIMITS}^^{{commit}}"),
}
BROKERS = ("redis", "sqlite")

Samples = dict[tuple[str, str, str], list[float]]


def measure(
    tree: Path, broker: str, url: str, args: argparse.Namespace, env: dict[str, str]
) -> tuple[float, float]:
    """CPU us/job of ``args.enqueues`` single enqueues and of a one-worker drain of ``args.n``."""
    redis_url = url if broker == "redis" else None
    if redis_url:
        throughput.flushall(redis_url)
    _, cpu = compare.run(tree, ["-c", compare.ENQUEUE, url, str(args.enqueues)], env)
    enqueue = cpu / args.enqueues * 1e6
    if redis_url:
        throughput.flushall(redis_url)
    else:
        url += ".drain"
    compare.run(tree, ["-c", compare.FILL + "\nprint(0, 0)", url, str(args.n)], env)
    harness = tree / "benchmarks" / "throughput.py"
    _, cpu = compare.run(tree, [str(harness), "--drain", url, "--n", str(args.n)], env)
    return enqueue, cpu / args.n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=10_000, help="jobs per drain")
    parser.add_argument("--enqueues", type=int, default=3_000, help="single enqueues per run")
    parser.add_argument("--only", choices=sorted(FEATURES), action="append")
    args = parser.parse_args()
    features = args.only or list(FEATURES)
    env = {**os.environ, "BENCH_KEYS": vaultq.Keyring.generate().to_json()}
    samples: Samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path] = {}
        for feature in features:
            for rev in FEATURES[feature]:
                if rev not in trees:
                    trees[rev] = compare.export(rev, Path(tmp))
        redis_proc, redis_url = throughput.start_redis(Path(tmp))
        runs = 0
        try:
            for r in range(args.rounds):
                for feature in features:
                    before, after = FEATURES[feature]
                    for side, rev in (
                        [("before", before), ("after", after)]
                        if r % 2 == 0
                        else [("after", after), ("before", before)]
                    ):
                        for broker in BROKERS:
                            runs += 1
                            url = redis_url if broker == "redis" else f"sqlite:///{tmp}/{runs}.db"
                            enq, drain = measure(trees[rev], broker, url, args, env)
                            samples.setdefault((feature, side, f"{broker} enqueue"), []).append(enq)
                            samples.setdefault((feature, side, f"{broker} drain"), []).append(drain)
                            print(
                                f"round {r} {feature:8} {side:6} {broker:6} "
                                f"enqueue {enq:6.1f}  drain {drain:6.1f} cpu us/job",
                                flush=True,
                            )
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(f"\nCPU us per job of a plain task, medians over {args.rounds} alternating rounds")
    print(f"{'feature':8} {'phase':15} {'before':>8} {'after':>8} {'change':>8}")
    for feature in features:
        for broker in BROKERS:
            for phase in ("enqueue", "drain"):
                what = f"{broker} {phase}"
                before = statistics.median(samples[feature, "before", what])
                after = statistics.median(samples[feature, "after", what])
                print(
                    f"{feature:8} {what:15} {before:8.1f} {after:8.1f} "
                    f"{(after / before - 1) * 100:+7.1f}%"
                )


if __name__ == "__main__":
    main()
