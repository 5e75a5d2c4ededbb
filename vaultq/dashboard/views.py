"""One request to the dashboard, whatever serves it (standalone Starlette or Django).

The adapter authenticates the user, checks the CSRF token of every POST and builds a
:class:`~vaultq.dashboard.pages.Context`; :func:`handle` does the rest: it reads the
broker through :mod:`vaultq.dashboard.data`, renders a page, and for the two actions
(retry one dead letter, purge a queue's dead letters) calls the same operations as
``vaultq dead retry|purge`` with the web operator's name in the audit line. An action
needs ``ctx.can_operate``; showing a payload or result needs ``ctx.can_decrypt`` *and*
a deployment that allowed it (``allow_decrypt``), and each such view is audited.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING

import msgspec

from vaultq.dashboard import data, pages
from vaultq.dashboard.html import Markup, el, join
from vaultq.errors import VaultqError
from vaultq.policy import AUDIT_LOGGER, safe_id

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["CSP", "Reply", "handle", "security_headers", "static_file"]

audit = logging.getLogger(AUDIT_LOGGER)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No inline script or style, nothing from another origin, no framing."""


def security_headers() -> dict[str, str]:
    """Headers on every dashboard response."""
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


class Reply(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    location: str | None = None


_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def static_file(name: str) -> Reply:
    """The package's own JS and CSS (no auth: public, fixed content)."""
    kind = _STATIC.get(name)
    if kind is None:
        return Reply(404, b"not found", "text/plain; charset=utf-8")
    body = resources.files("vaultq.dashboard").joinpath("static", name).read_bytes()
    return Reply(200, body, kind)


def _json(value: object) -> bytes:
    """JSON with ``<``, ``>`` and ``&`` as ``\\u`` escapes (they only occur inside strings):
    broker strings stay inert even where a careless consumer pastes them into HTML."""
    body = msgspec.json.encode(value)
    return body.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def _html(markup: Markup, status: int = 200) -> Reply:
    return Reply(status, markup.encode())


def _page(ctx: pages.Context, title: str, main: Markup, partial: bool, poll: str | None) -> Reply:
    if partial:
        return _html(main)
    return _html(pages.document(ctx, title, main, poll=poll))


def _forbidden(ctx: pages.Context, what: str) -> Reply:
    return _html(
        pages.document(ctx, "Not allowed", el("p", f"You may not {what}.", class_="bad")), 403
    )


def _queue(app: App, asked: str) -> str | None:
    """A queue of this app: a name from the request is only used when the app has it."""
    queues = data.app_queues(app)
    if not asked:
        return queues[0]
    return asked if asked in queues else None


async def handle(
    app: App,
    ctx: pages.Context,
    method: str,
    path: str,
    query: Mapping[str, str],
    form: Mapping[str, str],
    *,
    allow_decrypt: bool = False,
) -> Reply:
    """``path`` is relative to the mount point (``""``, ``jobs``, ``dead/retry``...). The
    caller has authenticated the user and checked the CSRF token of a POST."""
    partial = query.get("partial") == "1"
    if method == "GET":
        if path == "":
            return _page(
                ctx,
                "Overview",
                pages.overview_page(ctx, await data.overview(app)),
                partial,
                "?partial=1",
            )
        if path == "api/overview":
            return Reply(200, _json(await data.overview(app)), "application/json")
        if path == "workers":
            rows = await data.worker_rows(app)
            return _page(
                ctx, "Workers", pages.workers_page(ctx, rows), partial, "workers?partial=1"
            )
        if path == "schedules":
            rows2 = await data.schedule_rows(app)
            return _page(
                ctx, "Schedules", pages.schedules_page(ctx, rows2), partial, "schedules?partial=1"
            )
        if path == "jobs":
            return await _job(app, ctx, query, partial, allow_decrypt)
        if path == "dead":
            return await _dead(app, ctx, query, partial)
        if path == "dead/confirm":
            return await _confirm(app, ctx, query)
    elif method == "POST":
        if path in ("dead/retry", "dead/purge"):
            if not ctx.can_operate:
                return _forbidden(ctx, "retry or purge dead letters")
            return await _act(app, ctx, path, form)
    else:
        return Reply(405, b"method not allowed", "text/plain; charset=utf-8")
    return _html(pages.document(ctx, "Not found", el("p", "No such page.")), 404)


async def _job(
    app: App, ctx: pages.Context, query: Mapping[str, str], partial: bool, allow_decrypt: bool
) -> Reply:
    job_id = query.get("id", "").strip()
    if not job_id:
        return _page(ctx, "Jobs", pages.job_search_page(ctx, None, ""), partial, None)
    job = await data.job_page(app, job_id)
    reveal = None
    if query.get("reveal") == "1" and job.found:
        if not (allow_decrypt and ctx.can_decrypt):
            return _forbidden(ctx, "see job values (decryption is off, or not yours to use)")
        reveal = await _reveal(app, ctx, job)
    elif allow_decrypt and ctx.can_decrypt and job.found:
        reveal = el(
            "p",
            el(
                "a",
                "Show the result value (audited)…",
                href=ctx.base + "jobs?" + _q(id=job_id, reveal="1"),
            ),
        )
    # Not polled: finding a waiting job on Redis reads its queue (``job_info`` is an
    # operator tool, O(queue length)), which is fine once per lookup, not every 2 s.
    poll = None
    return _page(
        ctx,
        f"Job {safe_id(job_id)}",
        pages.job_search_page(ctx, job, job_id, reveal),
        partial,
        poll,
    )


def _q(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


async def _reveal(app: App, ctx: pages.Context, job: data.JobPage) -> Markup:
    """The result value with ``Secret`` fields masked (``vaultq job --result``), audited."""
    from vaultq.operations import inspect_job

    if job.queue is None:
        return el("p", "No queue holds this job.", class_="note")
    audit.warning(
        "dashboard decrypt: job=%s queue=%s user=%s",
        safe_id(job.job_id),
        safe_id(job.queue),
        safe_id(ctx.user),
        extra={
            "vaultq": {
                "event": "operator",
                "action": "dashboard_decrypt",
                "job_id": safe_id(job.job_id),
                "queue": job.queue,
                "user": safe_id(ctx.user),
            }
        },
    )
    report = await inspect_job(app, job.job_id, [job.queue], with_result=True)
    if report.result is msgspec.UNSET:
        return el("p", report.note or "No result value is stored for this job.", class_="note")
    shown = msgspec.json.format(msgspec.json.encode(report.result)).decode()
    return join(el("h2", "Result value (Secret fields masked)"), el("pre", shown, class_="reveal"))


def _age(text: str) -> float:
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


async def _dead(app: App, ctx: pages.Context, query: Mapping[str, str], partial: bool) -> Reply:
    queue = _queue(app, query.get("queue", ""))
    if queue is None:
        return _html(pages.document(ctx, "Dead letters", el("p", "Unknown queue.")), 404)
    reason, task, age = query.get("reason", ""), query.get("task", ""), query.get("age", "")
    rows = await data.dead_rows(app, queue, reason=reason, task=task, older_than=_age(age))
    main = pages.dead_page(
        ctx, data.app_queues(app), queue, rows, reason=reason, task=task, age=age
    )
    poll = "dead?" + _q(queue=queue, reason=reason, task=task, age=age, partial="1")
    return _page(ctx, "Dead letters", main, partial, poll)


async def _confirm(app: App, ctx: pages.Context, query: Mapping[str, str]) -> Reply:
    if not ctx.can_operate:
        return _forbidden(ctx, "retry or purge dead letters")
    queue = _queue(app, query.get("queue", ""))
    action = query.get("action", "")
    if queue is None or action not in ("retry", "purge"):
        return _html(pages.document(ctx, "Confirm", el("p", "Unknown queue or action.")), 404)
    broker = await app.broker()
    count = (await broker.stats(queue)).dead
    main = pages.confirm_page(
        ctx, action=action, queue=queue, job_id=query.get("id", ""), count=count
    )
    return _html(pages.document(ctx, "Confirm", main))


async def _act(app: App, ctx: pages.Context, path: str, form: Mapping[str, str]) -> Reply:
    from vaultq.operations import check_job_id, purge_dead, retry_dead

    queue = _queue(app, form.get("queue", ""))
    back = ctx.base + "dead?" + _q(queue=queue or "")
    if queue is None or form.get("confirm") != "yes":
        return _html(
            pages.document(ctx, "Not done", el("p", "Confirm the action on its page first.")), 400
        )
    if path == "dead/purge":
        n = await purge_dead(app, queue, user=f"dashboard:{ctx.user}")
        lines = [f"purged {n} dead letter(s) from queue {queue}"]
    else:
        try:
            job_id = check_job_id(form.get("id", ""))
        except VaultqError:
            return _html(pages.document(ctx, "Not done", el("p", "Not a job id.")), 400)
        outcomes = await retry_dead(
            app, queue, job_id=job_id, limit=data.DEAD_LIMIT * 5, user=f"dashboard:{ctx.user}"
        )
        lines = [f"{o.job_id}: {o.message}" for o in outcomes] or [
            f"no dead letter of job {safe_id(job_id)} in queue {queue}"
        ]
    return _html(pages.document(ctx, "Done", pages.message_page(ctx, lines, back)))
