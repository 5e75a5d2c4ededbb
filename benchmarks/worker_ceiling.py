"""How fast one worker process (or two) processes no-op jobs, and, with ed25519, how close
it comes to the verification ceiling measured in the same run.

    .venv/bin/python benchmarks/worker_ceiling.py [--n 20000] [--concurrency 50,200]
        [--signing hmac|ed25519] [--processes 1,2] [--rounds 3] [--loop asyncio|uvloop]
        [--batch-signatures [on|off|both]] [--worker-keys full|public]

N no-op jobs are queued with ``enqueue_many`` on a private ``redis-server``; then P worker
processes (``vaultq.Worker``, hmac or ed25519 keyring, every check on) are started and
drain them. A job counts when its worker has settled it (result written, message acked):
``Worker.processed``. The clock runs from the moment the first worker is ready to
consume until the last job is settled, so interpreter start-up is not counted.

With ``--signing ed25519`` the same run first measures the verification ceiling: raw
``Ed25519PublicKey.verify`` calls over the signed bytes of real sealed envelopes, in
one thread of this process. The ratio printed is jobs/s over that ceiling (issue 15
asks for >= 0.70). ``--processes 1,2`` prints the scaling of two processes over one.

``--batch-signatures`` (ed25519 only) queues the jobs from an app with
``batch_signatures=True``: each ``enqueue_many`` call of 1,000 jobs is signed once, over
a Merkle root (docs/envelope.md, *Batch signatures*), and a worker verifies each batch
once. ``--batch-signatures both`` drains single-signed and batch-signed jobs one after
the other in every round (an A/B in one run, against the same ceiling).
``--worker-keys public`` gives the workers the verify-only keyring (``vaultq keys
public``: split trust, what an ed25519 deployment is for); they then seal results
AEAD-only instead of signing each one.

Columns: jobs/s (wall); cpu us/job of the worker processes (every thread); loop us/job,
the event loop threads' CPU (the serial part of a worker: 1e6 / loop us is what one
process reaches with a free core); redis us/job, the redis-server's CPU over the drain
(it shares the cores: on 2 cores, worker CPU + redis CPU per job bounds the rate).

Every figure is the median of ``--rounds``. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402

import vaultq  # noqa: E402
from vaultq.envelope import JOB_DOMAIN, JobMeta, new_job_id, peek_header, seal_job  # noqa: E402
from vaultq.runtime.worker import Worker  # noqa: E402

IDLE_END = 1.0
"""Seconds without progress after which a worker process reports and exits."""


def keys_for(signing: str) -> str:
    algorithm = "hmac-sha256" if signing == "hmac" else signing
    return vaultq.Keyring.generate(signing=algorithm).to_json()


def verification_ceiling(keys: str, n: int) -> tuple[float, float]:
    """Raw ed25519 verifications per second of one thread over real envelopes: by wall
    time and by the thread's CPU time."""
    import msgspec

    keyring = vaultq.Keyring.from_json(keys)
    now = time.time()
    signed: list[tuple[bytes, bytes]] = []
    for i in range(n):
        data = seal_job(
            keyring,
            job_id=new_job_id(),
            app="bench",
            task="bench.noop",
            queue="default",
            payload=json.dumps({"n": i}).encode(),
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 3600,
        )
        header_bytes, nonce, ciphertext, signature = msgspec.msgpack.decode(data[3:])
        signed.append((b"".join((JOB_DOMAIN, header_bytes, nonce, ciphertext)), signature))
    verify = keyring.verifier(peek_header(data).signer_id)
    assert verify is not None
    # Wall time, like the worker's rate it is compared with (both suffer the same load).
    t0, c0 = time.perf_counter(), time.thread_time()
    for message, signature in signed:
        if not verify(message, signature):
            raise SystemExit("a freshly sealed envelope did not verify")
    return n / (time.perf_counter() - t0), n / (time.thread_time() - c0)


