"""The app of the priority process tests (`vaultq worker prio_app`): one task that appends
`<label> <start time> <pid>` to PRIO_LOG and sleeps `seconds`.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, PRIO_APP
(the app name, unique per test), PRIO_LOG.
"""

from __future__ import annotations

import os
import time

import msgspec

import vaultq

app = vaultq.App(os.environ.get("PRIO_APP", "prio"), lease=5.0)


class Work(msgspec.Struct, frozen=True):
    label: str
    seconds: float = 0.0


@app.task(name="work")
def work(p: Work) -> str:
    fd = os.open(os.environ["PRIO_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{p.label} {time.time():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(p.seconds)
    return p.label
