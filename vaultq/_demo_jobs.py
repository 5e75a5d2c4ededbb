"""The tasks ``vaultq demo`` runs: small, real jobs that show what vaultq guarantees.

:func:`build` makes a fresh :class:`~vaultq.App` with these tasks registered on the
given broker URL, so the demo (and its tests) can run several times in one process.
Task names are fixed (``render_report``, ...), not derived from this module's path.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import anyio
import msgspec

from vaultq.app import App
from vaultq.jobs import current_job
from vaultq.payload import Secret
from vaultq.policy import Policy, PolicyRequest, all_of, require_permission, rule
from vaultq.tasks import Task

__all__ = [
    "Charge",
    "DemoApp",
    "Export",
    "Fetch",
    "Receipt",
    "Report",
    "ReportRequest",
    "Sale",
    "build",
    "charge_card",
    "flaky_fetch",
    "render_report",
    "slow_export",
]

# -- payloads and results -------------------------------------------------------------------


class Sale(msgspec.Struct, frozen=True):
    region: str
    month: str
    amount: float


class ReportRequest(msgspec.Struct, frozen=True):
    title: str
    sales: list[Sale]


class Report(msgspec.Struct, frozen=True):
    title: str
    regions: int
    total: float
    best_region: str
    csv: str
    svg: str


class Charge(msgspec.Struct, frozen=True):
    order_id: int
    amount_cents: int
    card_token: Secret[str]
    """Never printed or logged (``Secret('***')``); readable only through ``reveal()``."""


class Receipt(msgspec.Struct, frozen=True):
    order_id: int
    charged_cents: int
    card_last4: str


class Export(msgspec.Struct, frozen=True):
    rows: int
    seconds_per_1000: float


class Fetch(msgspec.Struct, frozen=True):
    url: str


# -- task bodies (plain functions, registered on each demo app by build()) ------------------


def render_report(job: ReportRequest) -> Report:
    """A sync task (runs in a worker thread): totals per region, as CSV and an SVG chart."""
    totals: dict[str, float] = {}
    for sale in job.sales:
        totals[sale.region] = totals.get(sale.region, 0.0) + sale.amount
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    csv_lines = ["region,total"] + [f"{region},{total:.2f}" for region, total in ordered]
    return Report(
        title=job.title,
        regions=len(ordered),
        total=round(sum(totals.values()), 2),
        best_region=ordered[0][0] if ordered else "",
        csv="\n".join(csv_lines) + "\n",
        svg=_bar_chart(job.title, ordered),
    )


def _bar_chart(title: str, rows: list[tuple[str, float]]) -> str:
    width, bar_height, gap, left = 480, 22, 8, 90
    top = 36
    height = top + len(rows) * (bar_height + gap) + 10
    peak = max((total for _, total in rows), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (region, total) in enumerate(rows):
        y = top + i * (bar_height + gap)
        length = (width - left - 90) * total / peak
        parts.append(f'<text x="10" y="{y + 16}">{html.escape(region)}</text>')
        parts.append(
            f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_height}" fill="#3b6ea5"/>'
        )
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + 16}">{total:,.2f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


async def charge_card(job: Charge) -> Receipt:
    """Uses a Secret: the token is revealed only here, inside the worker."""
    token = job.card_token.reveal()
    await anyio.sleep(0.05)  # the payment provider's round trip
    return Receipt(order_id=job.order_id, charged_cents=job.amount_cents, card_last4=token[-4:])


async def slow_export(job: Export) -> int:
    """Takes longer than its 0.5 s deadline: the cancel scope stops it at its next await."""
    await anyio.sleep(job.rows / 1000 * job.seconds_per_1000)
    return job.rows


async def flaky_fetch(job: Fetch) -> str:
    """Fails on its first attempt, succeeds on the retry (backoff with full jitter)."""
    attempt = current_job().attempt
    if attempt == 1:
        raise ConnectionError("upstream reset the connection")
    return f"fetched {job.url} on attempt {attempt}"


# -- the app --------------------------------------------------------------------------------


@dataclass
class DemoApp:
    """A demo app and its tasks, plus the revocation list its payment policy reads."""

    app: App
    report: Task[ReportRequest, Report]
    charge: Task[Charge, Receipt]
    export: Task[Export, int]
    fetch: Task[Fetch, str]
    revoked: set[str] = field(default_factory=set)


def build(broker_url: str) -> DemoApp:
    """A fresh demo app on ``broker_url``; with the embedded broker and no ``VAULTQ_KEYS``,
    its keyring is generated beside the database on first use."""
    app = App("demo", broker=broker_url)
    revoked: set[str] = set()

    @rule(name="not_revoked")
    def not_revoked(request: PolicyRequest) -> bool:
        # Read at enqueue and again before every attempt in the worker: a principal revoked
        # after enqueue is denied when the job comes up, never run.
        return request.principal is not None and request.principal.id not in revoked

    payments: Policy = all_of(require_permission("payments.charge"), not_revoked)
    return DemoApp(
        app=app,
        report=app.task(name="render_report", timeout=10, retries=0)(render_report),
        charge=app.task(name="charge_card", timeout=5, retries=0, policy=payments)(charge_card),
        export=app.task(name="slow_export", timeout=0.5, retries=0)(slow_export),
        fetch=app.task(name="flaky_fetch", timeout=5, retries=2, backoff=0.1)(flaky_fetch),
        revoked=revoked,
    )
