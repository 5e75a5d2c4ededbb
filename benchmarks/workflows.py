"""The cost of a chain step, a group member and a chord member against a plain job
(issue 16), in one process.

    .venv/bin/python -m benchmarks.workflows [--broker sqlite|memory|redis://...] [-n 300]
        [--members 100]

Runs ``n`` three-step chains (parse -> price -> receipt) and ``n`` of each of the three
tasks as plain jobs, through the real pipeline (``vaultq.testing.run_pending``: sealed,
written, fetched, opened, authorized, run, settled), and prints the time per job and the
overhead per chain step: a later step reads and opens its feeding result, and every step
but the last opens and writes the next step's envelope before settling.

Then ``n`` jobs of one task as plain jobs, as groups of ``--members`` members, and as
chords over as many members (a ``total`` callback each), and prints the time per member:
a group member costs a per-member "enqueue unless it exists" write; a chord member also
opens the callback's envelope (one signature check) and records its sealed result with
the atomic ``chord_arrive`` before settling, and each chord adds one callback that reads
and opens every member's result. Figures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

import vaultq
from vaultq.testing import TestWorker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from flow_app import Order, Priced, Text, build


async def _measure(url: str, n: int, concurrency: int = 16) -> tuple[float, float, int]:
    app = vaultq.App("bench-flow", broker=url, keyring=vaultq.Keyring.generate())
    t = build(app)
    worker = TestWorker(app, concurrency=concurrency)
    try:
        started = time.perf_counter()
        for i in range(n):
            await t.parse.enqueue(Text(f"sku{i}:2"))
            await t.price.enqueue(Order(f"sku{i}", 2))
            await t.receipt.enqueue(Priced(f"sku{i}", 500))
        await worker.run_pending(limit=10 * n)
        plain = time.perf_counter() - started

        started = time.perf_counter()
        handles = [
            await t.parse.s(Text(f"sku{i}:2")).then(t.price).then(t.receipt).enqueue()
            for i in range(n)
        ]
        await worker.run_pending(limit=10 * n)
        for i, handle in enumerate(handles):
            if await handle.result(timeout=30) != f"sku{i}=500":
                raise SystemExit(f"workflow {handle.id} gave a wrong result")
        chained = time.perf_counter() - started
        first = handles[0]
        size = len(await _first_envelope_size(app, first.id))
    finally:
        await app.aclose()
    return plain, chained, size


async def _first_envelope_size(app: vaultq.App, workflow_id: str) -> bytes:
    # The first step's envelope is gone once it ran; re-seal an equal chain to size it.
    t = app.tasks
    chain = t["parse"].s(Text("sku0:2")).then(t["price"]).then(t["receipt"])
    await chain.enqueue(workflow_id=f"{workflow_id}-size")
    broker = await app.broker()
    for entry in await broker.queued("default"):
        if entry.job_id == f"{workflow_id}-size.0":
            return bytes(entry.envelope)
    return b""


async def _measure_groups(
    url: str, n: int, members: int, concurrency: int = 16
) -> tuple[float, float, float, int]:
    app = vaultq.App("bench-groups", broker=url, keyring=vaultq.Keyring.generate())
    t = build(app)
    worker = TestWorker(app, concurrency=concurrency)
    groups = max(1, n // members)
    jobs = groups * members
    try:
        started = time.perf_counter()
        plain_handles = [await t.price.enqueue(Order(f"sku{i}", 2)) for i in range(jobs)]
        await worker.run_pending(limit=10 * jobs)
        for plain_handle in plain_handles:  # read back, as the group's handle does
            await plain_handle.result(timeout=60)
        plain = time.perf_counter() - started

        started = time.perf_counter()
        handles = [
            await vaultq.group(
                *[t.price.s(Order(f"sku{g}-{i}", 2)) for i in range(members)]
            ).enqueue()
            for g in range(groups)
        ]
        await worker.run_pending(limit=10 * jobs)
        for handle in handles:
            if len(await handle.result(timeout=60)) != members:
                raise SystemExit(f"group {handle.id} gave a wrong result")
        grouped = time.perf_counter() - started

        started = time.perf_counter()
        chords = [
            await vaultq.chord(
                vaultq.group(*[t.price.s(Order(f"sku{g}-{i}", 2)) for i in range(members)]),
                t.total,
            ).enqueue()
            for g in range(groups)
        ]
        await worker.run_pending(limit=10 * jobs)
        for handle in chords:
            if await handle.result(timeout=60) != 500 * members:
                raise SystemExit(f"chord {handle.id} gave a wrong result")
        chorded = time.perf_counter() - started
    finally:
        await app.aclose()
    return plain, grouped, chorded, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="sqlite")
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--members", type=int, default=100, help="members per group/chord")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = {"sqlite": f"sqlite:///{tmp}/bench.db", "memory": "memory://"}.get(
            args.broker, args.broker
        )
        plain, chained, size = anyio.run(_measure, url, args.n, args.concurrency)
        gplain, grouped, chorded, members = anyio.run(
            _measure_groups, url, args.n, args.members, args.concurrency
        )
    jobs = 3 * args.n
    print(f"broker {args.broker}, concurrency {args.concurrency}: ", end="")
    print(f"{args.n} chains of 3 steps vs {jobs} plain jobs")
    print(f"plain job : {plain / jobs * 1e3:8.3f} ms per job (enqueue + run + settle)")
    print(f"chain step: {chained / jobs * 1e3:8.3f} ms per step (incl. waiting for results)")
    print(
        f"overhead  : {(chained - plain) / jobs * 1e3:8.3f} ms per step "
        f"({(chained / plain - 1) * 100:+.0f} %)"
    )
    print(f"first envelope of a 3-step chain: {size} bytes")
    print(f"{members} jobs as plain jobs, groups and chords of {args.members} members")
    print(f"plain job   : {gplain / members * 1e3:8.3f} ms per job")
    for label, took in (("group member", grouped), ("chord member", chorded)):
        print(
            f"{label}: {took / members * 1e3:8.3f} ms per member, overhead "
            f"{(took - gplain) / members * 1e3:+.3f} ms ({(took / gplain - 1) * 100:+.0f} %)"
        )


if __name__ == "__main__":
    main()
