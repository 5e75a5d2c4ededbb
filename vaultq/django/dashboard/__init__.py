"""The vaultq dashboard inside a Django site (docs/dashboard.md).

::

    INSTALLED_APPS = [..., "vaultq.django", "vaultq.django.dashboard"]
    urlpatterns = [..., path("vaultq/", include("vaultq.django.dashboard"))]

Staff users with ``vaultq_dashboard.view_dashboard`` see every page;
``operate_dashboard`` retries and purges dead letters; ``decrypt_job`` opens one job's
result (only with ``VAULTQ["DASHBOARD_ALLOW_DECRYPT"] = True``). It reuses the site's
login, session and CSRF protection.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app_name", "urlpatterns"]

app_name = "vaultq_dashboard"


def __getattr__(name: str) -> Any:
    # The URL patterns import django.urls and the views lazily: this package is also an
    # installed app (for its permissions), imported before Django's app registry is ready.
    if name == "urlpatterns":
        from vaultq.django.dashboard.urls import urlpatterns

        return urlpatterns
    raise AttributeError(name)
