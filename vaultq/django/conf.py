"""``settings.VAULTQ``: parsed once into a frozen struct, with strict types.

Every key is optional::

    VAULTQ = {
        "APP_NAME": "shop",                      # broker namespace; same on web and workers
        "BROKER_URL": "redis://127.0.0.1:6379/0",  # default: $VAULTQ_BROKER, else sqlite:///vaultq.db
        "KEYS_FILE": BASE_DIR / "vaultq.keys",   # a 0600 key file, or
        "KEYS_ENV": "VAULTQ_KEYS",               # an environment variable (JSON or @/path)
        "QUEUES": ["default"],                   # queues `manage.py vaultq_worker` consumes
        "DEFAULT_POLICY": "shop.policies.STAFF_ONLY",  # dotted path, read from settings only
        "CONCURRENCY": 10,
        "METRICS_PORT": 9108,                    # Prometheus /metrics (vaultq[metrics])
        "EVENTS": True,                          # job event stream for `vaultq events`
        "RESULT_TTL": 86400,
        "TASK_MODULE": ["jobs", "tasks"],        # autodiscovered in every installed app
        "PRINCIPAL_MAPPER": "shop.auth.principal_for",
        "SCHEDULE": {                            # periodic jobs (docs/scheduling.md)
            "nightly-report": {"task": "reports.nightly", "cron": "0 2 * * *",
                               "tz": "Europe/Paris", "payload": {"kind": "full"}},
            "cleanup": {"task": "shop.cleanup", "every": 300, "missed": "run_once"},
        },
    }
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec

from vaultq.settings import UNSET, AppSettings, UnsetType, environment

__all__ = [
    "APP_KEYS",
    "ScheduleSetting",
    "VaultqSettings",
    "import_from_settings",
    "read_settings",
]


class ScheduleSetting(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``VAULTQ["SCHEDULE"]`` (lower-case keys, like ``CELERY_BEAT_SCHEDULE``):
    the options of :meth:`vaultq.App.schedule`, the task by its registered name."""

    task: str
    cron: str | None = None
    every: float | None = None
    """Seconds (a ``timedelta`` is accepted too)."""
    tz: str | None = None
    payload: dict[str, Any] = {}
    """The payload's fields, converted strictly to the task's payload type."""
    missed: str = "skip"
    grace: float | None = None
    permissions: tuple[str, ...] = ()


APP_KEYS = (
    "default_queue",
    "clock_skew",
    "max_envelope_size",
    "policy_timeout",
    "lease",
    "enqueue_retry",
    "envelope_version",
    "accept_envelope_v1",
    "batch_signatures",
    "timeout",
    "retries",
    "expires",
    "backoff",
    "max_backoff",
    "result_ttl",
)
"""The ``settings.VAULTQ`` keys that are :class:`AppSettings` fields (``DEFAULT_QUEUE`` is
``queue``; ``BROKER_URL`` is ``broker``)."""


class VaultqSettings(
    msgspec.Struct, frozen=True, kw_only=True, rename="upper", forbid_unknown_fields=True
):
    """The parsed ``settings.VAULTQ`` (keys are the upper-case field names)."""

    app_name: str = "django"
    broker_url: str | None = None
    keys_file: str | None = None
    keys_env: str = "VAULTQ_KEYS"
    keys: dict[str, Any] | None = None
    """An inline keyring (discouraged: secrets in settings; ``check --deploy`` flags it)."""
    queues: tuple[str, ...] = ()
    """Queues the worker command consumes; empty = every queue of the registered tasks."""
    # The App's options: UNSET (a key left out) takes AppSettings' default, declared
    # once in vaultq/settings.py; DEFAULT_QUEUE is AppSettings.queue.
    default_queue: str | UnsetType = UNSET
    default_policy: str | None = None
    concurrency: int | UnsetType = UNSET
    grace: float | UnsetType = UNSET
    lease: float | UnsetType = UNSET
    result_ttl: float | UnsetType = UNSET
    timeout: float | UnsetType = UNSET
    retries: int | UnsetType = UNSET
    expires: float | UnsetType = UNSET
    backoff: float | UnsetType = UNSET
    max_backoff: float | UnsetType = UNSET
    policy_timeout: float | UnsetType = UNSET
    clock_skew: float | UnsetType = UNSET
    max_envelope_size: int | UnsetType = UNSET
    envelope_version: int | UnsetType = UNSET
    accept_envelope_v1: bool | UnsetType = UNSET
    batch_signatures: bool | UnsetType = UNSET
    enqueue_retry: float | UnsetType = UNSET
    task_module: str | tuple[str, ...] = ("jobs", "tasks")
    principal_mapper: str | None = None
    schedule: dict[str, ScheduleSetting] = {}
    metrics_port: int | None = None
    """``manage.py vaultq_worker`` serves Prometheus metrics on this port (observability.md)."""
    metrics_address: str = "127.0.0.1"
    events: bool = False
    """``manage.py vaultq_worker`` records the job event stream (``vaultq events``)."""
    dashboard_allow_decrypt: bool = False
    """Let users with ``vaultq_dashboard.decrypt_job`` open one job's result in the
    dashboard (``Secret`` fields masked, audited). Off: the dashboard shows no values."""

    def app_settings(self) -> AppSettings:
        """The App's options from these keys. ``BROKER_URL`` left out: ``$VAULTQ_BROKER``
        (read here, at the Django edge), else the App's default."""
        values: dict[str, Any] = {
            name: getattr(self, name)
            for name in APP_KEYS
            if getattr(self, name) is not UNSET and name != "default_queue"
        }
        if self.default_queue is not UNSET:
            values["queue"] = self.default_queue
        return AppSettings(broker=self.broker_url or environment().broker, **values)

    @property
    def task_modules(self) -> tuple[str, ...]:
        if isinstance(self.task_module, str):
            return (self.task_module,)
        return self.task_module


def read_settings() -> VaultqSettings:
    """Parse ``settings.VAULTQ``; raises ``ImproperlyConfigured`` naming the bad key."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    raw = getattr(settings, "VAULTQ", None) or {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured("settings.VAULTQ must be a dict")
    raw = {k: str(v) if isinstance(v, Path) else v for k, v in raw.items()}
    if isinstance(raw.get("SCHEDULE"), dict):
        raw["SCHEDULE"] = {
            name: _seconds_of_every(entry) for name, entry in raw["SCHEDULE"].items()
        }
    try:
        return msgspec.convert(raw, VaultqSettings, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec names the key ($.CONCURRENCY) and the expected type, never the value.
        raise ImproperlyConfigured(f"settings.VAULTQ is invalid: {exc}") from None


def import_from_settings(path: str, setting: str) -> Any:
    """Import the object named by a dotted path found in settings (never in a message)."""
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string

    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{setting}: cannot import {path!r} ({exc})") from exc


def _seconds_of_every(entry: Any) -> Any:
    # ``"every": timedelta(minutes=5)`` reads well in settings; strict conversion wants
    # a number.
    if isinstance(entry, dict) and isinstance(entry.get("every"), timedelta):
        return {**entry, "every": entry["every"].total_seconds()}
    return entry
