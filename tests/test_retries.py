"""Retry controls through a real in-process worker on both brokers: the default (no
retries), ``retry_on``/``dont_retry_on``, ``vaultq.Retry(delay=...)``, ``vaultq.Fatal``,
and errors that are permanent by nature."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq

pytestmark = pytest.mark.anyio


class Step(msgspec.Struct, frozen=True):
    key: str


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


async def _fails(handle: Any) -> tuple[str, int]:
    """(error_type, attempts) of a job that ended FAILED."""
    with pytest.raises(vaultq.JobFailed) as info:
        await handle.result(timeout=30)
    body = await handle.outcome()
    assert body is not None
    return info.value.error_type, body.attempts


async def test_default_is_no_retry(url: str, unique_name: str) -> None:
    """A non-idempotent task must not repeat its side effects by surprise (it ran 4
    times under the old default of 3 retries)."""
    app = make_app(unique_name, url)
    runs: list[int] = []

    @app.task(name="rename_widget")
    async def rename(job: Step) -> None:
        runs.append(vaultq.current_job().attempt)
        raise LookupError("no such widget")

    assert rename.options.retries == 0 and rename.max_attempts == 1
    async with running_worker(app):
        assert await _fails(await rename.enqueue(Step("w"))) == ("LookupError", 1)
    assert runs == [1]
    broker = await app.broker()
    dead = await broker.dead_letters("default")
    assert [(d.reason, d.attempt) for d in dead] == [("failed", 1)]
    await app.aclose()


async def test_retry_on_and_dont_retry_on(url: str, unique_name: str) -> None:
    app = make_app(unique_name, url)
    runs: dict[str, list[int]] = {}

    def record(key: str) -> int:
        attempt = vaultq.current_job().attempt
        runs.setdefault(key, []).append(attempt)
        return attempt

    @app.task(name="fetch", retries=3, backoff=0.05, retry_on=Transient)
    async def fetch(job: Step) -> int:
        attempt = record(job.key)
        if job.key == "transient" and attempt < 3:
            raise Transient("try again")
        if job.key == "permanent":
            raise Permanent("nope")
        return attempt

    @app.task(name="sync", retries=3, backoff=0.05, dont_retry_on=[KeyError, Permanent])
    def sync(job: Step) -> int:
        attempt = record("sync-" + job.key)
        if job.key == "keyerror":
            raise KeyError(job.key)
        if attempt < 2:
            raise RuntimeError("flaky")
        return attempt

    async with running_worker(app):
        ok = await fetch.enqueue(Step("transient"))
        bad = await fetch.enqueue(Step("permanent"))
        flaky = await sync.enqueue(Step("flaky"))
        key = await sync.enqueue(Step("keyerror"))
        assert await ok.result(timeout=30) == 3
        assert await _fails(bad) == (f"{__name__}.Permanent", 1)
        assert await flaky.result(timeout=30) == 2
        assert await _fails(key) == ("KeyError", 1)
    assert runs["transient"] == [1, 2, 3]
    assert runs["permanent"] == [1]
    assert runs["sync-flaky"] == [1, 2]
    assert runs["sync-keyerror"] == [1]
    await app.aclose()


async def test_retry_request_and_fatal(url: str, unique_name: str) -> None:
    app = make_app(unique_name, url)
    seen: dict[str, list[tuple[int, float]]] = {}

    @app.task(name="poll", retries=2, backoff=100, retry_on=())
    async def poll(job: Step) -> int:
        attempt = vaultq.current_job().attempt
        seen.setdefault(job.key, []).append((attempt, time.time()))
        if job.key == "ask" and attempt == 1:
            # Honoured although retry_on=() retries nothing automatically, with the
            # exact delay asked for instead of the (huge) backoff.
            raise vaultq.Retry(delay=0.3)
        if job.key == "fatal":
            raise vaultq.Fatal("card declined")
        if job.key == "other":
            raise Transient("retry_on=() retries nothing")
        return attempt

    @app.task(name="once")
    async def once(job: Step) -> None:
        seen.setdefault("once", []).append((vaultq.current_job().attempt, time.time()))
        raise vaultq.Retry(delay=0)

    @app.task(name="fatal", retries=3, backoff=0.01)
    async def fatal(job: Step) -> None:
        seen.setdefault("fatal3", []).append((vaultq.current_job().attempt, time.time()))
        raise vaultq.Fatal("stop")

    async with running_worker(app):
        asked = await poll.enqueue(Step("ask"))
        other = await poll.enqueue(Step("other"))
        f1 = await fatal.enqueue(Step("x"))
        o1 = await once.enqueue(Step("x"))
        assert await asked.result(timeout=30) == 2
        assert await _fails(other) == (f"{__name__}.Transient", 1)
        assert await _fails(f1) == ("vaultq.errors.Fatal", 1)
        # A Retry counts against retries: with none left the job fails, saying why.
        assert await _fails(o1) == ("vaultq.errors.Retry", 1)
    (a1, t1), (a2, t2) = seen["ask"]
    assert (a1, a2) == (1, 2)
    assert t2 - t1 >= 0.3  # not before the delay asked for (a lower bound only)
    assert [a for a, _ in seen["fatal3"]] == [1]
    assert [a for a, _ in seen["once"]] == [1]
    await app.aclose()


async def test_permanent_errors_are_not_retried_by_default(url: str, unique_name: str) -> None:
    """A validation failure fails the same way every time: retrying it only repeats side
    effects. Naming it in retry_on brings the retry back."""
    app = make_app(unique_name, url)
    runs: list[str] = []

    class Strict(msgspec.Struct):
        n: int

    @app.task(name="validate", retries=2, backoff=0.01)
    async def validate(job: Step) -> None:
        runs.append("validate")
        msgspec.convert({"n": "x"}, Strict)

    @app.task(name="wrong_result", retries=2, backoff=0.01)
    async def wrong_result(job: Step) -> int:
        runs.append("wrong_result")
        return "not an int"  # type: ignore[return-value]

    @app.task(name="validate_again", retries=1, backoff=0.01, retry_on=msgspec.ValidationError)
    async def validate_again(job: Step) -> None:
        runs.append("validate_again")
        msgspec.convert({"n": "x"}, Strict)

    async with running_worker(app):
        assert await _fails(await validate.enqueue(Step("a"))) == ("msgspec.ValidationError", 1)
        assert await _fails(await wrong_result.enqueue(Step("a"))) == ("vaultq.PayloadError", 1)
        assert await _fails(await validate_again.enqueue(Step("a"))) == (
            "msgspec.ValidationError",
            2,
        )
    assert sorted(runs) == ["validate", "validate_again", "validate_again", "wrong_result"]
    await app.aclose()


def test_options_are_checked_and_retry_delay_validated() -> None:
    app = vaultq.App("retryopts", broker="sqlite:///:memory:", keyring=vaultq.Keyring.generate())
    with pytest.raises(vaultq.TaskDefinitionError, match="retry_on must be an exception class"):

        @app.task(name="a", retry_on="ValueError")  # type: ignore[call-overload]
        async def a(job: Step) -> None: ...

    with pytest.raises(vaultq.TaskDefinitionError, match="dont_retry_on"):

        @app.task(name="b", dont_retry_on=(ValueError, int))  # type: ignore[arg-type]
        async def b(job: Step) -> None: ...

    for delay in (-1, float("nan"), float("inf"), "5"):
        with pytest.raises(vaultq.ConfigurationError, match="Retry"):
            vaultq.Retry(delay=delay)  # type: ignore[arg-type]
    assert vaultq.Retry(delay=2).delay == 2.0
    assert issubclass(vaultq.Fatal, vaultq.VaultqError)
    opts = vaultq.TaskOptions(retries=1, retry_on=(OSError,), dont_retry_on=(TimeoutError,))
    assert opts.retry_verdict(ConnectionError()) == (True, None)
    assert opts.retry_verdict(TimeoutError()) == (False, None)  # dont_retry_on wins
    assert opts.retry_verdict(ValueError()) == (False, None)
    assert opts.retry_verdict(vaultq.Retry(delay=1)) == (True, 1.0)
    assert opts.retry_verdict(vaultq.Fatal()) == (False, None)
