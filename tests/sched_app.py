"""The app the periodic-job process tests run (`vaultq worker sched_app`, `vaultq scheduler
sched_app`): one every=1s schedule whose task appends its job id to SCHED_LOG.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, SCHED_APP
(the app name, unique per test) and SCHED_LOG (O_APPEND writes of one short line are atomic).
"""

from __future__ import annotations

import os
from datetime import timedelta

import msgspec

import vaultq

app = vaultq.App(os.environ.get("SCHED_APP", "sched"), lease=5.0)


class Beat(msgspec.Struct, frozen=True):
    pass


@app.periodic(every=timedelta(seconds=1), name="beat", grace=30)
@app.task(name="beat", policy=vaultq.require_role("vaultq:scheduler"))
def beat(p: Beat) -> None:
    job = vaultq.current_job()
    fd = os.open(os.environ["SCHED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{job.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
