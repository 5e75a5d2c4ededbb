"""What the dashboard shows, read from the broker at a bounded cost per request.

Every function here costs a fixed number of broker round trips whatever the number of
jobs: per queue one ``stats`` (counters the brokers keep: Redis ``XLEN``/``XPENDING``/
``ZCARD``, SQLite indexed counts), the newest ``EVENT_WINDOW`` events of the bounded event
stream, the worker heartbeats, the newest ``DEAD_LIMIT`` dead letters. Nothing scans the
queued jobs. A job page reads that id's result and claim, and searches its queue
(``job_info``, an operator tool) only while the queue holds at most ``JOB_SEARCH_MAX``
waiting entries.

What it never reads into a page: payload values, result values, a principal's roles,
permissions or attributes, exception messages (``ResultBody.error``), ``Secret`` fields.
The job page opens a stored result with the app's keyring for its *metadata* (status,
attempts, worker, error type, principal id), as ``vaultq job`` without ``--result``
does, and never decodes its value. Every string is broker data that
anyone with write access to the broker could have written: :mod:`vaultq.dashboard.html`
escapes it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from vaultq.brokers.base import (
    RETRYABLE_REASONS,
    Broker,
    DeadLetter,
    ScheduleMark,
    TickStore,
)
from vaultq.brokers.monitor import JobEvent, monitoring
from vaultq.envelope import JOB_ID_FORM, open_result, peek_header
from vaultq.errors import EnvelopeError, KeyringError, VaultqError

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = [
    "DEAD_LIMIT",
    "EVENT_WINDOW",
    "JOB_SEARCH_MAX",
    "Bucket",
    "DeadRow",
    "JobPage",
    "Overview",
    "QueueRow",
    "ReasonCount",
    "ScheduleRow",
    "TimelineEntry",
    "WorkerRow",
    "app_queues",
    "dead_rows",
    "job_page",
    "overview",
    "schedule_rows",
    "worker_rows",
]

EVENT_WINDOW = 2000
"""Newest events read for the throughput chart and failures (one bounded read)."""
DEAD_LIMIT = 200
"""Newest dead letters listed per queue."""
BUCKET = 30.0
"""Seconds per bar of the throughput chart."""
BUCKETS = 20
"""Bars of the chart: the last ten minutes."""


class QueueRow(msgspec.Struct, frozen=True):
    queue: str
    ready: int
    delayed: int
    running: int
    dead: int


class Bucket(msgspec.Struct, frozen=True):
    start: float
    enqueued: int
    succeeded: int
    failed: int
    """Dead, retried and cancelled events."""


class ReasonCount(msgspec.Struct, frozen=True):
    reason: str
    count: int


class WorkerRow(msgspec.Struct, frozen=True):
    worker: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    done: int
    version: str
    started_at: float
    last_beat: float
    age: float
    alive: bool


class Overview(msgspec.Struct, frozen=True):
    app: str
    at: float
    queues: list[QueueRow]
    workers: list[WorkerRow] | None
    """None: this broker does not record heartbeats."""
    throughput: list[Bucket]
    failures: list[ReasonCount]
    events: bool
    """False: no job events are recorded (workers run without ``--events``)."""


class TimelineEntry(msgspec.Struct, frozen=True):
    at: float
    kind: str
    attempt: int
    reason: str
    duration: float | None
    worker: str


class JobPage(msgspec.Struct, kw_only=True):
    job_id: str
    found: bool
    queue: str | None = None
    status: str = "unknown"
    state: str = "absent"
    task: str | None = None
    signer_id: str | None = None
    key_id: str | None = None
    principal_id: str | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    reason: str | None = None
    error_type: str | None = None
    note: str | None = None
    dead_tag: str | None = None
    retryable: bool = False
    timeline: list[TimelineEntry] = []


class ScheduleRow(msgspec.Struct, frozen=True):
    name: str
    task: str
    queue: str
    shape: str
    last: float | None
    """The newest tick claimed or passed over (None: never ran)."""
    last_fired: float | None
    next: float | None


class DeadRow(msgspec.Struct, frozen=True):
    queue: str
    job_id: str
    reason: str
    detail: str
    attempt: int
    at: float
    stub: bool
    retryable: bool


def app_queues(app: App) -> list[str]:
    """Every queue the app uses: its tasks', its default queue, its schedules' and (Django)
    the extra queues of its settings; the default queue first."""
    found = {t.queue for t in app.tasks.values()} | {app.default_queue}
    found |= {s.queue for s in app.schedules.values()}
    extra = getattr(app, "extra_queues", None)
    if callable(extra):
        found |= set(extra())
    return sorted(found, key=lambda q: (q != app.default_queue, q))


async def schedule_rows(app: App) -> list[ScheduleRow]:
    """The app's schedules with their last and next tick (one read of marks per queue)."""
    schedules = list(app.schedules.values())
    broker = await app.broker()
    if not schedules or not isinstance(broker, TickStore):
        return []
    now = app.clock.now()
    marks: dict[str, dict[str, ScheduleMark]] = {}
    rows = []
    for s in schedules:
        if s.queue not in marks:
            marks[s.queue] = {m.name: m for m in await broker.schedule_marks(s.queue)}
        mark = marks[s.queue].get(s.name)
        last = None if mark is None else mark.mark
        rows.append(
            ScheduleRow(
                name=s.name,
                task=s.task.name,
                queue=s.queue,
                shape=s.describe(),
                last=last,
                last_fired=None if mark is None else mark.fired,
                next=s.next_after(max(now, last or now)),
            )
        )
    return rows


