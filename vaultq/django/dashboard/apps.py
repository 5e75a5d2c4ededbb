"""The dashboard's Django app: only there to own the dashboard's permissions."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["DashboardConfig"]


class DashboardConfig(AppConfig):  # type: ignore[misc]
    name = "vaultq.django.dashboard"
    label = "vaultq_dashboard"
    verbose_name = "vaultq dashboard"
    default_auto_field = "django.db.models.AutoField"
