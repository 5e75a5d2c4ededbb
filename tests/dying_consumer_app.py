"""An app whose worker's job consumer dies after the first job's outcome is decided.

For ``test_worker_processes.py::test_a_worker_process_whose_consumer_dies_exits_1``:
the fault of ``test_adversarial_outcomes.py::
test_a_worker_whose_consumer_dies_stops_and_says_it_failed`` (a stray
``CancelledError`` that vaultq did not issue) injected into a real ``vaultq worker``
process. Importing this module installs the fault in that process.
"""

from __future__ import annotations

import asyncio

import msgspec

import vaultq
from vaultq.runtime import worker as worker_module


class N(msgspec.Struct, frozen=True):
    n: int


app = vaultq.App("dying-consumer")


@app.task(name="t.ok")
async def ok(job: N) -> int:
    return job.n


def _dies(*_: object) -> None:
    raise asyncio.CancelledError  # not issued by vaultq: a bug's stray cancellation


worker_module.log_outcome = _dies  # type: ignore[attr-defined,assignment]
