"""The app of the unique-job process tests (`vaultq worker unique_app`): one task whose
unique key is its invoice id; each run appends `start`/`done` lines to UNIQUE_LOG.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, UNIQUE_APP
(the app name, unique per test), UNIQUE_LOG.
"""

from __future__ import annotations

import os
import time

import msgspec

import vaultq

app = vaultq.App(os.environ.get("UNIQUE_APP", "unique"))


class Invoice(msgspec.Struct, frozen=True):
    invoice_id: int
    note: str = ""


def _log(line: str) -> None:
    fd = os.open(os.environ["UNIQUE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.task(name="send", unique=lambda p: f"invoice:{p.invoice_id}")
def send(p: Invoice) -> int:
    _log("start")
    time.sleep(2)
    _log("done")
    return p.invoice_id
