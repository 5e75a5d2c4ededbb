"""The dashboard's pages, shared by the standalone server and the Django mount.

Each function takes data from :mod:`vaultq.dashboard.data` and a :class:`Context` (where
the dashboard is mounted, who is looking, what they may do, the CSRF token to put in
forms) and returns :class:`~vaultq.dashboard.html.Markup`. The ``main`` element of each
page carries ``data-poll``: ``static/dashboard.js`` re-fetches the page's ``?partial=1``
form every few seconds and swaps it in (no inline script anywhere, so the
Content-Security-Policy can forbid them).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from urllib.parse import urlencode

import msgspec

from vaultq.dashboard.data import (
    BUCKET,
    Bucket,
    DeadRow,
    JobPage,
    Overview,
    ScheduleRow,
    WorkerRow,
)
from vaultq.dashboard.html import Markup, el, join

__all__ = [
    "Context",
    "confirm_page",
    "dead_page",
    "document",
    "job_search_page",
    "login_page",
    "message_page",
    "overview_page",
    "schedules_page",
    "workers_page",
]

POLL_MS = 2000


class Context(msgspec.Struct, frozen=True, kw_only=True):
    base: str
    """URL prefix of the dashboard, ending in ``/``."""
    user: str
    can_operate: bool
    """Retry and purge dead letters."""
    can_decrypt: bool = False
    csrf_field: str = "csrfmiddlewaretoken"
    csrf_token: str = ""
    app: str = ""
    logout: str | None = None
    """URL of a POST logout form (standalone), or None (the site's own)."""


def _when(at: float | None) -> str:
    if not at:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _url(ctx: Context, path: str, **query: object) -> str:
    q = {k: str(v) for k, v in query.items() if v not in (None, "")}
    return ctx.base + path + (("?" + urlencode(q)) if q else "")


def _csrf(ctx: Context) -> Markup:
    return el("input", type="hidden", name=ctx.csrf_field, value=ctx.csrf_token)


def document(ctx: Context, title: str, main: Markup, *, poll: str | None = None) -> Markup:
    """A whole page: head with the package's own CSS and JS, navigation, ``main``."""
    links = [
        ("Overview", ""),
        ("Jobs", "jobs"),
        ("Dead letters", "dead"),
        ("Workers", "workers"),
        ("Schedules", "schedules"),
    ]
    nav = el(
        "nav",
        el("strong", "vaultq ", ctx.app),
        [el("a", label, href=ctx.base + path) for label, path in links],
        el("span", "signed in as ", el("b", ctx.user), class_="who"),
        el(
            "form",
            _csrf(ctx),
            el("button", "Sign out", type="submit"),
            method="post",
            action=ctx.logout,
            class_="inline",
        )
        if ctx.logout
        else None,
    )
    body = el(
        "html",
        el(
            "head",
            el("meta", charset="utf-8"),
            el("meta", name="viewport", content="width=device-width, initial-scale=1"),
            el("title", title, " - vaultq"),
            el("link", rel="stylesheet", href=ctx.base + "static/dashboard.css"),
            el("script", src=ctx.base + "static/dashboard.js", defer=True),
        ),
        el(
            "body",
            nav,
            el("h1", title),
            el("main", main, id="main", data_poll=poll, data_interval=POLL_MS if poll else None),
        ),
        lang="en",
    )
    return Markup("<!DOCTYPE html>\n" + body)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], **attrs: object) -> Markup:
    return el(
        "table",
        el("thead", el("tr", [el("th", h) for h in headers])),
        el("tbody", [el("tr", [el("td", c) for c in row]) for row in rows]),
        **attrs,
    )


def _chart(buckets: Sequence[Bucket]) -> Markup:
    """Bars per ``BUCKET`` seconds: succeeded (up) and failed (stacked), in SVG attributes
    (no style attributes: the CSP forbids inline styles)."""
    width, height, gap = 14, 80, 2
    top = max([b.succeeded + b.failed for b in buckets] + [1])
    bars = []
    for i, b in enumerate(buckets):
        x = i * (width + gap)
        ok = round(height * b.succeeded / top)
        bad = round(height * b.failed / top)
        title = (
            f"{_when(b.start)}: {b.succeeded} succeeded, {b.failed} failed, {b.enqueued} enqueued"
        )
        bars.append(
            el(
                "g",
                el("title", title),
                el("rect", x=x, y=height - ok, width=width, height=ok, class_="ok"),
                el("rect", x=x, y=height - ok - bad, width=width, height=bad, class_="bad"),
            )
        )
    return el(
        "svg",
        bars,
        viewBox=f"0 0 {len(buckets) * (width + gap)} {height}",
        width=len(buckets) * (width + gap),
        height=height,
        role="img",
        aria_label=f"jobs per {BUCKET:.0f} s over the last minutes",
        class_="chart",
    )


