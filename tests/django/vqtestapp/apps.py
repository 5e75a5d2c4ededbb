from __future__ import annotations

import os
from typing import Any

from django.apps import AppConfig


class VqTestAppConfig(AppConfig):
    name = "vqtestapp"

    def ready(self) -> None:
        from vaultq.django import compat

        compat.task_enqueued.connect(_log("enqueued"), weak=False)
        compat.task_started.connect(_log("started"), weak=False)
        compat.task_finished.connect(_log("finished"), weak=False)


def _log(name: str) -> Any:
    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        from vqtestapp.models import SignalLog

        SignalLog.objects.create(
            result_id=task_result.id, name=name, status=str(task_result.status), pid=os.getpid()
        )

    return receiver
