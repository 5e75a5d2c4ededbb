"""Test app for ``isolation="process"`` through ``vaultq worker e2e_app_isolated:app``:
the deadline app's tasks plus two isolated ones. Settings as in ``e2e_app_deadlines``.

A separate module because a worker whose app has isolated tasks starts a process pool,
which needs an importable ``module:app`` (in-process test apps have none).
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e_app_deadlines import Nap, build

import vaultq


def build_isolated(
    name: str,
    state: Path,
    *,
    broker: str | None = None,
    keyring: vaultq.Keyring | None = None,
) -> vaultq.App:
    app = build(name, state, broker=broker, keyring=keyring)

    @app.task(name="spin", isolation="process", timeout=1.0, retries=3)
    def spin(job: Nap) -> int:
        (state / "spin.pid").write_text(str(os.getpid()), encoding="utf-8")
        while True:  # CPU-bound, never yields: only killing the process stops it
            pass

    @app.task(name="child_pid", isolation="process", timeout=10.0)
    def child_pid(job: Nap) -> int:
        return os.getpid()

    return app


def __getattr__(attr: str) -> vaultq.App:
    # Built on first access (by the worker and by its children), never at import.
    if attr != "app":
        raise AttributeError(attr)
    app = build_isolated(os.environ["E2E_APP"], Path(os.environ["E2E_STATE"]))
    globals()["app"] = app
    return app
