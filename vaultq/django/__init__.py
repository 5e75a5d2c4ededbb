"""Django integration: ``INSTALLED_APPS += ["vaultq.django"]`` (extra ``vaultq[django]``).

- ``from vaultq.django import app``: the App configured from ``settings.VAULTQ`` (use
  ``@app.task`` in your apps' ``jobs.py``, which are autodiscovered).
- :func:`enqueue_on_commit` / :func:`aenqueue_on_commit`: enqueue from views after the
  transaction commits, as the logged-in user.
- :func:`principal_from_user`, :func:`principal_from_request`, :func:`acting_as`.
- ``python manage.py vaultq_worker`` (or ``vaultq worker vaultq.django`` with
  ``DJANGO_SETTINGS_MODULE`` set).
- ``TASKS = {"default": {"BACKEND": "vaultq.django.VaultqBackend"}}``: Django's Tasks
  framework on vaultq.

See docs/django.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultq.django.enqueue import aenqueue_on_commit, enqueue_on_commit
from vaultq.django.principal import (
    acting_as,
    current_principal,
    default_principal_mapper,
    principal_from_request,
    principal_from_user,
)

if TYPE_CHECKING:
    from vaultq.django.apps import DjangoApp
    from vaultq.django.backend import VaultqBackend

__all__ = [
    "VaultqBackend",
    "acting_as",
    "aenqueue_on_commit",
    "app",
    "current_principal",
    "default_principal_mapper",
    "enqueue_on_commit",
    "get_app",
    "principal_from_request",
    "principal_from_user",
    "vaultq_load_app",
]


def get_app() -> DjangoApp:
    """The App configured from ``settings.VAULTQ`` (built once, on the AppConfig)."""
    from vaultq.django.apps import get_app as _get_app

    return _get_app()


def vaultq_load_app(attr: str = "") -> DjangoApp:
    """``vaultq worker vaultq.django``: the loader's hook (:data:`vaultq.loader.LOAD_HOOK`).
    Sets Django up from ``DJANGO_SETTINGS_MODULE`` and returns the configured App."""
    from vaultq.django.apps import load_django_app

    return load_django_app(attr)


def __getattr__(name: str) -> Any:
    # Resolved on access, so importing vaultq.django needs no configured settings and the
    # App stays on the AppConfig instead of a module global.
    if name == "app":
        return get_app()
    if name == "VaultqBackend":
        from vaultq.django.backend import VaultqBackend

        return VaultqBackend
    raise AttributeError(f"module 'vaultq.django' has no attribute {name!r}")