def gil_check(seconds: float = 1.0) -> dict[str, float]:
    """Does ``Ed25519PublicKey.verify`` release the GIL? Verifications/s of one thread,
    of two threads at once, and of one thread while the main thread runs Python code
    (what a helper verifying beside a busy event loop would get)."""
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    public, message = private.public_key(), os.urandom(200)
    signature = private.sign(message)

    def rate(verifiers: int, python_beside: bool) -> float:
        counts = [0] * verifiers
        stop = time.perf_counter() + seconds

        def verify(i: int) -> None:
            while time.perf_counter() < stop:
                public.verify(signature, message)
                counts[i] += 1

        threads = [threading.Thread(target=verify, args=(i,)) for i in range(verifiers)]
        for t in threads:
            t.start()
        while python_beside and time.perf_counter() < stop:
            sum(range(200))  # pure Python, holding the GIL like a busy event loop
        for t in threads:
            t.join()
        return sum(counts) / seconds

    return {"one": rate(1, False), "two": rate(2, False), "beside": rate(1, True)}


async def queue_jobs(url: str, keys: str, n: int, batch: bool) -> None:
    app, noop = throughput.make_app(url, keys)
    app.configure(batch_signatures=batch)
    for s in range(0, n, 1000):
        await noop.enqueue_many(throughput.Noop(i) for i in range(s, min(n, s + 1000)))
    await app.aclose()


