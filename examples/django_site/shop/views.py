from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponseForbidden
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from shop.jobs import ExportRequest, export_orders
from shop.models import Export
from shop.policies import READ_ANY_RESULT
from shop.tasks import order_total
from vaultq.django import acting_as, enqueue_on_commit, get_app, principal_from_request
from vaultq.errors import AuthorizationDenied, JobError


@login_required
def index(request: Any) -> Any:
    return render(request, "shop/index.html", {"exports": Export.objects.order_by("-pk")[:5]})


@login_required
@require_POST
def request_export(request: Any) -> Any:
    with transaction.atomic():
        # ... write whatever the job must see; it is enqueued only if this commits.
        try:
            job_id = enqueue_on_commit(
                export_orders,
                ExportRequest(min_cents=int(request.POST.get("min_cents") or 0)),
                request=request,
            )
        except AuthorizationDenied:
            return HttpResponseForbidden("you may not export orders")
    return redirect("job", job_id=job_id)


@login_required
@require_POST
def order_total_view(request: Any) -> Any:
    with acting_as(request):  # the Django Task runs as the logged-in user
        result = order_total.enqueue(request.POST.get("customer", ""))
    return redirect("task", result_id=result.id)


@login_required
def job_status(request: Any, job_id: str) -> Any:
    # A job id is not a capability: bind the handle to its task, and read the result only
    # as the job's own user (or staff, READ_ANY_RESULT).
    handle = get_app().job(job_id, task=export_orders)
    status = handle.status_sync()
    result: Any = None
    error = ""
    if status.final:
        try:
            result = handle.result_sync(
                timeout=1, reader=principal_from_request(request), policy=READ_ANY_RESULT
            )
        except AuthorizationDenied:
            return HttpResponseForbidden("this is not your job")
        except JobError as exc:
            error = str(exc)
    return render(
        request,
        "shop/status.html",
        {"kind": "vaultq job", "id": job_id, "status": status, "result": result, "error": error},
    )


@login_required
def task_status(request: Any, result_id: str) -> Any:
    try:
        with acting_as(request):  # get_result reads as this user (RESULT_POLICY for staff)
            result = order_total.get_result(result_id)
    except AuthorizationDenied:
        return HttpResponseForbidden("this is not your task")
    value = result.return_value if result.status == "SUCCESSFUL" else None
    errors = [e.exception_class_path for e in result.errors]
    return render(
        request,
        "shop/status.html",
        {
            "kind": "Django task",
            "id": result_id,
            "status": result.status,
            "result": value,
            "error": ", ".join(errors),
        },
    )