def _workers_table(rows: Sequence[WorkerRow] | None) -> Markup:
    if rows is None:
        return el("p", "This broker does not record worker heartbeats.")
    if not rows:
        return el("p", "No worker has beaten recently.", class_="empty")
    return _table(
        ["worker", "host", "pid", "queues", "in flight", "done", "version", "last beat", "state"],
        [
            (
                w.worker,
                w.host,
                w.pid,
                ", ".join(w.queues),
                f"{w.in_flight}/{w.concurrency}",
                w.done,
                w.version,
                f"{w.age:.1f} s ago",
                el(
                    "span",
                    "alive" if w.alive else "STOPPED BEATING",
                    class_="ok" if w.alive else "bad",
                ),
            )
            for w in rows
        ],
        id="workers",
    )


def overview_page(ctx: Context, data: Overview) -> Markup:
    queues = _table(
        ["queue", "ready", "delayed", "running", "dead"],
        [
            (
                el("a", q.queue, href=_url(ctx, "dead", queue=q.queue)),
                el("span", q.ready, data_count="ready"),
                el("span", q.delayed, data_count="delayed"),
                el("span", q.running, data_count="running"),
                el("span", q.dead, data_count="dead"),
            )
            for q in data.queues
        ],
        id="queues",
    )
    failures = (
        _table(["reason", "count (recent events)"], [(f.reason, f.count) for f in data.failures])
        if data.failures
        else el("p", "No failures among the recent events.", class_="empty")
    )
    chart = (
        _chart(data.throughput)
        if data.events
        else el("p", "No job events recorded: run workers with --events for the chart.")
    )
    return join(
        el("section", el("h2", "Queues"), queues),
        el("section", el("h2", "Throughput (last 10 minutes)"), chart),
        el("section", el("h2", "Workers"), _workers_table(data.workers)),
        el("section", el("h2", "Failures by reason"), failures),
        el("p", "updated ", _when(data.at), class_="stamp"),
    )


def workers_page(ctx: Context, rows: Sequence[WorkerRow] | None) -> Markup:
    return _workers_table(rows)


def schedules_page(ctx: Context, rows: Sequence[ScheduleRow]) -> Markup:
    if not rows:
        return el("p", "This app has no schedules.", class_="empty")
    return _table(
        ["schedule", "task", "queue", "shape", "last tick", "last fired", "next tick"],
        [
            (r.name, r.task, r.queue, r.shape, _when(r.last), _when(r.last_fired), _when(r.next))
            for r in rows
        ],
        id="schedules",
    )


