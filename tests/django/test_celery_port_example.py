"""examples/celery_port (Celery's Django example, ported) runs as its README says: migrate,
enqueue from the shell, ``manage.py vaultq_worker`` on SQLite runs every task, the retry
with backoff, the periodic job and the argument-less task discovered in the project
package (Celery's proj/celery.py debug_task)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from vqhelpers import HERE

EXAMPLE = HERE.parents[1] / "examples" / "celery_port"

SCRIPT = r"""
import subprocess, sys, time
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)

import vaultq
from vaultq.django import app
from demoapp.models import Widget, WidgetCount
from demoapp.tasks import Numbers, Pair, Remote, Rename, Total, add, double, mul, rename_widget
from demoapp.tasks import sync_widget, total, xsum
from proj.jobs import debug_task

w1 = Widget.objects.create(name="old")
w2 = Widget.objects.create(name="remote")
h_add = add.enqueue_sync(Pair(2, 2))
h_mul = mul.enqueue_sync(Pair(3, 4))
h_xsum = xsum.enqueue_sync(Numbers([1, 2, 3]))
h_rename = rename_widget.enqueue_sync(Rename(w1.id, "renamed"))
h_missing = rename_widget.enqueue_sync(Rename(404, "nobody"))
h_sync = sync_widget.enqueue_sync(Remote(w2.id, fail_first=2))
h_debug = debug_task.enqueue_sync()
h_chain = total.s(Numbers([1, 2, 3])).then(double).enqueue_sync()
try:
    add.enqueue_sync(Pair("2", 2))
except vaultq.PayloadError as exc:
    print("refused at the call:", exc)
else:
    raise AssertionError("a str for an int was enqueued")

with open("worker.log", "wb") as log:
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "vaultq_worker"], stdout=log, stderr=subprocess.STDOUT
    )
try:
    assert h_add.result_sync(timeout=60) == 4
    assert h_mul.result_sync(timeout=60) == 12
    assert h_xsum.result_sync(timeout=60) == 6
    assert h_chain.result_sync(timeout=60) == Total(12)  # chain(xsum.s(...), double.s())
    h_rename.result_sync(timeout=60)
    assert Widget.objects.get(id=w1.id).name == "renamed"
    try:
        h_missing.result_sync(timeout=60)
    except vaultq.JobFailed as exc:
        assert exc.error_type.endswith("DoesNotExist"), exc.error_type
    else:
        raise AssertionError("renaming a missing widget succeeded")
    assert h_sync.result_sync(timeout=60) == "attempt 3"  # two ConnectionErrors, retried
    assert Widget.objects.get(id=w2.id).name == "synced"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        h_debug.status_sync() != "succeeded" or not WidgetCount.objects.exists()
    ):
        time.sleep(0.2)
    assert h_debug.status_sync() == "succeeded"  # discovered in proj/jobs.py
    assert WidgetCount.objects.exists(), "the periodic job never ran"
    print("IDS", h_missing.id, h_sync.id, h_debug.id)
finally:
    worker.terminate()
    worker.wait(30)
print("EXAMPLE OK")
"""

GENERATED = ["db.sqlite3", "vaultq.db", "vaultq.db-wal", "vaultq.keys"]


def test_generated_files_are_git_ignored() -> None:
    root = HERE.parents[1]
    names = [str(EXAMPLE.relative_to(root) / n) for n in GENERATED]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *names],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ignored.stdout.split() == names, ignored.stdout + ignored.stderr


def test_celery_port_end_to_end(tmp_path: Path) -> None:
    site = tmp_path / "celery_port"
    shutil.copytree(EXAMPLE, site, ignore=shutil.ignore_patterns(*GENERATED, "__pycache__"))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VQTEST_", "VAULTQ_", "DJANGO_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="proj.settings", PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = (site / "worker.log").read_text() if (site / "worker.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log[-3000:]
    assert "EXAMPLE OK" in proc.stdout
    assert "refused at the call" in proc.stdout
    missing, synced, debug = re.findall(r"IDS (\S+) (\S+) (\S+)", proc.stdout)[0]
    # The missing widget ran once (retries=0, as in Celery), the synced one three times.
    assert re.findall(rf"job {missing} .*attempt=(\d)", log) == ["1"], log[-3000:]
    assert re.findall(rf"job {synced} .*attempt=(\d)", log) == ["1", "2", "3"], log[-3000:]
    assert f"Request: job={debug} task=proj.jobs.debug_task attempt=1" in log
    assert (site / "vaultq.keys").stat().st_mode & 0o077 == 0
