"""A hostile flood against a real redis-server: how much memory does garbage cost?

    .venv/bin/python -m benchmarks.flood [--entries 100000] [--big 20] [--concurrency 16]

Starts its own ``redis-server`` (as ``benchmarks.chaos`` does: a free loopback port, a
temporary directory; never the machine's own Redis), writes ``--entries`` junk entries
straight into a queue's stream the way anyone with write access could (random 300-byte
"envelopes" under distinct ids, ``--big`` of them 2 MiB), drains them with an in-process
worker, and prints ``used_memory`` before and after, the time to drain, the number of
dead letters kept and the counters. Figures only: nothing here asserts.

What bounds the figure (``docs/redis.md``, Memory): junk gets no result key and no
finished id, its dead letter is a stub without the envelope (oversized envelopes are
never read into the worker), and the dead-letter stream keeps at most 10,000 entries.
"""

from __future__ import annotations

import argparse
import os
import time

import anyio
import msgspec
import redis

import vaultq
from benchmarks.chaos import lab
from vaultq.runtime.worker import Worker


class N(msgspec.Struct, frozen=True):
    n: int


async def flood(url: str, keys: vaultq.Keyring, entries: int, big: int, concurrency: int) -> str:
    app = vaultq.App("flood", broker=url, keyring=keys)

    @app.task(name="flood.ok")
    async def ok(job: N) -> int:
        return job.n

    broker = await app.broker()
    stream = broker.keys("default").stream  # type: ignore[attr-defined]
    raw = redis.Redis.from_url(url)
    raw.xgroup_create(stream, "vaultq", id="0", mkstream=True)
    before = int(raw.info("memory")["used_memory"])
    pipe = raw.pipeline(transaction=False)
    for i in range(entries - big):
        pipe.xadd(stream, {"id": f"junk-{i}", "env": os.urandom(300), "att": "1", "at": "0"})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    for i in range(big):
        raw.xadd(stream, {"id": f"big-{i}", "env": b"B" * (2 << 20), "att": "1", "at": "0"})
    peak = int(raw.info("memory")["used_memory"])
    worker = Worker(app, concurrency=concurrency, grace=5.0, block=0.2)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: worker.run(started=ready))
        await ready.wait()
        while (await broker.stats("default")).ready:  # noqa: ASYNC110
            await anyio.sleep(0.2)  # polled: the broker has no "drained" event
        assert await (await ok.enqueue(N(1))).result(timeout=30) == 1
        worker.stop()
    took = time.monotonic() - started
    after = int(raw.info("memory")["used_memory"])
    dead = len(await broker.dead_letters("default", limit=1_000_000))
    counters = await broker.counters("default")
    results = sum(1 for _ in raw.scan_iter(match=broker.keys("default").result("*")))  # type: ignore[attr-defined]
    raw.close()
    await app.aclose()
    return (
        f"{entries} hostile entries ({big} of 2 MiB): drained in {took:.1f} s; used_memory "
        f"{before / 1e6:.2f} MB before, {peak / 1e6:.2f} MB with the flood queued, "
        f"{after / 1e6:.2f} MB after (+{(after - before) / 1e6:.2f} MB); dead letters kept "
        f"{dead}; result keys {results} (the one genuine job); counters {counters}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    with lab(lease=30.0) as the_lab:
        print(anyio.run(flood, the_lab.url, the_lab.keys, args.entries, args.big, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
