"""The ORM inside jobs: per-job threads and connections, no cross-talk, no leaks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from vqhelpers import wait_for


def db_fds(pid: int) -> int:
    """Open file descriptors of process ``pid`` on the SQLite database file."""
    db = os.path.realpath(os.environ["VQTEST_DB"])
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == db:
                count += 1
        except OSError:
            continue
    return count


def test_50_concurrent_async_jobs_do_not_share_connections(workers: Any, queue: str) -> None:
    from vqtestapp.jobs import OrmWrite, orm_write
    from vqtestapp.models import Note

    from vaultq.django import get_app

    app = get_app()
    batch = "b" + uuid.uuid4().hex[:8]
    payloads = [OrmWrite(batch=batch, n=i, fail=i % 2 == 1, pause=0.5) for i in range(50)]
    handles = orm_write.enqueue_many_sync(payloads, queue=queue)
    workers.start("--queues", queue, "--concurrency", "50")
    reports = [h.result_sync(timeout=90) for h in handles]

    # Every job saw exactly its own row inside its own transaction...
    assert all(r.in_atomic and r.seen == 1 for r in reports)
    # ...rolled-back jobs left nothing, committed ones exactly one row each.
    values = sorted(Note.objects.filter(batch=batch).values_list("value", flat=True))
    assert values == list(range(0, 50, 2))
    # The jobs overlapped (0.5 s pause each, connection open), and each ran its ORM calls
    # in a thread and on a connection of its own, kept across its awaits.
    assert len({r.thread for r in reports}) == 50
    assert len({r.first_conn for r in reports}) == 50
    assert all(r.conn == r.first_conn for r in reports)
    assert app.job(handles[0].id, queue=queue).status_sync() == "succeeded"


def test_no_connection_leak_after_500_jobs(workers: Any, queue: str) -> None:
    from vqtestapp.jobs import OrmWrite, orm_write, orm_write_sync

    from vaultq.django import get_app

    get_app()
    batch = "l" + uuid.uuid4().hex[:8]
    proc = workers.start("--queues", queue, "--concurrency", "20")
    handles = []
    for start in range(0, 500, 100):
        chunk = [OrmWrite(batch=batch, n=i) for i in range(start, start + 100)]
        task = orm_write if start % 200 == 0 else orm_write_sync
        handles += task.enqueue_many_sync(chunk, queue=queue)
    for h in handles:
        h.result_sync(timeout=120)
    from vqtestapp.models import Note

    assert Note.objects.filter(batch=batch).count() == 500
    # With CONN_MAX_AGE=0 every job's connection is closed when the job ends.
    wait_for(lambda: db_fds(proc.pid) == 0, 10, "the worker to hold no DB connection")
    assert proc.poll() is None
