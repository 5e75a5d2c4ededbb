"""The dashboard's permissions, on a model without a table (``managed = False``): Django
permissions need a content type, and a model is how an app declares them."""

from __future__ import annotations

from django.db import models

__all__ = ["Dashboard"]


class Dashboard(models.Model):  # type: ignore[misc]
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_dashboard", "Can view the vaultq dashboard"),
            ("operate_dashboard", "Can retry and purge vaultq dead letters"),
            ("decrypt_job", "Can open a vaultq job's result value in the dashboard"),
        ]