async def serve_until_idle(url: str, keys: str, concurrency: int) -> dict[str, float]:
    """One worker process: consume until nothing was settled for IDLE_END seconds."""
    app, _ = throughput.make_app(url, keys)
    worker = Worker(app, concurrency=concurrency, block=0.05, grace=1)
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(lambda: worker.run(started=started))
        await started.wait()
        t0, c0, l0 = time.monotonic(), time.process_time(), time.thread_time()
        last, last_at, last_cpu, last_loop = 0, t0, c0, l0
        while True:
            await anyio.sleep(0.002)
            now = time.monotonic()
            if worker.processed != last:
                last, last_at = worker.processed, now
                last_cpu, last_loop = time.process_time(), time.thread_time()
            elif now - last_at > IDLE_END:
                break
        worker.stop()
    await app.aclose()
    # thread_time here is the event loop's thread: the serial part of the worker.
    return {"start": t0, "end": last_at, "jobs": last, "cpu": last_cpu - c0, "loop": last_loop - l0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(
    url: str,
    keys: str,
    n: int,
    concurrency: int,
    processes: int,
    loop: str,
    redis_pid: int,
    batch: bool = False,
    worker_keys: str | None = None,
) -> dict:
    anyio.run(queue_jobs, url, keys, n, batch)
    redis_cpu = cpu_seconds(redis_pid)
    env = {**os.environ, "BENCH_KEYS": worker_keys or keys}
    cmd = [sys.executable, __file__, "--serve", url, "--concurrency", str(concurrency)]
    procs = [
        subprocess.Popen([*cmd, "--loop", loop], env=env, stdout=subprocess.PIPE)
        for _ in range(processes)
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    jobs = sum(r["jobs"] for r in reports)
    if jobs != n:
        raise SystemExit(f"the workers settled {jobs} jobs of {n}")
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cpu = sum(r["cpu"] for r in reports)
    loop = sum(r["loop"] for r in reports)
    # The server's CPU over the whole drain (its idle polling included: small).
    redis_us = (cpu_seconds(redis_pid) - redis_cpu) / n * 1e6
    return {
        "jobs_s": n / wall,
        "cpu_us": cpu / n * 1e6,
        "loop_us": loop / n * 1e6,
        "redis_us": redis_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", default="50,200")
    parser.add_argument("--signing", choices=("hmac", "ed25519"), default="hmac")
    parser.add_argument("--processes", default="1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--batch-signatures",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="ed25519: sign each enqueue_many call once (both: A/B in every round)",
    )
    parser.add_argument(
        "--worker-keys",
        choices=("full", "public"),
        default="full",
        help="the workers' keyring: the producers' (default) or its verify-only copy",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_signatures != "off" and args.signing != "ed25519":
        parser.error("--batch-signatures needs --signing ed25519 (hmac has nothing to amortize)")
    if args.serve:
        report = anyio.run(
            serve_until_idle,
            args.serve,
            os.environ["BENCH_KEYS"],
            int(args.concurrency),
            backend_options={"use_uvloop": args.loop == "uvloop"},
        )
        print(json.dumps(report))
        return
    keys = keys_for(args.signing)
    public = (
        vaultq.Keyring.from_json(keys).public().to_json() if args.worker_keys == "public" else None
    )
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    process_counts = [int(p) for p in args.processes.split(",")]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.batch_signatures]
    results: dict[tuple[int, int, bool], list[dict]] = {}
    ceilings: list[tuple[float, float]] = []
    gil = gil_check() if args.signing == "ed25519" else None
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = throughput.start_redis(Path(tmp))
        try:
            for r in range(args.rounds):
                if args.signing == "ed25519":
                    ceilings.append(verification_ceiling(keys, 5000))
                for c in concurrencies:
                    for p in process_counts:
                        for batch in modes:
                            throughput.flushall(url)
                            got = drain(
                                url, keys, args.n, c, p, args.loop, redis_proc.pid, batch, public
                            )
                            results.setdefault((c, p, batch), []).append(got)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            redis_proc.terminate()
            redis_proc.wait()
    print(
        f"\nworker throughput, {args.signing} signing, {args.worker_keys} keyring on workers, "
        f"N={args.n}, loop {args.loop}, "
        f"median of {args.rounds} rounds, {os.cpu_count()} cores (load "
        f"{os.getloadavg()[0]:.1f})"
    )
    ceiling = statistics.median(c[0] for c in ceilings) if ceilings else None
    cpu_ceiling = statistics.median(c[1] for c in ceilings) if ceilings else None
    if gil is not None:
        print(
            f"ed25519 verify, threads: one {gil['one']:,.0f}/s, two at once {gil['two']:,.0f}/s "
            f"({gil['two'] / gil['one']:.2f}x: the GIL is released), one beside a thread "
            f"running Python {gil['beside']:,.0f}/s (waits for the GIL after each call)"
        )
    if ceiling is not None and cpu_ceiling is not None:
        print(
            f"ed25519 verification ceiling (one thread): {ceiling:,.0f} verifications/s wall, "
            f"{cpu_ceiling:,.0f}/s of its CPU time ({1e6 / cpu_ceiling:.1f} us each)"
        )
    print(
        f"{'concurrency':>11} {'processes':>9} {'jobs/s':>9} {'cpu us/job':>11} "
        f"{'loop us/job':>12} {'redis us/job':>12} {'signatures':>10}  note"
    )
    for (c, p, batch), runs in results.items():
        rate = statistics.median(x["jobs_s"] for x in runs)
        cpu = statistics.median(x["cpu_us"] for x in runs)
        loop = statistics.median(x["loop_us"] for x in runs)
        server = statistics.median(x["redis_us"] for x in runs)
        notes = []
        if ceiling is not None and cpu_ceiling is not None:
            notes.append(f"{rate / ceiling:.2f}x ceiling (wall)")
            # Load-independent: the event loop's thread is the serial part, so one free
            # core for it bounds the worker at 1e6 / loop us per job.
            notes.append(f"{1e6 / loop / cpu_ceiling:.2f}x by CPU")
            if len(runs) > 1:
                # Each round against its own ceiling: the spread is the machine's noise.
                per_round = [x["jobs_s"] / c_[0] for x, c_ in zip(runs, ceilings, strict=True)]
                notes.append("rounds " + "/".join(f"{r:.2f}" for r in per_round))
        one = results.get((c, 1, batch))
        if p > 1 and one is not None:
            notes.append(f"{rate / statistics.median(x['jobs_s'] for x in one):.2f}x 1 proc")
        sigs = "per batch" if batch else "per job"
        row = f"{c:>11} {p:>9} {rate:>9,.0f} {cpu:>11.1f} {loop:>12.1f} {server:>12.1f} {sigs:>10}"
        print(f"{row}  {', '.join(notes)}")


if __name__ == "__main__":
    main()
