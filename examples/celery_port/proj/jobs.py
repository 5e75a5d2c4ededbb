"""Celery's proj/celery.py holds the app and a ``debug_task``:

    @app.task(bind=True, ignore_result=True)
    def debug_task(self):
        print(f"Request: {self.request!r}")

The vaultq app is built by ``vaultq.django``; the task lives here, in an installed app's
``jobs.py``, so the worker discovers it (a task in a module nothing imports is unknown to
the worker, and its jobs are REJECTED).
"""

from __future__ import annotations

from vaultq import current_job
from vaultq.django import app


@app.task(store_result=False)  # ignore_result=True
def debug_task() -> None:  # no arguments: no payload type needed (vaultq.NoArgs)
    job = current_job()  # self.request
    print(f"Request: job={job.job_id} task={job.task} attempt={job.attempt}", flush=True)
