from __future__ import annotations

from typing import Any

from django.db import transaction
from django.http import HttpResponseForbidden, JsonResponse

from vaultq.django import acting_as, aenqueue_on_commit, enqueue_on_commit
from vaultq.errors import AuthorizationDenied
from vqtestapp.jobs import Report, report
from vqtestapp.models import Note
from vqtestapp.tasks import add


def create_report(request: Any) -> Any:
    queue = request.POST.get("queue") or None
    with transaction.atomic():
        note = Note.objects.create(key=request.POST["key"], batch="view")
        try:
            job_id = enqueue_on_commit(
                report, Report(note_id=note.pk), request=request, queue=queue
            )
        except AuthorizationDenied:
            transaction.set_rollback(True)
            return HttpResponseForbidden("not allowed")
        if request.POST.get("fail"):
            transaction.set_rollback(True)
            return JsonResponse({"job_id": job_id, "rolled_back": True}, status=409)
    return JsonResponse({"job_id": job_id})


async def acreate_report(request: Any) -> Any:
    queue = request.POST.get("queue") or None
    note = await Note.objects.acreate(key=request.POST["key"], batch="aview")
    try:
        job_id = await aenqueue_on_commit(
            report, Report(note_id=note.pk), request=request, queue=queue
        )
    except AuthorizationDenied:
        return HttpResponseForbidden("not allowed")
    return JsonResponse({"job_id": job_id})


def django_add(request: Any) -> Any:
    with acting_as(request):
        result = add.enqueue(int(request.GET["a"]), b=int(request.GET["b"]))
    return JsonResponse({"id": result.id, "status": str(result.status)})