def job_search_page(
    ctx: Context, job: JobPage | None, query: str, reveal: Markup | None = None
) -> Markup:
    form = el(
        "form",
        el("label", "Job id ", el("input", type="search", name="id", value=query, required=True)),
        el("button", "Find", type="submit"),
        method="get",
        action=ctx.base + "jobs",
        class_="search",
    )
    if job is None:
        return form
    if not job.found:
        return join(
            form,
            el(
                "p",
                "No trace of job ",
                el("code", job.job_id),
                " in this app's queues.",
                class_="empty",
            ),
            el("p", job.note, class_="note") if job.note else None,
        )
    fields = [
        ("job id", job.job_id),
        ("status", job.status),
        ("state", job.state),
        ("task", job.task or "-"),
        ("queue", job.queue or "-"),
        ("principal id", job.principal_id or "-"),
        ("signer id", job.signer_id or "-"),
        ("key id", job.key_id or "-"),
        ("attempts", job.attempts),
        ("enqueued", _when(job.enqueued_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("worker", job.worker or "-"),
        ("reason", job.reason or "-"),
        ("error type", job.error_type or "-"),
    ]
    details = el("dl", [join(el("dt", k), el("dd", v)) for k, v in fields], id="job")
    timeline = (
        _table(
            ["time", "event", "attempt", "reason", "duration", "worker"],
            [
                (
                    _when(t.at),
                    t.kind,
                    t.attempt or "-",
                    t.reason or "-",
                    "-" if t.duration is None else f"{t.duration:.3f} s",
                    t.worker or "-",
                )
                for t in job.timeline
            ],
            id="timeline",
        )
        if job.timeline
        else el("p", "No events recorded for this job (workers without --events, or aged out).")
    )
    actions = None
    if job.retryable and ctx.can_operate and job.queue:
        actions = el(
            "p",
            el(
                "a",
                "Retry this dead letter…",
                href=_url(ctx, "dead/confirm", action="retry", queue=job.queue, id=job.job_id),
                class_="button",
            ),
        )
    return join(
        form,
        details,
        el("p", job.note, class_="note") if job.note else None,
        el(
            "p",
            "Signer and key ids of a waiting job are read from its envelope header before "
            "authentication: what the entry claims.",
            class_="note",
        ),
        actions,
        el("h2", "Timeline"),
        timeline,
        reveal,
    )


def dead_page(
    ctx: Context,
    queues: Sequence[str],
    queue: str,
    rows: Sequence[DeadRow],
    *,
    reason: str,
    task: str,
    age: str,
) -> Markup:
    form = el(
        "form",
        el(
            "label",
            "Queue ",
            el(
                "select",
                [el("option", q, value=q, selected=q == queue) for q in queues],
                name="queue",
            ),
        ),
        el("label", "Reason ", el("input", name="reason", value=reason, placeholder="failed")),
        el("label", "Task ", el("input", name="task", value=task)),
        el("label", "Older than (s) ", el("input", name="age", value=age, inputmode="numeric")),
        el("button", "Filter", type="submit"),
        method="get",
        action=ctx.base + "dead",
        class_="search",
    )
    purge = (
        el(
            "p",
            el(
                "a",
                f"Purge every dead letter of {queue}…",
                href=_url(ctx, "dead/confirm", action="purge", queue=queue),
                class_="button danger",
            ),
        )
        if ctx.can_operate
        else None
    )
    if not rows:
        return join(form, el("p", "No dead letters match.", class_="empty"), purge)
    table_rows = []
    for d in rows:
        action: object = "-"
        if d.retryable and ctx.can_operate:
            action = el(
                "a",
                "Retry…",
                href=_url(ctx, "dead/confirm", action="retry", queue=d.queue, id=d.job_id),
                class_="button",
            )
        table_rows.append(
            (
                el("a", d.job_id, href=_url(ctx, "jobs", id=d.job_id)),
                d.reason,
                d.detail,
                d.attempt,
                _when(d.at),
                "stub" if d.stub else "",
                action,
            )
        )
    return join(
        form,
        _table(["job id", "reason", "detail", "attempt", "at", "", ""], table_rows, id="dead"),
        purge,
    )


def confirm_page(ctx: Context, *, action: str, queue: str, job_id: str, count: int) -> Markup:
    """The confirmation step of retry and purge: a POST form with the CSRF token."""
    if action == "purge":
        question = el(
            "p", f"Delete all {count} dead letter(s) of queue ", el("code", queue), " for good?"
        )
        target = "dead/purge"
    else:
        question = el(
            "p",
            "Re-enqueue the dead letter of job ",
            el("code", job_id),
            " in queue ",
            el("code", queue),
            " as attempt 1?",
        )
        target = "dead/retry"
    return el(
        "form",
        question,
        _csrf(ctx),
        el("input", type="hidden", name="queue", value=queue),
        el("input", type="hidden", name="id", value=job_id),
        el("input", type="hidden", name="confirm", value="yes"),
        el(
            "button",
            "Yes, purge" if action == "purge" else "Yes, retry",
            type="submit",
            id="confirm",
            class_="danger" if action == "purge" else None,
        ),
        " ",
        el("a", "Cancel", href=_url(ctx, "dead", queue=queue)),
        method="post",
        action=ctx.base + target,
        class_="confirm",
    )


def message_page(ctx: Context, lines: Sequence[str], back: str) -> Markup:
    return join(
        el("ul", [el("li", line) for line in lines], id="outcome"),
        el("p", el("a", "Back", href=back)),
    )


def login_page(base: str, *, error: str | None, csrf_token: str, next_url: str) -> Markup:
    body = el(
        "html",
        el(
            "head",
            el("meta", charset="utf-8"),
            el("title", "Sign in - vaultq"),
            el("link", rel="stylesheet", href=base + "static/dashboard.css"),
        ),
        el(
            "body",
            el("h1", "vaultq dashboard"),
            el("p", error, class_="bad") if error else None,
            el(
                "form",
                el("input", type="hidden", name="csrf", value=csrf_token),
                el("input", type="hidden", name="next", value=next_url),
                el(
                    "label",
                    "User ",
                    el("input", name="username", autocomplete="username", required=True),
                ),
                el(
                    "label",
                    "Password ",
                    el(
                        "input",
                        name="password",
                        type="password",
                        autocomplete="current-password",
                        required=True,
                    ),
                ),
                el("button", "Sign in", type="submit"),
                method="post",
                action=base + "login",
                class_="login",
            ),
        ),
        lang="en",
    )
    return Markup("<!DOCTYPE html>\n" + body)
