"""The app the periodic-job process tests run (`vaultq worker sched_app`, `vaultq scheduler
sched_app`): one every=1s schedule whose task appends its job id to SCHED_LOG.

Configured from the environment like a deployment: VAULTQ_BROKER, VAULTQ_KEYS, SCHED_APP
(the app name, unique per test) and SCHED_LOG (O_APPEND writes of one short line are atomic).
SCHED_STALL=<path>: once the file <path> exists, this process freezes inside its next tick
(after the policy allowed it, before the seal and the claim) and writes the tick's job id to
<path>.tick, for a test to kill -9 it there.
SCHED_HOLD=<path> (the other processes of that test): while <path> exists and <path>.tick
does not yet, a tick's enqueue waits (up to 2 s, under the 5 s lease) before its claim, so
the stalling process reads the schedule's mark before anyone moves it and reaches the tick
however late the loaded machine wakes it; the held tick is then claimed by one of these.
SCHED_RESTART=1: instead of "beat", two schedules of the same task, every=10s with grace=1s:
"skip" (missed="skip") and "catchup" (missed="run_once").
SCHED_ENQ_LOG=<path>: a line `<job id> <sealed issue time>` per tick job this process wrote.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import msgspec

import vaultq


class Stall(vaultq.Middleware):
    """Freezes the whole process (a blocking sleep on its event loop) mid-tick."""

    def __init__(self, trigger: Path) -> None:
        self.trigger = trigger

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        if job.job_id.startswith("tick:") and self.trigger.exists():
            Path(f"{self.trigger}.tick").write_text(job.job_id)
            time.sleep(3600)


class Hold(vaultq.Middleware):
    """Lets the SCHED_STALL process reach the next tick first (see the module docstring):
    without it, whoever claims a tick first moves its mark, and a process that reads the
    mark later never enters the tick, so on a loaded machine the stalling one may never."""

    def __init__(self, trigger: Path) -> None:
        self.trigger = trigger

    def before_enqueue(self, job: vaultq.EnqueueInfo, trace: dict[str, str]) -> None:
        frozen = Path(f"{self.trigger}.tick")
        deadline = time.monotonic() + 2.0
        while job.job_id.startswith("tick:") and self.trigger.exists() and not frozen.exists():
            if time.monotonic() > deadline:
                return  # the next tick holds again
            time.sleep(0.01)


class Enqueued(vaultq.Middleware):
    """Appends each tick job this process wrote, with its sealed issue time."""

    def after_enqueue(self, job: vaultq.EnqueueInfo, error: str | None) -> None:
        if error is None:
            _append(os.environ["SCHED_ENQ_LOG"], f"{job.job_id} {job.enqueued_at:.6f}")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


_stall = os.environ.get("SCHED_STALL")
_hold = os.environ.get("SCHED_HOLD")
_restart = bool(os.environ.get("SCHED_RESTART"))
_middleware: list[vaultq.Middleware] = (
    [Stall(Path(_stall))] if _stall else [Hold(Path(_hold))] if _hold else []
)
if os.environ.get("SCHED_ENQ_LOG"):
    _middleware.append(Enqueued())
app = vaultq.App(os.environ.get("SCHED_APP", "sched"), lease=5.0, middleware=_middleware)


class Beat(msgspec.Struct, frozen=True):
    pass


@app.task(name="beat", policy=vaultq.require_role("vaultq:scheduler"))
def beat(p: Beat) -> None:
    _append(os.environ["SCHED_LOG"], f"{vaultq.current_job().job_id} {os.getpid()}")


if _restart:
    app.schedule(beat, every=timedelta(seconds=10), grace=1, missed="skip", name="skip")
    app.schedule(beat, every=timedelta(seconds=10), grace=1, missed="run_once", name="catchup")
else:
    app.schedule(beat, every=timedelta(seconds=1), grace=30, name="beat")
