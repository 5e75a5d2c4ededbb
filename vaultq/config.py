"""Defaults in one place, and small helpers for settings and URLs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BROKER_URL",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_EXPIRES",
    "DEFAULT_GRACE",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_ABANDONED_THREADS",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_ENVELOPE_SIZE",
    "DEFAULT_POLICY_TIMEOUT",
    "DEFAULT_QUEUE",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "mask_url",
]

DEFAULT_QUEUE = "default"
DEFAULT_BROKER_URL = "sqlite:///vaultq.db"
"""Used when neither ``App(broker=...)`` nor ``VAULTQ_BROKER`` names a broker."""

DEFAULT_TIMEOUT = 300.0
"""Seconds one attempt may run before its cancel scope fires."""
DEFAULT_EXPIRES = 24 * 3600.0
"""Seconds after enqueue by which a job must *start*; also bounds the replay memory."""
DEFAULT_RETRIES = 3
"""Retries after the first attempt (so 4 attempts in all)."""
DEFAULT_BACKOFF = 1.0
"""Base of the exponential backoff, in seconds (full jitter)."""
DEFAULT_MAX_BACKOFF = 300.0
DEFAULT_RESULT_TTL = 24 * 3600.0
DEFAULT_LEASE = 30.0
"""Seconds a delivery stays leased without renewal; workers renew every lease/3."""
DEFAULT_CONCURRENCY = 10
DEFAULT_GRACE = 30.0
DEFAULT_POLICY_TIMEOUT = 5.0
DEFAULT_CLOCK_SKEW = 60.0
DEFAULT_MAX_ENVELOPE_SIZE = 1024 * 1024
DEFAULT_MAX_ABANDONED_THREADS = 16
"""Sync attempts past their deadline whose threads still run; beyond this the worker
stops taking sync jobs until some finish."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
