"""Kept while branches written before ``tests/support/`` still import it: the helpers
live in ``support.workers`` (apps, workers) and the broker URLs in ``support.brokers``
(the ``broker_kind`` / ``broker_url`` fixtures). Delete once nothing imports it."""

from __future__ import annotations

from pathlib import Path

from support.workers import (
    ROOT,
    make_app,
    running_worker,
    start_worker_process,
    wait_until_serving,
    worker_env,
    worker_processes,
)

__all__ = [
    "ROOT",
    "broker_url",
    "make_app",
    "running_worker",
    "start_worker_process",
    "wait_until_serving",
    "worker_env",
    "worker_processes",
]


def broker_url(kind: str, tmp_path: Path, redis_url: str | None) -> str:
    """Kept for tests written before the ``broker_kind``/``broker_url`` fixtures
    (``tests/support/brokers.py``): use those instead."""
    if kind == "redis":
        assert redis_url is not None
        return redis_url
    if kind == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path}/vaultq.db"
