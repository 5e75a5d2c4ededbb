"""An app whose task answers which event loop runs it (tests/test_worker_loop.py)."""

from __future__ import annotations

import asyncio

import msgspec

import vaultq

app = vaultq.App("loop")


class Ask(msgspec.Struct, frozen=True):
    n: int


@app.task(name="loop.which")
async def which(job: Ask) -> str:
    return type(asyncio.get_running_loop()).__module__
