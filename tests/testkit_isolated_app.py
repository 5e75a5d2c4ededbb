"""An app whose tasks run in child processes, for tests/test_testing.py: the children
import this module by name (the test puts tests/ on their PYTHONPATH)."""

from __future__ import annotations

import os

import msgspec

import vaultq

app = vaultq.App("tkiso", broker="memory://")


class Empty(msgspec.Struct, frozen=True):
    pass


@app.task(name="pid", isolation="process", timeout=30)
def pid(job: Empty) -> int:
    return os.getpid()


@app.task(name="spin", isolation="process", timeout=0.5)
def spin(job: Empty) -> None:
    while True:  # ignores every cancellation: only killing the process stops it
        pass


@app.task(name="pid_noargs", isolation="process", timeout=30)
def pid_noargs() -> int:  # no payload (vaultq.NoArgs): the child calls it without one
    return os.getpid()
