"""System checks: ``manage.py check`` and ``manage.py check --deploy``.

| id | level | when |
|---|---|---|
| vaultq.E001 | Error | no keys for a shared broker, or KEYS_FILE / ``@file`` missing |
| vaultq.E002 | Error | the loader would refuse the key file (another owner, group/other |
|             |       | access, or a directory others can write: docs/keys.md) |
| vaultq.E003 | Error | ``settings.VAULTQ`` or a dotted path in it is invalid |
| vaultq.W001 | Warning | no BROKER_URL (falls back to ``$VAULTQ_BROKER`` or ./vaultq.db) |
| vaultq.W002 | Warning (deploy) | plaintext ``redis://`` to a host that is not loopback |
| vaultq.W003 | Warning | ``DEBUG=True`` in a worker process |
| vaultq.W004 | Warning (deploy) | tasks that run under the implicit allow-all policy |
| vaultq.W005 | Warning (deploy) | keys inline in settings (``VAULTQ["KEYS"]``) |
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from vaultq.brokers import broker_from_url
from vaultq.checks import plaintext_off_host
from vaultq.errors import ConfigurationError
from vaultq.files import untrusted_reason

__all__ = [
    "check_broker",
    "check_broker_deploy",
    "check_debug_worker",
    "check_keys",
    "check_keys_deploy",
    "check_policies",
    "register_checks",
]

_TAG = "vaultq"


def _settings() -> Any:
    from vaultq.django.conf import read_settings

    return read_settings()


def _broker_url(s: Any) -> str | None:
    return s.broker_url or os.environ.get("VAULTQ_BROKER") or None


def _key_file_errors(path: str, where: str) -> list[checks.CheckMessage]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [
            checks.Error(
                f"{where}: key file {path} does not exist",
                hint="Create it with `vaultq keys generate --out PATH` (mode 0600).",
                id="vaultq.E001",
            )
        ]
    except OSError as exc:
        return [checks.Error(f"{where}: cannot stat {path}: {exc.strerror}", id="vaultq.E001")]
    # The loader's own rule (owner, mode, directories above it): docs/keys.md.
    problem = untrusted_reason(path, st)
    if problem is not None:
        return [checks.Error(f"{where}: {problem}", id="vaultq.E002")]
    return []


def check_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Keys missing or world-readable; inline keys under --deploy."""
    try:
        s = _settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="vaultq.E003")]
    if s.keys_file:
        return _key_file_errors(s.keys_file, "VAULTQ['KEYS_FILE']")
    if s.keys is not None:
        return []
    value = os.environ.get(s.keys_env, "")
    if value.startswith("@"):
        return _key_file_errors(value[1:], f"${s.keys_env}")
    if value:
        return []
    url = _broker_url(s) or "sqlite:///vaultq.db"
    try:
        # Building a broker opens no connection: it only reads the URL.
        shared = broker_from_url(url, namespace="vaultq-check").capabilities.shared
    except ConfigurationError as exc:
        return [checks.Error(str(exc), id="vaultq.E003")]
    if shared:
        return [
            checks.Error(
                f"no vaultq keys: the broker {url.split('@')[-1]} is shared and needs "
                f"explicit keys, and neither KEYS_FILE nor ${s.keys_env} is set",
                hint="Run `vaultq keys generate --out vaultq.keys`, then set "
                "VAULTQ['KEYS_FILE'] or VAULTQ_KEYS=@vaultq.keys on web and worker hosts.",
                id="vaultq.E001",
            )
        ]
    return []


def check_keys_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        s = _settings()
    except ImproperlyConfigured:
        return []
    if s.keys is not None and not s.keys_file:
        return [
            checks.Warning(
                "VAULTQ['KEYS'] puts key material in settings",
                hint="Use KEYS_FILE (mode 0600) or the KEYS_ENV environment variable.",
                id="vaultq.W005",
            )
        ]
    return []


def check_broker(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        s = _settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="vaultq.E003")]
    url = _broker_url(s)
    if not url:
        return [
            checks.Warning(
                "VAULTQ['BROKER_URL'] is not set: vaultq falls back to $VAULTQ_BROKER, "
                "else the embedded sqlite:///vaultq.db in the working directory",
                hint="Set VAULTQ['BROKER_URL'] (redis://... or sqlite:////abs/path.db).",
                id="vaultq.W001",
            )
        ]
    return []


def check_broker_deploy(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        s = _settings()
    except ImproperlyConfigured:
        return []
    url = _broker_url(s)
    if not url:
        return []
    off_host = plaintext_off_host(url)
    if off_host:
        parts = urlsplit(url)
        return [
            checks.Warning(
                f"the broker {parts.scheme}://{','.join(off_host)} is reached without TLS",
                hint="Use rediss:// for a Redis on another host. Jobs are sealed, but "
                "the Redis password and queue metadata travel in clear.",
                id="vaultq.W002",
            )
        ]
    return []


def check_debug_worker(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    from vaultq.django.apps import get_config

    try:
        worker = get_config().worker_mode
    except Exception:
        return []
    if worker and settings.DEBUG:
        return [
            checks.Warning(
                "DEBUG=True in a vaultq worker: Django records every SQL query in memory "
                "and error pages/logs show internals",
                hint="Run workers with DEBUG=False.",
                id="vaultq.W003",
            )
        ]
    return []


def check_policies(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from vaultq.django.apps import get_config

    try:
        s = _settings()
        app = get_config().app
    except (ImproperlyConfigured, Exception):
        return []
    if s.default_policy:
        return []
    loose = sorted(name for name, task in app.tasks.items() if task.policy is None)
    if not loose:
        return []
    shown = ", ".join(loose[:10]) + (f" (+{len(loose) - 10} more)" if len(loose) > 10 else "")
    return [
        checks.Warning(
            f"{len(loose)} vaultq task(s) have no explicit policy and run for anyone whose "
            f"job is sealed with a trusted key: {shown}",
            hint="Give each task policy=... (or OPTIONS['TASKS'][path]['POLICY'] for "
            "Django Tasks), or set VAULTQ['DEFAULT_POLICY'].",
            id="vaultq.W004",
        )
    ]


def register_checks() -> None:
    """Register with Django's check framework (idempotent)."""
    registry: Iterable[Any] = checks.registry.registry.get_checks(include_deployment_checks=True)
    if check_keys in registry:
        return
    checks.register(check_keys, _TAG)
    checks.register(check_broker, _TAG)
    checks.register(check_debug_worker, _TAG)
    checks.register(check_keys_deploy, _TAG, deploy=True)
    checks.register(check_broker_deploy, _TAG, deploy=True)
    checks.register(check_policies, _TAG, deploy=True)
