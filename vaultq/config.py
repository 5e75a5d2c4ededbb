"""Defaults in one place, and small helpers for settings and URLs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = [
    "DEFAULT_ACCEPT_ENVELOPE_V1",
    "DEFAULT_ASYNC_CONCURRENCY",
    "DEFAULT_BACKOFF",
    "DEFAULT_BATCH_SIGNATURES",
    "DEFAULT_BROKER_URL",
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DEAD_LETTER_AGE",
    "DEFAULT_DEAD_LETTER_MAX",
    "DEFAULT_ENQUEUE_RETRY",
    "DEFAULT_ENVELOPE_VERSION",
    "DEFAULT_EXPIRES",
    "DEFAULT_GRACE",
    "DEFAULT_HEALTH_INTERVAL",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_ABANDONED_THREADS",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MAX_ENVELOPE_SIZE",
    "DEFAULT_POLICY_TIMEOUT",
    "DEFAULT_QUEUE",
    "DEFAULT_RESULT_TTL",
    "DEFAULT_RETRIES",
    "DEFAULT_STALL_WARNING",
    "DEFAULT_TIMEOUT",
    "default_concurrency",
    "mask_url",
]

DEFAULT_QUEUE = "default"
DEFAULT_BROKER_URL = "sqlite:///vaultq.db"
"""Used when neither ``App(broker=...)`` nor ``VAULTQ_BROKER`` names a broker."""

DEFAULT_TIMEOUT = 300.0
"""Seconds one attempt may run before its cancel scope fires."""
DEFAULT_EXPIRES = 24 * 3600.0
"""Seconds after enqueue by which a job must *start*; also bounds the replay memory."""
DEFAULT_RETRIES = 0
"""Retries after the first attempt. 0, as in Celery: a retried attempt repeats whatever
side effects the failed one had, so a task opts in (``retries=3``) once it is idempotent."""
DEFAULT_BACKOFF = 1.0
"""Base of the exponential backoff, in seconds (full jitter)."""
DEFAULT_MAX_BACKOFF = 300.0
DEFAULT_RESULT_TTL = 24 * 3600.0
DEFAULT_LEASE = 30.0
"""Seconds a delivery stays leased without renewal (on the broker's clock); workers renew
every lease/5 and cancel an attempt whose lease they could not renew for 0.7 x lease."""
DEFAULT_ENQUEUE_RETRY = 2.0
"""Seconds an enqueue retries a broker that is briefly unavailable before it raises."""
DEFAULT_CONCURRENCY = 10
"""Jobs at once per worker process when any of the app's tasks is synchronous: each sync
job holds a thread, and a few busy threads in one process only contend for the GIL while
other worker processes could have taken those jobs."""
DEFAULT_ASYNC_CONCURRENCY = 100
"""Jobs at once per worker process when every task of the app is ``async``: an awaiting
job costs a slot and no thread, and 10 slots cap an I/O-bound task at 10 / its latency
(1,000 jobs/s for 10 ms), below taskiq's 100 async slots. Measured in docs/benchmarks.md
("Default concurrency")."""
DEFAULT_GRACE = 30.0
DEFAULT_POLICY_TIMEOUT = 5.0
DEFAULT_CLOCK_SKEW = 60.0
DEFAULT_MAX_ENVELOPE_SIZE = 1024 * 1024
DEFAULT_ENVELOPE_VERSION = 2
"""Format new job envelopes are sealed with (v2: XAES-256-GCM); docs/envelope.md."""
DEFAULT_ACCEPT_ENVELOPE_V1 = True
"""Read v1 envelopes (the migration window); set False once no v1 envelope remains."""
DEFAULT_BATCH_SIGNATURES = False
"""Sign each ``enqueue_many`` call's jobs one by one; True signs one Merkle root per call
(docs/envelope.md, *Batch signatures*), which workers older than the format refuse."""
DEFAULT_HEALTH_INTERVAL = 5.0
"""Seconds between a worker's heartbeats (``--health-interval``)."""
DEFAULT_STALL_WARNING = 1.0
"""Seconds a job may block the worker's event loop before a warning names it."""
DEFAULT_MAX_ABANDONED_THREADS = 16
DEFAULT_DEAD_LETTER_MAX = 10_000
"""Dead letters kept per queue at most; the oldest go first (Sidekiq keeps 10,000)."""
DEFAULT_DEAD_LETTER_AGE = 30 * 24 * 3600.0
"""Seconds a dead letter is kept at most."""
"""Sync attempts past their deadline whose threads still run; beyond this the worker
stops taking sync jobs until some finish."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log).

    Works on the raw text, so multi-host URLs (``redis+cluster://u:pw@h1:1,h2:2/``,
    ``redis+sentinel://...``) are masked too; ``password``-like query options
    (``?sentinel_password=``) are masked as well.

    The userinfo ends at the *last* ``@`` of the URL, not where ``urlsplit`` ends the
    netloc (the first ``/ ? #``): a password that holds those characters unencoded
    (``u:pa/ss@host``) would otherwise be printed from its first ``/`` on. The cost is
    over-masking when a query value holds an ``@`` after a ``host:port``; never a leak.
    """
    scheme, slashes, rest = url.partition("://")
    if slashes and "/" not in scheme:
        userinfo, at, after = rest.rpartition("@")
        if at and ":" in userinfo:
            url = f"{scheme}://{userinfo.partition(':')[0]}:***@{after}"
    parts = urlsplit(url)
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(name.lower().endswith("password") for name, _ in pairs):
        return url
    query = urlencode(
        [(n, "***" if n.lower().endswith("password") else v) for n, v in pairs], safe="*/"
    )
    # Rebuilt by hand: urlunsplit drops the "//" of an empty netloc (unix:///path).
    slashes = "//" if url[len(parts.scheme) + 1 :].startswith("//") else ""
    masked = f"{parts.scheme}:{slashes}{parts.netloc}{parts.path}"
    masked += f"?{query}" if query else ""
    return masked + (f"#{parts.fragment}" if parts.fragment else "")


def default_concurrency(tasks: Iterable[Any], given: int | None = None) -> int:
    """``given``, or a worker's default concurrency for the app's ``tasks``:
    :data:`DEFAULT_ASYNC_CONCURRENCY` when every one is ``async`` (``Task.is_async``),
    else :data:`DEFAULT_CONCURRENCY`."""
    if given is not None:
        return given
    flags = [task.is_async for task in tasks]
    return DEFAULT_ASYNC_CONCURRENCY if flags and all(flags) else DEFAULT_CONCURRENCY
