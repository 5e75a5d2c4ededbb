"""Apps for the CLI tests: one well-formed, two in one module to be ambiguous."""

from __future__ import annotations

import msgspec

import vaultq


class Ping(msgspec.Struct, frozen=True):
    n: int


good = vaultq.App("cli-good")


@good.task(name="cli.ping", policy=vaultq.require_authenticated())
async def ping(job: Ping) -> int:
    return job.n


@good.task(name="cli.open")
async def open_task(job: Ping) -> int:
    return job.n
