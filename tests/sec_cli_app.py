"""App for the adversarial security tests (CLI and worker subprocesses): tasks whose
payloads, principals and failures carry marker strings that must never leak."""

from __future__ import annotations

import msgspec

import vaultq

app = vaultq.App("sec-cli")


class Card(msgspec.Struct, frozen=True):
    n: int
    token: vaultq.Secret[str]


class Receipt(msgspec.Struct, frozen=True):
    n: int
    token: vaultq.Secret[str]


@app.task(name="sec.echo")
async def echo(job: Card) -> Receipt:
    return Receipt(job.n, job.token)


@app.task(name="sec.fail", retries=0)
async def fail(job: Card) -> int:
    raise RuntimeError(f"failed for card {job.token.reveal()}")


def build(name: str, broker: str, keyring: vaultq.Keyring) -> vaultq.App:
    """A fresh App with the same tasks, for in-process workers beside CLI subprocesses."""
    other = vaultq.App(name, broker=broker, keyring=keyring)

    @other.task(name="sec.echo")
    async def echo(job: Card) -> Receipt:
        return Receipt(job.n, job.token)

    @other.task(name="sec.fail", retries=0)
    async def fail(job: Card) -> int:
        raise RuntimeError(f"failed for card {job.token.reveal()}")

    return other
