"""examples/django_site runs as its README says: migrate, enqueue from views, worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from vqhelpers import HERE

SCRIPT = r"""
import os, subprocess, sys, time
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from django.test import Client
from shop.models import Order
user = User.objects.create_superuser("admin", password="pw")
Order.objects.create(customer="ada", amount_cents=500)
Order.objects.create(customer="ada", amount_cents=700)
client = Client()
client.force_login(user)
assert client.get("/").status_code == 200
job_page = client.post("/export/", {"min_cents": "600"})["Location"]
task_page = client.post("/total/", {"customer": "ada"})["Location"]
worker = subprocess.Popen([sys.executable, "manage.py", "vaultq_worker"])
try:
    deadline = time.monotonic() + 60
    pages = {}
    while time.monotonic() < deadline and len(pages) < 2:
        for page in (job_page, task_page):
            body = client.get(page).content.decode()
            if "succeeded" in body or "SUCCESSFUL" in body:
                pages[page] = body
        time.sleep(0.2)
    assert "rows=1" in pages[job_page], pages  # typed: the handle is bound to export_orders
    assert "user:%d" % user.pk in pages[job_page]
    assert "result: <code>1200</code>" in pages[task_page], pages
    # Another (non-staff) user who learns the ids reads neither result.
    other = User.objects.create_user("mallory", password="pw")
    snoop = Client()
    snoop.force_login(other)
    assert snoop.get(job_page).status_code == 403
    assert snoop.get(task_page).status_code == 403
    assert b"1200" not in snoop.get(task_page).content
finally:
    worker.terminate()
    worker.wait(30)
print("EXAMPLE OK")
"""


EXAMPLE = HERE.parents[1] / "examples" / "django_site"
# What following the example's README leaves behind (database, embedded broker, keys).
GENERATED = ["db.sqlite3", "vaultq.db", "vaultq.db-wal", "vaultq.keys"]


def copy_example(source: Path, dest: Path) -> None:
    """Copy the example without the files its .gitignore names: a developer who ran the
    example in place (a migrated db.sqlite3, a key file) must not change this test."""
    patterns = [
        line.strip().rstrip("/")
        for line in (EXAMPLE / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*patterns))


def test_generated_files_are_git_ignored_and_not_copied(tmp_path: Path) -> None:
    names = [str(EXAMPLE.relative_to(HERE.parents[1]) / n) for n in GENERATED]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *names],
        cwd=HERE.parents[1],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ignored.stdout.split() == names, ignored.stdout + ignored.stderr
    # a source tree in which someone followed the README
    source = tmp_path / "ran_in_place"
    shutil.copytree(EXAMPLE, source)
    for name in GENERATED:
        (source / name).write_bytes(b"left behind")
    (source / "vaultq.keys").chmod(0o644)
    copy_example(source, tmp_path / "copy")
    copied = {p.name for p in (tmp_path / "copy").iterdir()}
    assert copied.isdisjoint(GENERATED)
    assert {"manage.py", "shop", "site_config"} <= copied


def test_example_site_end_to_end(tmp_path: Path) -> None:
    site = tmp_path / "django_site"
    copy_example(EXAMPLE, site)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VQTEST_", "VAULTQ_", "DJANGO_"))
    }
    env.update(DJANGO_SETTINGS_MODULE="site_config.settings", PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "EXAMPLE OK" in proc.stdout
    assert (site / "vaultq.keys").stat().st_mode & 0o077 == 0
