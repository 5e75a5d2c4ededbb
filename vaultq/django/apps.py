"""The installed app: builds the configured :class:`vaultq.App` once, autodiscovers tasks.

The App lives on the ``VaultqConfig`` instance (Django's app registry), not in a module
global. It is built on first use, which is ``ready()`` at the latest, so a task module
imported while models load (``from vaultq.django import app``) already finds it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig, apps

from vaultq.app import App
from vaultq.errors import ConfigurationError
from vaultq.keyring import Keyring
from vaultq.policy import allow_all, ensure_policy

if TYPE_CHECKING:
    from vaultq.django.binding import Binding
    from vaultq.django.conf import VaultqSettings

__all__ = ["DjangoApp", "VaultqConfig", "get_app", "get_config", "load_django_app"]

log = logging.getLogger("vaultq.django")

LABEL = "vaultq"


class DjangoApp(App):
    """An App whose keys come from ``settings.VAULTQ`` (KEYS_FILE, KEYS_ENV or KEYS),
    resolved on first use like the core App's."""

    def __init__(self, vaultq_settings: VaultqSettings, /, **kwargs: Any) -> None:
        super().__init__(vaultq_settings.app_name, **kwargs)
        self.vaultq_settings = vaultq_settings

    def extra_queues(self) -> list[str]:
        """Queues the project uses besides its tasks' own: ``VAULTQ['QUEUES']`` and the
        ``QUEUES`` of every vaultq Tasks backend (where ``vaultq job``/``cancel``/``status``
        look too)."""
        from django.conf import settings

        found = list(self.vaultq_settings.queues)
        for params in (getattr(settings, "TASKS", None) or {}).values():
            if str(params.get("BACKEND", "")).startswith("vaultq.django"):
                found += [q for q in params.get("QUEUES", ()) if q not in found]
        return found

    def _resolve_keyring(self) -> Keyring:
        s = self.vaultq_settings
        if s.keys_file:
            self.keyring_source = s.keys_file
            return Keyring.from_file(s.keys_file)
        if s.keys is not None:
            self.keyring_source = "settings.VAULTQ['KEYS']"
            return Keyring.from_dict(s.keys)
        if s.keys_env != "VAULTQ_KEYS" and os.environ.get(s.keys_env):
            self.keyring_source = f"${s.keys_env}"
            return Keyring.from_env(s.keys_env)
        return super()._resolve_keyring()


class VaultqConfig(AppConfig):  # type: ignore[misc]
    name = "vaultq.django"
    label = LABEL
    verbose_name = "vaultq"
    default = True

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        self._app: DjangoApp | None = None
        self.lock = threading.RLock()
        """Guards the app's creation and ``bindings`` (the Tasks backend registers under it)."""
        self.bindings: dict[str, Binding] = {}
        """Django Tasks run by vaultq, by module path: the worker's allowlist for them."""
        self.worker_mode = False
        """True in ``manage.py vaultq_worker`` (enables worker-only checks)."""
        self._mapper: Any = None
        self._fork_hook = False

    @property
    def app(self) -> DjangoApp:
        """The configured App, built once from ``settings.VAULTQ``."""
        if self._app is None:
            with self.lock:
                if self._app is None:
                    self._app = build_app()
        return self._app

    @property
    def principal_mapper(self) -> Any:
        """The PRINCIPAL_MAPPER callable, or None for the default mapping."""
        if self._mapper is None:
            path = self.app.vaultq_settings.principal_mapper
            if path:
                from vaultq.django.conf import import_from_settings

                self._mapper = import_from_settings(path, "VAULTQ['PRINCIPAL_MAPPER']")
            else:
                self._mapper = False
        return self._mapper or None

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from vaultq.django import hooks
        from vaultq.django.checks import register_checks

        register_checks()
        app = self.app
        if not self._fork_hook:
            # A process pool that forks inherits this process's DB sockets; the child
            # must drop them without talking to the server (Celery does the same).
            os.register_at_fork(after_in_child=hooks.close_inherited_connections)
            self._fork_hook = True
        autodiscover_modules(*app.vaultq_settings.task_modules)
        from vaultq.django.schedules import register_settings_schedules

        register_settings_schedules(app, app.vaultq_settings.schedule)


def build_app() -> DjangoApp:
    from vaultq.django import hooks
    from vaultq.django.conf import import_from_settings, read_settings

    s = read_settings()
    policy = allow_all
    if s.default_policy:
        try:
            policy = ensure_policy(
                import_from_settings(s.default_policy, "VAULTQ['DEFAULT_POLICY']")
            )
        except ConfigurationError as exc:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"VAULTQ['DEFAULT_POLICY']: {exc}") from None
    try:
        app = DjangoApp(
            s,
            settings=s.app_settings(),
            default_policy=policy,
        )
    except ConfigurationError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"settings.VAULTQ: {exc}") from None
    app.import_spec = "vaultq.django:app"
    app.add_middleware(hooks.JobHygiene())
    return app


def get_config() -> VaultqConfig:
    """The ``vaultq.django`` AppConfig; raises ConfigurationError when it is not installed."""
    from django.core.exceptions import AppRegistryNotReady

    try:
        config = apps.get_app_config(LABEL)
    except LookupError:
        raise ConfigurationError(
            "add 'vaultq.django' to INSTALLED_APPS to use vaultq's Django integration"
        ) from None
    except AppRegistryNotReady:
        raise ConfigurationError(
            "vaultq.django's app is used before Django's app registry is loaded: import "
            "task modules from your apps (jobs.py is autodiscovered), not from settings"
        ) from None
    if not isinstance(config, VaultqConfig):  # pragma: no cover - a foreign 'vaultq' label
        raise ConfigurationError("the app labelled 'vaultq' is not vaultq.django")
    return config


def get_app() -> DjangoApp:
    """The App configured from ``settings.VAULTQ``."""
    return get_config().app


def load_django_app(attr: str = "") -> DjangoApp:
    """``vaultq worker vaultq.django``: set Django up from ``DJANGO_SETTINGS_MODULE`` and
    return the configured App (through the hook ``vaultq.django.vaultq_load_app``)."""
    if attr not in ("", "app"):
        raise ConfigurationError("use `vaultq.django` (or `vaultq.django:app`)")
    if not apps.ready:
        if not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ConfigurationError(
                "set DJANGO_SETTINGS_MODULE (e.g. mysite.settings) to run vaultq.django, "
                "or use `python manage.py vaultq_worker`"
            )
        import django

        django.setup()
    from django.conf import settings

    if settings.DEBUG and not os.environ.get(DEBUG_WARNED):
        log.warning(
            "DEBUG=True in a vaultq process: Django keeps SQL queries in memory and shows "
            "internals in errors; run workers with DEBUG=False"
        )
        # Said once per command: the worker processes started from this one inherit the
        # environment and stay quiet about it.
        os.environ[DEBUG_WARNED] = "1"
    return get_app()


DEBUG_WARNED = "VAULTQ_DEBUG_WARNED"
"""Set once the DEBUG=True warning was given (by the system check W003 or the loader),
so ``--processes N`` does not repeat it N more times."""
