"""The app of the batch-signature process tests (`vaultq worker batch_app`): one task that
appends `<n> <pid>` to BATCH_LOG and returns n.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS (the
verify-only keyring in the tests: split trust), BATCH_APP (the app name, unique per test),
BATCH_LOG.
"""

from __future__ import annotations

import os

import msgspec

import vaultq

app = vaultq.App(os.environ.get("BATCH_APP", "batch"))


class Item(msgspec.Struct, frozen=True):
    n: int


@app.task(name="batch.record")
def record(item: Item) -> int:
    fd = os.open(os.environ["BATCH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{item.n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return item.n
