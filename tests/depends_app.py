"""The app of the ``depends_on=`` tests: ``work`` (sleeps DEPENDS_SLEEP seconds), ``boom``
(always fails) and ``after`` (the dependent). Each appends a line to the file named by
DEPENDS_LOG when it runs, so a test can check across worker processes that a dependent
ran only after its dependencies. ``app`` is the one ``vaultq worker depends_app`` runs
(VAULTQ_BROKER, VAULTQ_KEYS, DEPENDS_APP: its name)."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

import vaultq


class N(msgspec.Struct, frozen=True):
    n: int


class Tasks(msgspec.Struct, frozen=True):
    work: Any  # vaultq.Task[N, N]
    boom: Any  # vaultq.Task[N, N]
    after: Any  # vaultq.Task[N, str]


def _log(line: str) -> None:
    path = os.environ.get("DEPENDS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def build(app: vaultq.App) -> Tasks:
    @app.task(name="work")
    def work(p: N) -> N:
        time.sleep(float(os.environ.get("DEPENDS_SLEEP", "0")))
        _log(f"work {p.n}")
        return N(p.n * 2)

    @app.task(name="boom")
    def boom(p: N) -> N:
        _log(f"boom {p.n}")
        raise RuntimeError(f"boom {p.n}")

    @app.task(name="after")
    def after(p: N) -> str:
        _log(f"after {p.n}")
        return f"after {p.n}"

    return Tasks(work, boom, after)


app = vaultq.App(os.environ.get("DEPENDS_APP", "depends"))
tasks = build(app)
