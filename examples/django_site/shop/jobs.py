"""Native vaultq tasks (autodiscovered: VAULTQ["TASK_MODULE"] defaults to jobs and tasks)."""

from __future__ import annotations

import msgspec

from shop.models import Export, Order
from shop.policies import CAN_EXPORT
from vaultq import current_job
from vaultq.django import app


class ExportRequest(msgspec.Struct, frozen=True):
    min_cents: int = 0


class ExportDone(msgspec.Struct, frozen=True):
    export_id: int
    rows: int
    requested_by: str


@app.task(timeout=60, retries=2, policy=CAN_EXPORT)
def export_orders(job: ExportRequest) -> ExportDone:
    """Runs in a worker thread with its own DB connection (closed after the job)."""
    who = current_job().principal
    rows = Order.objects.filter(amount_cents__gte=job.min_cents).count()
    export = Export.objects.create(requested_by=who.id if who else "-", rows=rows)
    return ExportDone(export.pk, rows, export.requested_by)
