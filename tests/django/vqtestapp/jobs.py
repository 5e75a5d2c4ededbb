"""Native vaultq tasks of the test app (autodiscovered: TASK_MODULE)."""

from __future__ import annotations

import threading
import time

import anyio
import msgspec
from asgiref.sync import sync_to_async
from django.db import connection, transaction

from vaultq import Fatal, Secret, allow_all, current_job
from vaultq.django import app
from vaultq.django.policies import require_django_permission
from vqtestapp.models import Note


class Report(msgspec.Struct, frozen=True):
    note_id: int


class ReportResult(msgspec.Struct, frozen=True):
    principal: str
    permissions: list[str]
    note_key: str


@app.task(
    name="vqtestapp.report", retries=0, policy=require_django_permission("vqtestapp.run_report")
)
def report(job: Report) -> ReportResult:
    ctx = current_job()
    assert ctx.principal is not None
    note = Note.objects.get(pk=job.note_id)
    return ReportResult(ctx.principal.id, sorted(ctx.principal.permissions), note.key)


class OrmWrite(msgspec.Struct, frozen=True):
    batch: str
    n: int
    fail: bool = False
    pause: float = 0.0


class OrmReport(msgspec.Struct, frozen=True):
    thread: int
    conn: int
    seen: int
    in_atomic: bool
    first_conn: int = 0


class Rollback(Exception):
    pass


def _write(job: OrmWrite) -> OrmReport:
    seen = -1
    in_atomic = False
    try:
        with transaction.atomic():
            Note.objects.create(key=f"{job.batch}-{job.n}", batch=job.batch, value=job.n)
            time.sleep(0.002)
            seen = Note.objects.filter(batch=job.batch, value=job.n).count()
            in_atomic = connection.in_atomic_block
            if job.fail:
                raise Rollback
    except Rollback:
        pass
    return OrmReport(threading.get_ident(), id(connection.connection), seen, in_atomic)


def _open() -> int:
    connection.ensure_connection()
    return id(connection.connection)


@app.task(name="vqtestapp.orm_write", retries=0)
async def orm_write(job: OrmWrite) -> OrmReport:
    first = await sync_to_async(_open)()
    await anyio.sleep(job.pause)  # every job of the batch holds its connection meanwhile
    report = await sync_to_async(_write)(job)
    return msgspec.structs.replace(report, first_conn=first)


@app.task(name="vqtestapp.orm_write_sync", retries=0)
def orm_write_sync(job: OrmWrite) -> OrmReport:
    return _write(job)


class Beat(msgspec.Struct, frozen=True):
    kind: str = "light"


@app.task(name="vqtestapp.beat", queue="beat")
def beat(job: Beat) -> str:
    return job.kind


class DashNote(msgspec.Struct, frozen=True):
    """For the dashboard tests: ``text`` and ``secret`` carry a plaintext marker."""

    text: str
    secret: Secret[str]
    fail: bool = False


@app.task(name="vqtestapp.dash", queue="dash", retries=0, policy=allow_all)
async def dash(job: DashNote) -> DashNote:
    if job.fail:
        raise Fatal("the dashboard test's failing job")
    await anyio.sleep(0.02)
    return job


class Counted(msgspec.Struct, frozen=True):
    key: str
    notes: int


@app.task(
    name="vqtestapp.flow_count",
    queue="vqflow",
    retries=0,
    policy=require_django_permission("vqtestapp.run_report"),
)
def flow_count(job: Report) -> Counted:
    """A workflow's first step (test_django_workflows.py): reads the note its view wrote
    in the transaction that enqueued the workflow, so it only exists after the commit."""
    note = Note.objects.get(pk=job.note_id)
    return Counted(note.key, Note.objects.filter(key=note.key).count())


@app.task(name="vqtestapp.flow_label", queue="vqflow", retries=0, policy=allow_all)
def flow_label(job: Counted) -> str:
    return f"{job.key}:{job.notes}"