async def worker_rows(app: App) -> list[WorkerRow] | None:
    """Workers from their heartbeats; None when the broker does not record them."""
    broker = await app.broker()
    monitor = monitoring(broker)
    if monitor is None:
        return None
    now, beats = await monitor.workers()
    return [
        WorkerRow(
            worker=b.worker,
            host=b.host,
            pid=b.pid,
            queues=b.queues,
            concurrency=b.concurrency,
            in_flight=b.in_flight,
            done=b.done,
            version=b.version,
            started_at=b.started_at,
            last_beat=b.at,
            age=round(b.age(now), 1),
            alive=b.alive(now),
        )
        for b in beats
    ]


async def _recent_events(app: App, limit: int) -> list[JobEvent] | None:
    monitor = monitoring(await app.broker())
    if monitor is None:
        return None
    return await monitor.read_events(limit=limit)


def _chart(events: Sequence[JobEvent], now: float) -> list[Bucket]:
    first = now - BUCKET * BUCKETS
    counts: list[Counter[str]] = [Counter() for _ in range(BUCKETS)]
    for e in events:
        slot = int((e.at - first) // BUCKET)
        if 0 <= slot < BUCKETS:
            kind = "failed" if e.kind in ("dead", "retried", "cancelled") else e.kind
            counts[slot][kind] += 1
    return [
        Bucket(
            start=first + i * BUCKET,
            enqueued=c["enqueued"],
            succeeded=c["succeeded"],
            failed=c["failed"],
        )
        for i, c in enumerate(counts)
    ]


async def overview(app: App, queues: Sequence[str] | None = None) -> Overview:
    """Queue counts, workers, the throughput of the last minutes and failures by reason."""
    broker = await app.broker()
    rows = []
    for q in queues or app_queues(app):
        s = await broker.stats(q)
        rows.append(
            QueueRow(queue=q, ready=s.ready, delayed=s.delayed, running=s.running, dead=s.dead)
        )
    events = await _recent_events(app, EVENT_WINDOW)
    now = time.time()
    reasons: Counter[str] = Counter(
        e.reason or e.kind for e in events or () if e.kind in ("dead", "retried")
    )
    return Overview(
        app=app.name,
        at=now,
        queues=rows,
        workers=await worker_rows(app),
        throughput=_chart(events or (), now),
        failures=[ReasonCount(r, n) for r, n in reasons.most_common(20)],
        events=bool(events),
    )


def _dead_row(d: DeadLetter) -> DeadRow:
    return DeadRow(
        queue=d.queue,
        job_id=d.job_id,
        reason=d.reason,
        detail=d.detail,
        attempt=d.attempt,
        at=d.at,
        stub=d.stub,
        retryable=d.reason in RETRYABLE_REASONS,
    )


async def dead_rows(
    app: App,
    queue: str,
    *,
    reason: str = "",
    task: str = "",
    older_than: float = 0.0,
    limit: int = DEAD_LIMIT,
) -> list[DeadRow]:
    """The newest ``limit`` dead letters of ``queue``, filtered by reason (prefix: ``rejected``
    matches ``rejected:bad_signature``), task (from the dead job's stored event, so only
    when events are on) and age in seconds."""
    broker = await app.broker()
    letters = await broker.dead_letters(queue, limit=limit)
    now = time.time()
    out = []
    tasks: dict[str, str] | None = None
    if task:
        tasks = {e.job_id: e.task for e in await _recent_events(app, EVENT_WINDOW) or () if e.task}
    for d in letters:
        if reason and not (d.reason == reason or d.reason.startswith(reason + ":")):
            continue
        if older_than and now - d.at < older_than:
            continue
        if tasks is not None and tasks.get(d.job_id) != task:
            continue
        out.append(_dead_row(d))
    return out


async def job_page(app: App, job_id: str, queues: Sequence[str] | None = None) -> JobPage:
    """One job's metadata and timeline, never a payload or result value, at a bounded cost:
    its stored result, its job-id claim, the newest dead letters, the newest events -- and
    a search of the queue itself (``job_info``, O(queue length) on Redis) only for queues
    of at most ``JOB_SEARCH_MAX`` waiting entries."""
    if not JOB_ID_FORM.fullmatch(job_id):
        return JobPage(job_id=job_id, found=False, note="not a job id")
    queues = list(queues or app_queues(app))
    events = [e for e in await _recent_events(app, EVENT_WINDOW * 5) or () if e.job_id == job_id]
    timeline = [
        TimelineEntry(
            at=e.at,
            kind=e.kind,
            attempt=e.attempt,
            reason=e.reason,
            duration=e.duration,
            worker=e.worker,
        )
        for e in events
    ]
    broker = await app.broker()
    notes = []
    for queue in queues:
        page = JobPage(job_id=job_id, found=False, queue=queue, timeline=timeline)
        data = await broker.get_result(queue, job_id)
        if data is not None:
            page.found = True
            _result_metadata(app, page, data)
        if await broker.is_running(queue, job_id):
            page.found, page.state, page.status = True, "running", "running"
        letter = next(
            (d for d in await broker.dead_letters(queue, limit=DEAD_LIMIT) if d.job_id == job_id),
            None,
        )
        if letter is not None and page.state != "running":
            page.found = True
            page.reason = letter.reason
            page.attempts = page.attempts or letter.attempt
            page.finished_at = page.finished_at or letter.at or None
            page.dead_tag = letter.tag
            page.retryable = letter.reason in RETRYABLE_REASONS
            if page.status == "unknown":
                page.status = (
                    "failed"
                    if letter.reason in RETRYABLE_REASONS
                    else letter.reason.partition(":")[0]
                )
        if not page.found or page.state == "absent":
            await _search_queue(app, broker, page)
        if page.found or any(e.queue == queue for e in events):
            page.found = True
            if page.status == "unknown" and events:
                page.status = _status_of_event(events[-1].kind)
                page.task = page.task or events[-1].task or None
            return page
        if page.note:
            notes.append(page.note)
    return JobPage(job_id=job_id, found=False, note="; ".join(notes) or None)


JOB_SEARCH_MAX = 2000
"""Waiting entries up to which a job page looks for a queued job in its queue."""


def _status_of_event(kind: str) -> str:
    return {
        "enqueued": "pending",
        "started": "running",
        "retried": "pending",
        "handed_back": "pending",
        "succeeded": "succeeded",
        "dead": "failed",
        "cancelled": "cancelled",
    }.get(kind, "unknown")


async def _search_queue(app: App, broker: Broker, page: JobPage) -> None:
    """A waiting job's place and envelope header, when its queue is short enough."""
    queue = page.queue or ""
    stats = await broker.stats(queue)
    if stats.ready + stats.delayed + stats.running > JOB_SEARCH_MAX:
        if not page.found:
            page.note = (
                f"queue {queue} holds more than {JOB_SEARCH_MAX} waiting jobs: waiting "
                "jobs are not searched (use `vaultq job`); finished, running and dead jobs are "
                "found"
            )
        return
    info = await broker.job_info(queue, page.job_id)
    if info.state == "absent":
        return
    page.found, page.state = True, info.state
    page.status = "running" if info.state == "running" else "pending"
    page.attempts = info.attempt
    page.enqueued_at = info.enqueued_at or None
    if info.envelope:
        try:
            header = peek_header(info.envelope, max_size=app.max_envelope_size)
        except EnvelopeError:
            page.note = "the queued entry is not a readable envelope; a worker rejects it"
            return
        page.task, page.signer_id, page.key_id = header.task, header.signer_id, header.key_id


def _result_metadata(app: App, page: JobPage, data: bytes) -> None:
    """Status, times, worker, error type and principal id from the sealed result, opened
    with the app's keys; its value is never decoded."""
    queue = page.queue or ""
    try:
        body = open_result(
            data, app.keyring, app=app.name, job_id=page.job_id, queue=queue,
            max_size=app.max_envelope_size,
        )  # fmt: skip
        header = peek_header(data, max_size=app.max_envelope_size)
    except (EnvelopeError, KeyringError, VaultqError) as exc:
        page.note = f"a stored result does not open with this app's keys ({type(exc).__name__})"
        return
    page.status = body.status
    page.attempts = body.attempts
    page.started_at, page.finished_at = body.started_at, body.finished_at
    page.worker, page.error_type = body.worker_id, body.error_type
    page.principal_id = body.principal_id
    page.task = header.task or page.task
    page.signer_id, page.key_id = header.signer_id or None, header.key_id
    if body.status != "succeeded":
        page.reason = body.error_type or body.status
