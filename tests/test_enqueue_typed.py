"""Typed at the call: every enqueue path refuses a payload whose fields do not match their
declared types, naming the field and never the value, before anything reaches the broker
(real SQLite and real Redis)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from support.workers import make_app

import vaultq
from vaultq.policy import PolicyRequest
from vaultq.testing import run_pending

pytestmark = pytest.mark.anyio

MARK = "MARKER-VALUE-0451"


class Line(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    card: vaultq.Secret[str]
    amount: float | None = None
    lines: list[Line] = []
    extra: dict[str, Any] = {}


def _nested(depth: int) -> Any:
    value: Any = MARK
    for _ in range(depth):
        value = [value]
    return value


def _r(**fields: Any) -> Refund:
    fields.setdefault("order_id", 1)
    fields.setdefault("card", vaultq.Secret("tok"))
    return Refund(**fields)


# (label, payload, the field the error must name). None of these raises when built:
# msgspec Structs are not validated at construction.
BAD: list[tuple[str, Refund, str]] = [
    ("str for int", _r(order_id=MARK), "$.order_id"),
    ("secret inner type", _r(card=vaultq.Secret(451)), "$.card"),
    ("nan in optional float", _r(amount=math.nan), "$.amount"),
    ("inf in optional float", _r(amount=-math.inf), "$.amount"),
    ("nested struct field", _r(lines=[Line("a", 1), Line("b", MARK)]), "$.lines[1].qty"),  # type: ignore[arg-type]
    ("nan in Any", _r(extra={"k": [1.0, math.nan]}), "$.extra.k[1]"),
    ("too deep", _r(extra={"k": _nested(5000)}), "$"),
]


@pytest.fixture
def url(broker_url: str) -> str:
    return broker_url


def _app(url: str, name: str, seen: list[PolicyRequest]) -> tuple[vaultq.App, Any]:
    app = make_app(name, url)

    def spy(req: PolicyRequest) -> bool:
        seen.append(req)
        return True

    @app.task(name="refund", policy=spy)
    async def refund(job: Refund) -> int:
        return job.order_id

    return app, refund


async def _written(app: vaultq.App) -> tuple[int, int, int]:
    broker = await app.broker()
    stats = await broker.stats("default")
    return stats.ready, stats.delayed, stats.dead


def _check_error(exc: vaultq.PayloadError, field: str) -> None:
    assert exc.field == field
    assert f"at {field}:" in str(exc)
    assert "nothing was enqueued" in str(exc)
    assert MARK not in str(exc) and "451" not in str(exc)
    assert "nan" not in str(exc).lower().replace("nan and infinity", "")


@pytest.mark.parametrize(("label", "payload", "field"), BAD, ids=[b[0] for b in BAD])
async def test_async_enqueue_paths_refuse_before_writing(
    url: str, unique_name: str, label: str, payload: Refund, field: str
) -> None:
    seen: list[PolicyRequest] = []
    app, refund = _app(url, unique_name, seen)
    good = Refund(order_id=2, card=vaultq.Secret("t"))
    with pytest.raises(vaultq.PayloadError) as one:
        await refund.enqueue(payload)
    _check_error(one.value, field)
    with pytest.raises(vaultq.PayloadError) as many:
        await refund.enqueue_many([good, payload, good])
    _check_error(many.value, field)
    assert str(many.value).startswith("payload 1 of 3: ")
    with pytest.raises(vaultq.PayloadError):
        await refund.enqueue(payload, delay=30)
    # Nothing reached the broker (enqueue_many is all or nothing), and the type check
    # came before the policy: it never saw the bad payload.
    assert await _written(app) == (0, 0, 0)
    assert all(req.payload is good for req in seen)
    await app.aclose()


@pytest.mark.parametrize(("label", "payload", "field"), BAD[:3], ids=[b[0] for b in BAD[:3]])
def test_sync_enqueue_paths_refuse_before_writing(
    url: str, unique_name: str, label: str, payload: Refund, field: str
) -> None:
    seen: list[PolicyRequest] = []
    app, refund = _app(url, unique_name, seen)
    try:
        with pytest.raises(vaultq.PayloadError) as one:
            refund.enqueue_sync(payload)
        _check_error(one.value, field)
        with pytest.raises(vaultq.PayloadError) as many:
            refund.enqueue_many_sync([payload])
        _check_error(many.value, field)
        assert app._run_sync(_written, app) == (0, 0, 0)
        assert seen == []
    finally:
        app.close()


async def test_valid_payloads_still_run_and_arrive_as_checked(url: str, unique_name: str) -> None:
    """The check seals the very bytes it decoded: what runs is what was checked."""
    app = make_app(unique_name, url)

    @app.task(name="refund.total")
    async def total(job: Refund) -> float:
        assert isinstance(job.card, vaultq.Secret)
        return (job.amount or 0) + sum(line.qty for line in job.lines) + job.order_id

    # An int where a float is declared is fine (JSON does not tell them apart).
    h1 = await total.enqueue(Refund(order_id=1, card=vaultq.Secret("t"), amount=2))
    h2 = await total.enqueue(
        Refund(order_id=1, card=vaultq.Secret("t"), amount=None, lines=[Line("a", 3)])
    )
    assert [r.outcome for r in await run_pending(app)] == ["succeeded", "succeeded"]
    assert await h1.result(timeout=1) == 3.0
    assert await h2.result(timeout=1) == 4.0
    await app.aclose()


def test_wrong_payload_class_names_the_task() -> None:
    app = vaultq.App("typedcls", broker="sqlite:///:memory:", keyring=vaultq.Keyring.generate())

    @app.task(name="refund")
    async def refund(job: Refund) -> None: ...

    with pytest.raises(vaultq.PayloadError, match="takes a Refund payload, got Line"):
        refund.check_payload(Line("a", 1))


def test_subclass_with_extra_fields_is_refused_like_the_worker_would() -> None:
    class MoreRefund(Refund, frozen=True):
        internal_note: str = MARK

    app = vaultq.App("typedsub", broker="sqlite:///:memory:", keyring=vaultq.Keyring.generate())

    @app.task(name="refund")
    async def refund(job: Refund) -> None: ...

    with pytest.raises(vaultq.PayloadError) as info:
        refund.check_payload(MoreRefund(order_id=1, card=vaultq.Secret("t")))
    assert info.value.field == "$.internal_note"
    assert MARK not in str(info.value)
