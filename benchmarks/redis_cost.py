"""What the Redis broker costs ``redis-server`` (and the client) per job, by script, for
one or more vaultq revisions side by side.

    .venv/bin/python benchmarks/redis_cost.py [REV ...] [--n 20000] [--batch 200]
        [--rounds 3] [--backlog 1000000]

Without a revision it measures this checkout; with several (``main f6a9360``) each is
exported with ``git archive`` and they take turns round by round on one private
``redis-server`` (FLUSHALLed between runs), so only vaultq differs. Per round and
revision, straight through ``RedisBroker`` (no sealing, no worker: 330 random bytes
stand for an envelope, which the scripts never open):

* ``enqueue``: N single-job ``broker.enqueue`` calls; redis-server µs per call of the
  enqueue script (``INFO commandstats``, ``evalsha``);
* ``fetch`` / ``settle``: N jobs queued, then fetched and acked (a 200-byte result
  each) in batches of ``--batch``: the scripts' server µs per job, the client's CPU
  µs per job for each, and the ``redis-server`` process's CPU per job over the whole
  fetch + settle (``/proc``: its event loop and socket I/O included);
* ``--backlog M``: the same fetch + settle of N jobs with M more queued behind them
  (what grows with the stream's length, if anything).

Figures only (medians over the rounds); nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402

MEASURE = r"""
import json, os, sys, time
import anyio, redis
from vaultq.brokers.base import Ack, EnqueueItem
from vaultq.brokers.redis import RedisBroker

url = sys.argv[1]
n, batch, backlog, pid = (int(a) for a in sys.argv[2:6])
envelope, result = os.urandom(330), os.urandom(200)

def server_cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def evalsha_usec(raw):
    row = raw.info("commandstats").get("cmdstat_evalsha")
    return float(row["usec"]) if row else 0.0

async def main():
    raw = redis.Redis.from_url(url)
    b = RedisBroker(url, namespace="cost")
    await b.connect()
    out = {}
    raw.config_resetstat()
    for i in range(n):
        await b.enqueue([EnqueueItem("q", os.urandom(16).hex(), envelope)])
    out["enqueue_server_us"] = evalsha_usec(raw) / n
    raw.flushall()
    for s in range(0, n + backlog, 1000):
        size = min(1000, n + backlog - s)
        await b.enqueue([EnqueueItem("q", os.urandom(16).hex(), envelope) for _ in range(size)])
    fetch_us = settle_us = fetch_cpu = settle_cpu = 0.0
    cpu0 = server_cpu()
    done = 0
    while done < n:
        raw.config_resetstat()
        c = time.process_time()
        got = await b.fetch(["q"], min(batch, n - done), consumer="c", lease=60, block=0)
        fetch_cpu += time.process_time() - c
        fetch_us += evalsha_usec(raw)
        raw.config_resetstat()
        c = time.process_time()
        await b.settle([Ack(d, result, 3600, time.time() + 3600) for d in got])
        settle_cpu += time.process_time() - c
        settle_us += evalsha_usec(raw)
        done += len(got)
    out["server_cpu_us"] = (server_cpu() - cpu0) / n * 1e6
    out.update(fetch_server_us=fetch_us / n, settle_server_us=settle_us / n,
               fetch_client_us=fetch_cpu / n * 1e6, settle_client_us=settle_cpu / n * 1e6)
    await b.close()
    raw.close()
    print(json.dumps(out))

anyio.run(main)
"""

COLUMNS = (
    ("enqueue_server_us", "enqueue script µs/call"),
    ("fetch_server_us", "fetch µs/job"),
    ("settle_server_us", "settle µs/job"),
    ("server_cpu_us", "redis-server CPU µs/job"),
    ("fetch_client_us", "client fetch µs/job"),
    ("settle_client_us", "client settle µs/job"),
)


def export(rev: str, into: Path) -> Path:
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev, "vaultq"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def measure(tree: Path, url: str, args: argparse.Namespace, backlog: int, pid: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", MEASURE, url, str(args.n), str(args.batch), str(backlog), str(pid)]
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="*", help="git revisions (default: this checkout)")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200, help="fetch/settle batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=0, help="jobs queued behind the N")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, Path(tmp)) for rev in args.revs} or {"this checkout": ROOT}
        proc, url = throughput.start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                revs = list(trees) if r % 2 == 0 else list(reversed(trees))
                for rev in revs:
                    for label, backlog in (("empty", 0), ("backlog", args.backlog)):
                        if label == "backlog" and not backlog:
                            continue
                        throughput.flushall(url)
                        got = measure(trees[rev], url, args, backlog, proc.pid)
                        results.setdefault((rev, label), []).append(got)
                        print(f"round {r + 1} {rev} {label}: {got}", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait()
            if args.revs:
                for tree in trees.values():
                    shutil.rmtree(tree, ignore_errors=True)
    print(
        f"\nN={args.n}, batches of {args.batch}, medians of {args.rounds} rounds "
        f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )
    print("| revision | queue | " + " | ".join(name for _, name in COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for (rev, label), runs in results.items():
        cells = [f"{statistics.median(r[key] for r in runs):.1f}" for key, _ in COLUMNS]
        queue = label if label == "empty" else f"{args.backlog:,} queued"
        print(f"| {rev} | {queue} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
