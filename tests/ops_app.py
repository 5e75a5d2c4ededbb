"""App for the operator CLI tests (``tests/test_cli_ops.py``): ``vaultq ... ops_app``.

The name comes from ``OPS_APP``, the broker and keys from ``VAULTQ_BROKER`` and
``VAULTQ_KEYS``, and ``OPS_STATE`` is a directory where tasks leave marks.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec

import vaultq

SECRET_MARKER = "tok-PLAINTEXT-7f3a"
"""The Secret value tests send: it must never appear in a log or on the terminal."""


class Card(msgspec.Struct, frozen=True):
    n: int
    token: vaultq.Secret[str]


class Receipt(msgspec.Struct, frozen=True):
    n: int
    token: vaultq.Secret[str]


class Nap(msgspec.Struct, frozen=True):
    seconds: float


app = vaultq.App(os.environ.get("OPS_APP", "ops"), backoff=0.05)


def _state() -> Path:
    return Path(os.environ.get("OPS_STATE", "."))


@app.task(name="ops.echo", retries=0)
async def echo(job: Card) -> Receipt:
    return Receipt(n=job.n, token=job.token)


@app.task(name="ops.fail", retries=0)
def fail(job: Card) -> int:
    revealed = job.token.reveal()  # a frame local holding the plaintext
    raise ValueError(f"card {revealed} was declined for order {job.n}")


@app.task(name="ops.flaky", retries=0)
async def flaky(job: Card) -> int:
    if not (_state() / "flaky.ok").exists():
        raise RuntimeError("not yet")
    return job.n


@app.task(name="ops.nap", timeout=60, retries=0)
async def nap(job: Nap) -> int:
    (_state() / "nap.started").touch()
    await anyio.sleep(job.seconds)
    return 1


@app.task(name="ops.quiet", retries=0, store_result=False)
async def quiet(job: Nap) -> int:
    return 1
