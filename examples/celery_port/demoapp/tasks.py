"""Celery's demoapp/tasks.py, ported. Each task's Celery original is in its comment."""

from __future__ import annotations

import msgspec

import vaultq
from demoapp.models import Widget, WidgetCount
from vaultq.django import app

# Celery passes loose args; vaultq passes one typed payload per task, decoded strictly.


class Pair(msgspec.Struct, frozen=True):
    x: int
    y: int


class Numbers(msgspec.Struct, frozen=True):
    numbers: list[int]


class Rename(msgspec.Struct, frozen=True):
    widget_id: int
    name: str


class Total(msgspec.Struct, frozen=True):
    value: int


class Remote(msgspec.Struct, frozen=True):
    widget_id: int
    fail_first: int = 0
    """How many attempts the (simulated) remote service refuses before it answers."""


# @shared_task
# def add(x, y):
#     return x + y
@app.task
def add(job: Pair) -> int:
    return job.x + job.y


# @shared_task
# def mul(x, y):
#     return x * y
@app.task
def mul(job: Pair) -> int:
    return job.x * job.y


# @shared_task
# def xsum(numbers):
#     return sum(numbers)
@app.task
def xsum(job: Numbers) -> int:
    return sum(job.numbers)


# @shared_task
# def count_widgets():
#     return Widget.objects.count()
# (+ a beat_schedule entry running it every 2 seconds)
@app.periodic(every=2, name="count-widgets")
@app.task
def count_widgets() -> int:
    count = Widget.objects.count()
    WidgetCount.objects.create(count=count)
    return count


# @shared_task
# def rename_widget(widget_id, name):
#     w = Widget.objects.get(id=widget_id)
#     w.name = name
#     w.save()
# Celery does not retry it; neither does vaultq (retries=0 is the default). A missing
# widget fails the job once: renaming it again would not make it exist.
@app.task
def rename_widget(job: Rename) -> None:
    widget = Widget.objects.get(id=job.widget_id)
    widget.name = job.name
    widget.save()


# @shared_task(autoretry_for=(ConnectionError,), retry_backoff=1, max_retries=3)
# def sync_widget(widget_id): ...
# Retried with backoff, only on the transient error, and only because the task is
# idempotent (it writes the same name again on every attempt).
@app.task(retries=3, retry_on=ConnectionError, backoff=0.2, max_backoff=2)
def sync_widget(job: Remote) -> str:
    attempt = vaultq.current_job().attempt  # Celery: self.request.retries + 1
    if attempt <= job.fail_first:
        raise ConnectionError("the remote service is busy")
    Widget.objects.filter(id=job.widget_id).update(name="synced")
    return f"attempt {attempt}"


# Celery's canvas: chain(xsum.s([1, 2, 3]), double.s()).apply_async()
# vaultq: total.s(Numbers([1, 2, 3])).then(double).enqueue_sync(), typed: each step's
# payload is the previous step's result, so results that feed a step are Structs.
@app.task
def total(job: Numbers) -> Total:
    return Total(sum(job.numbers))


@app.task
def double(job: Total) -> Total:
    return Total(job.value * 2)
