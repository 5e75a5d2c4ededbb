"""URL patterns of the Django mount: every path goes to one view."""

from __future__ import annotations

from django.urls import path

from vaultq.django.dashboard.views import dashboard

__all__ = ["urlpatterns"]

urlpatterns = [
    path("", dashboard, name="overview"),
    path("<path:path>", dashboard, name="page"),
]
