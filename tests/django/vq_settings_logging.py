"""The test project with a typical production ``LOGGING``: vaultq's loggers routed to a
console handler by the project (``test_django_logging.py`` checks nothing is printed
twice)."""

from __future__ import annotations

from vq_settings import *  # noqa: F403

LOGGING_CONFIG = "logging.config.dictConfig"  # type: ignore[assignment]  # None in vq_settings
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "PROJECT %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"vaultq": {"handlers": ["console"], "level": "INFO"}},
}
