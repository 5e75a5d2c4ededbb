"""A/B of worker options on one revision: the event loop (asyncio, uvloop) and redis-py's
reply parser (hiredis or pure Python), one-worker drains of no-op jobs on Redis in
alternating rounds, CPU us per job beside jobs/s.

    .venv/bin/python benchmarks/options.py [--rounds 4] [--n 10000] [--concurrency 50]

Needs ``pip install -r benchmarks/requirements.txt`` (uvloop, hiredis). "no hiredis"
runs hide the installed module from redis-py (it then parses replies in Python), so both
variants run in the same environment. Figures only: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import throughput  # noqa: E402

import vaultq  # noqa: E402

# Run throughput.py with hiredis hidden: redis-py checks for it at import.
NO_HIREDIS = (
    "import runpy, sys; sys.modules['hiredis'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
VARIANTS = {
    "asyncio, no hiredis": ("asyncio", False),
    "asyncio + hiredis": ("asyncio", True),
    "uvloop + hiredis": ("uvloop", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    env = {**os.environ, "BENCH_KEYS": vaultq.Keyring.generate().to_json()}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)])
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = throughput.start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                names = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
                for name in names:
                    loop, hiredis = VARIANTS[name]
                    throughput.flushall(url)
                    fill = [sys.executable, "-c", compare.FILL + "\nprint(0, 0)", url, str(args.n)]
                    subprocess.run(fill, env=env, check=True, capture_output=True)
                    drain = [str(HERE / "throughput.py"), "--drain", url, "--n", str(args.n)]
                    drain += ["--concurrency", str(args.concurrency), "--loop", loop]
                    cmd = (
                        [sys.executable, *drain]
                        if hiredis
                        else [sys.executable, "-c", NO_HIREDIS, *drain]
                    )
                    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
                    wall, cpu = map(float, out.stdout.strip().splitlines()[-1].split())
                    results[name].append((args.n / wall, cpu / args.n * 1e6))
                    print(
                        f"round {r} {name:<22} drain/s {args.n / wall:6.0f} "
                        f"({cpu / args.n * 1e6:5.1f} cpu us/job)",
                        flush=True,
                    )
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(f"\nmedians over {args.rounds} alternating rounds, concurrency {args.concurrency}")
    base = statistics.median(x[1] for x in results[next(iter(VARIANTS))])
    for name, rows in results.items():
        rate = statistics.median(x[0] for x in rows)
        cpu = statistics.median(x[1] for x in rows)
        change = (cpu / base - 1) * 100
        print(f"{name:<22} drain/s {rate:7.0f}  cpu us/job {cpu:6.1f}  ({change:+.1f}%)")


if __name__ == "__main__":
    main()
