"""``vaultq job|cancel|status vaultq.django``: the project's Tasks backend queues count
as the app's queues (a job on one is found, an empty one is not "unknown")."""

from __future__ import annotations

import json
import subprocess
import sys

from vqhelpers import WORK, worker_env


def _vq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=worker_env(),
        cwd=str(WORK),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_backend_queues_are_searched_and_known() -> None:
    from vqtestapp.jobs import OrmWrite, orm_write

    # "djq" is a queue of the vaultq Tasks backend in settings.TASKS, used by no task.
    handle = orm_write.enqueue_sync(OrmWrite(batch="cli", n=1), queue="djq", delay=600)
    status = _vq("status", "vaultq.django", "--queues", "djq", "--json")
    assert status.returncode == 0, status.stderr
    job = _vq("job", "vaultq.django", handle.id, "--json")
    assert job.returncode == 0, job.stderr
    report = json.loads(job.stdout)
    assert (report["queue"], report["status"], report["state"]) == ("djq", "pending", "delayed")
    cancel = _vq("cancel", "vaultq.django", handle.id)
    assert cancel.returncode == 0 and "was pending" in cancel.stdout, cancel.stderr
