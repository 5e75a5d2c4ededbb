"""The App's settings as the rest of vaultq reads them.

An App holds one frozen :class:`~vaultq.settings.AppSettings`; this base class gives it
``app.settings``, ``app.configure(...)``, the defaults a task falls back on
(``app.task_defaults``) and the read-only attributes the producer and the worker read on
every job (``app.clock_skew``, ``app.max_envelope_size``...), each a plain read of the
current settings, so a ``configure()`` reaches them at once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vaultq.errors import ConfigurationError
from vaultq.settings import AppSettings
from vaultq.tasks import TaskOptions, TaskOverrides

__all__ = ["AppSettingsView"]


class AppSettingsView:
    """Base of :class:`vaultq.App`: its settings and the attributes read from them."""

    name: str
    _settings: AppSettings
    _task_defaults: tuple[AppSettings, TaskOptions] | None

    @property
    def settings(self) -> AppSettings:
        """The app's options (:class:`vaultq.settings.AppSettings`, frozen)."""
        return self._settings

    def configure(self, **changes: Any) -> None:
        """Change options after construction: ``app.configure(timeout=60, retries=3)``.

        Checked like the constructor's (``ConfigurationError``). Task defaults reach every
        task that left the option unset, including tasks defined before the change (they
        hold "not given", not a copy). The broker is not changed here: use
        :meth:`set_broker` before first use."""
        if "broker" in changes:
            raise ConfigurationError("change the broker with app.set_broker(url) before use")
        self._settings = msgspec.structs.replace(self._settings, **changes)

    @property
    def task_defaults(self) -> TaskOptions:
        """The options of a task that sets none (the app's defaults)."""
        cached = self._task_defaults
        # Read per job by the worker: built once per settings object (frozen, so the
        # same object means the same defaults; configure() makes a new one).
        if cached is None or cached[0] is not self._settings:
            options = TaskOverrides().resolve(self._settings, f"{self.name} defaults")
            cached = self._task_defaults = (self._settings, options)
        return cached[1]

    @property
    def _defaults(self) -> TaskOptions:
        # The old private name; integrations read it (use task_defaults).
        return self.task_defaults

    @property
    def default_queue(self) -> str:
        return self._settings.queue

    @property
    def clock_skew(self) -> float:
        return self._settings.clock_skew

    @property
    def max_envelope_size(self) -> int:
        return self._settings.max_envelope_size

    @property
    def policy_timeout(self) -> float:
        return self._settings.policy_timeout

    @property
    def lease(self) -> float:
        return self._settings.lease

    @property
    def enqueue_retry(self) -> float:
        return self._settings.enqueue_retry

    @property
    def envelope_version(self) -> int:
        return self._settings.envelope_version

    @property
    def accept_envelope_v1(self) -> bool:
        return self._settings.accept_envelope_v1

    @property
    def batch_signatures(self) -> bool:
        return self._settings.batch_signatures
