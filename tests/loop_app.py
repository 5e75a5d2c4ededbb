"""An app whose tasks answer which event loop runs them and whether the worker froze its
start-up heap (tests/test_worker_loop.py)."""

from __future__ import annotations

import asyncio
import gc

import msgspec

import vaultq

app = vaultq.App("loop")


class Ask(msgspec.Struct, frozen=True):
    n: int


@app.task(name="loop.which")
async def which(job: Ask) -> str:
    return type(asyncio.get_running_loop()).__module__


@app.task(name="loop.frozen")
async def frozen(job: Ask) -> int:
    return gc.get_freeze_count()
