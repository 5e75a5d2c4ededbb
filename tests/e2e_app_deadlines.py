"""Test app for the deadline and cancellation end-to-end tests:
``vaultq worker e2e_app_deadlines:app``.

The worker process reads ``VAULTQ_BROKER``/``VAULTQ_KEYS`` (through :class:`vaultq.App`),
``E2E_APP`` (app name) and ``E2E_STATE`` (directory where task functions count their
calls, one line per call, so "never ran" and "stopped early" are checked, not assumed).
Tests build the producer side with :func:`build`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import msgspec

import vaultq


class Nap(msgspec.Struct, frozen=True):
    seconds: float = 30.0
    n: int = 0


class Budget(msgspec.Struct, frozen=True):
    deadline: float
    remaining: float


def count(state: Path, counter: str) -> int:
    """How many times a task function reached ``bump(counter)``."""
    path = state / counter
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def build(
    name: str,
    state: Path,
    *,
    broker: str | None = None,
    keyring: vaultq.Keyring | None = None,
    clock_skew: float = 0.2,
) -> vaultq.App:
    app = vaultq.App(name, broker=broker, keyring=keyring, clock_skew=clock_skew, backoff=0.05)

    def bump(counter: str) -> None:
        with (state / counter).open("a", encoding="utf-8") as fh:
            fh.write("x\n")

    @app.task(name="nap", timeout=0.5, retries=3)
    async def nap(job: Nap) -> int:
        bump("nap.start")
        await anyio.sleep(job.seconds)
        bump("nap.end")
        return job.n

    @app.task(name="nap_retried", timeout=0.5, retries=1, retry_on_timeout=True)
    async def nap_retried(job: Nap) -> int:
        bump("nap_retried.start")
        await anyio.sleep(job.seconds)
        return job.n

    @app.task(name="block", timeout=0.5, retries=3)
    def block(job: Nap) -> int:
        bump("block.start")
        time.sleep(job.seconds)
        bump("block.end")
        return job.n

    @app.task(name="quick")
    async def quick(job: Nap) -> int:
        return job.n

    @app.task(name="quick_sync")
    def quick_sync(job: Nap) -> int:
        return job.n

    @app.task(name="budget", timeout=1.0, max_timeout=3.0)
    async def budget(job: Nap) -> Budget:
        ctx = vaultq.current_job()
        return Budget(deadline=ctx.deadline, remaining=ctx.remaining())

    @app.task(name="short_lived", expires=0.5)
    async def short_lived(job: Nap) -> int:
        bump("short_lived.start")
        return job.n

    @app.task(name="cancellable", timeout=60, retries=3)
    async def cancellable(job: Nap) -> int:
        bump("cancellable.start")
        await anyio.sleep(job.seconds)
        bump("cancellable.end")
        return job.n

    return app


def __getattr__(attr: str) -> vaultq.App:
    # Built on first access (by the worker), so importing build() has no side effects.
    if attr != "app":
        raise AttributeError(attr)
    app = build(os.environ["E2E_APP"], Path(os.environ["E2E_STATE"]))
    globals()["app"] = app
    return app
