"""Django Tasks of the test app, run by vaultq.django.VaultqBackend."""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec

from vaultq import Secret, require_role
from vaultq.django.compat import task

# RESULT_POLICY (vq_settings.TASKS): staff may read results that are not their own.
READ_ANY_RESULT = require_role("staff")


class BoomError(Exception):
    pass


class Point(msgspec.Struct, frozen=True):
    x: int
    y: int


@task()
def add(a: int, b: int = 1) -> int:
    return a + b


@task(queue_name="djq")
async def greet(name: str, times: int) -> str:
    return " ".join([f"hello {name}"] * times)


@task()
def boom(code: int) -> None:
    raise BoomError(f"secret-payload-value-{code}")


@task()
def norm(p: Point) -> float:
    return (p.x**2 + p.y**2) ** 0.5


@task(takes_context=True)
def with_context(context: Any, x: int) -> dict[str, Any]:
    return {"attempt": context.attempt, "id": context.task_result.id, "x": x}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@task()
def paint(color: Color, p: Point, factor: float | None = None) -> str:
    return f"{color.value} {p.x * (factor or 1)}"


class Charge(msgspec.Struct, frozen=True):
    amount: int
    card: Secret[str]


@task()
def charge(card: Secret[str], amount: int = 1) -> int:
    """Secret arguments: the caller passes Secret("...") (or the plain value)."""
    return len(card.reveal()) * amount


@task()
def charge_struct(c: Charge) -> int:
    return len(c.card.reveal()) * c.amount


@task()
def pick(level: Literal["low", "high"]) -> str:
    return level


class Transient(Exception):
    pass


@task(takes_context=True)
def flaky(context: Any, mode: str) -> int:
    """Retried per OPTIONS["TASKS"] (RETRY_ON Transient, RETRIES 3)."""
    import vaultq

    if mode == "transient" and context.attempt < 2:
        raise Transient("try again")
    if mode == "fatal":
        raise vaultq.Fatal("stop")
    if mode == "other":
        raise ValueError("not in RETRY_ON")
    return int(context.attempt)


@task()
def runner_pid(x: int) -> int:
    """ISOLATION "process" in vq_settings: each attempt runs in a child process."""
    import os

    return os.getpid()


@task()
def unstored(x: int) -> int:
    """STORE_RESULT False in vq_settings: only the outcome is kept (Celery's ignore_result)."""
    return x
