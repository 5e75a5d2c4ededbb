"""The chaos scenarios of ``python -m benchmarks.chaos`` at CI sizes: real worker
processes and a redis-server of their own, every job counted by id in and out."""

from __future__ import annotations

import pytest

from benchmarks.chaos import run_scenario

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_kill_9_storm_loses_nothing_and_never_overlaps() -> None:
    row = await run_scenario("kill9", "small")
    assert (row.lost, row.overlapping, row.crashes) == (0, 0, 0), row
    assert row.dup_started > 0, "the storm killed running jobs: they ran again elsewhere"


async def test_redis_outage_longer_than_the_lease_with_worker_processes() -> None:
    row = await run_scenario("outage", "small")
    assert (row.lost, row.overlapping, row.crashes, row.dup_finished) == (0, 0, 0, 0), row
    # every first attempt was fenced (cancelled, unsettled) and ran again after the lease
    assert row.dup_started == row.jobs, row


async def test_workers_whose_clock_is_behind_run_every_job_once() -> None:
    row = await run_scenario("skew", "small")
    assert (row.lost, row.overlapping, row.crashes, row.dup_started) == (0, 0, 0, 0), row


async def test_sigterm_under_load_loses_nothing() -> None:
    row = await run_scenario("sigterm", "small")
    assert (row.lost, row.overlapping, row.crashes, row.dup_finished) == (0, 0, 0, 0), row


async def test_hostile_flood_with_worker_processes_loses_nothing() -> None:
    """Junk (some of it 2 MiB, some under the genuine jobs' ids) written before the
    workers start: every genuine job succeeds once, nothing crashes, and what is left
    in Redis once the junk is drained is a few MiB (stubs; no result per junk entry)."""
    row = await run_scenario("flood", "small")
    assert (row.lost, row.overlapping, row.crashes, row.dup_started) == (0, 0, 0, 0), row
    assert float(row.redis_memory.split()[0]) < 16, row
