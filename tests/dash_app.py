"""App for the dashboard tests: ``vaultq worker dash_app:app --events`` and
``vaultq dashboard dash_app:app``. Configured through ``VAULTQ_BROKER``/``VAULTQ_KEYS``
and ``DASH_APP`` (the app name, one per test). ``ok`` succeeds and returns its payload's
text and secret (the test's plaintext marker) in the sealed result; ``boom`` fails for
good (a dead letter that may be retried); ``nap`` sleeps a little, so queues are seen
filling and draining."""

from __future__ import annotations

import os

import anyio
import msgspec

import vaultq


class Note(msgspec.Struct, frozen=True):
    text: str
    secret: vaultq.Secret[str]
    n: int = 0


class Echo(msgspec.Struct, frozen=True):
    text: str
    secret: vaultq.Secret[str]


def build(
    name: str, *, broker: str | None = None, keyring: vaultq.Keyring | None = None
) -> vaultq.App:
    app = vaultq.App(name, broker=broker, keyring=keyring, backoff=0.05)

    @app.task(name="ok", policy=vaultq.allow_all)
    async def ok(job: Note) -> Echo:
        return Echo(text=job.text, secret=job.secret)

    @app.task(name="boom", policy=vaultq.allow_all, retries=0)
    async def boom(job: Note) -> None:
        raise vaultq.Fatal(f"no: {job.text}")

    @app.task(name="nap", policy=vaultq.allow_all)
    async def nap(job: Note) -> int:
        await anyio.sleep(0.05)
        return job.n

    return app


app = build(os.environ.get("DASH_APP", "dash"))
