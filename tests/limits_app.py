"""The app of the limit process tests (`vaultq worker limits_app`): a task limited to two
at once, one limited to 20 starts a second, and an unlimited one; each run appends
`<task> start|end <time> <pid>` to LIMITS_LOG.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, LIMITS_APP
(the app name, unique per test), LIMITS_LOG.
"""

from __future__ import annotations

import os
import time

import msgspec

import vaultq

app = vaultq.App(os.environ.get("LIMITS_APP", "limits"), lease=5.0)


class Work(msgspec.Struct, frozen=True):
    n: int
    seconds: float = 0.0


def _log(task: str, event: str) -> None:
    fd = os.open(os.environ["LIMITS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task} {event} {time.time():.6f} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.task(name="pair", max_concurrency=2)
def pair(p: Work) -> int:
    _log("pair", "start")
    time.sleep(p.seconds)
    _log("pair", "end")
    return p.n


@app.task(name="paced", rate_limit="20/s")
def paced(p: Work) -> int:
    _log("paced", "start")
    return p.n


@app.task(name="free")
def free(p: Work) -> int:
    _log("free", "start")
    return p.n
