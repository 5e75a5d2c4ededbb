"""The app of the workflow tests: a three-step chain (parse -> price -> receipt), a
step guarded by a permission, a step that fails, and for groups and chords: ``total``
(a ``Gathered[Priced]`` callback), ``tally`` (a ``MemberOutcomes[Priced]`` callback) and
``checked_price`` (denied at run time for a blocked SKU). ``build(app)`` registers the tasks
on any app (the tests' own memory apps); ``app`` is the one ``vaultq worker flow_app``
runs, configured from VAULTQ_BROKER, VAULTQ_KEYS and FLOW_APP (its name)."""

from __future__ import annotations

import os
from typing import Any

import anyio
import msgspec

import vaultq


class Text(msgspec.Struct, frozen=True):
    text: str


class Order(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Priced(msgspec.Struct, frozen=True):
    sku: str
    cents: int


class PriceList(vaultq.Gathered[Priced], frozen=True):
    """The payload of a chord callback over ``price`` members."""


class PriceOutcomes(vaultq.MemberOutcomes[Priced], frozen=True):
    """The payload of an ``allow_failures`` chord callback over ``price`` members."""


def not_blocked(request: vaultq.PolicyRequest) -> bool:
    """Allows every enqueue; at run time denies an order whose SKU was blocked since
    (a denylist the policy consults when the job runs)."""
    return not (request.stage == "run" and request.payload.sku.startswith("blocked"))


def _log(line: str) -> None:
    # FLOW_LOG: the crash test counts runs across worker processes (O_APPEND lines).
    path = os.environ.get("FLOW_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class Tasks(msgspec.Struct, frozen=True):
    parse: Any  # vaultq.Task[Text, Order]
    price: Any  # vaultq.Task[Order, Priced]
    receipt: Any  # vaultq.Task[Priced, str]
    guarded: Any  # vaultq.Task[Priced, str], needs permission "flow.guarded"
    explode: Any  # vaultq.Task[Order, Priced], always raises
    total: Any  # vaultq.Task[PriceList, int]
    tally: Any  # vaultq.Task[PriceOutcomes, str]
    checked_price: Any  # vaultq.Task[Order, Priced], policy not_blocked


def build(app: vaultq.App) -> Tasks:
    @app.task(name="parse")
    def parse(p: Text) -> Order:
        sku, qty = p.text.split(":")
        return Order(sku, int(qty))

    @app.task(name="price")
    async def price(p: Order) -> Priced:
        # FLOW_SLEEP: the crash test's window for a kill -9 in the middle of a chain.
        await anyio.sleep(float(os.environ.get("FLOW_SLEEP", "0")))
        _log(f"price {p.sku}")
        return Priced(p.sku, p.qty * 250)

    @app.task(name="receipt")
    def receipt(p: Priced) -> str:
        return f"{p.sku}={p.cents}"

    @app.task(name="guarded", policy=vaultq.require_permission("flow.guarded"))
    def guarded(p: Priced) -> str:
        return f"guarded {p.sku}"

    @app.task(name="explode")
    def explode(p: Order) -> Priced:
        raise RuntimeError(f"no price for {p.sku}")

    @app.task(name="total")
    def total(p: PriceList) -> int:
        _log(f"total {len(p.results)}")
        return sum(item.cents for item in p.results)

    @app.task(name="tally")
    def tally(p: PriceOutcomes) -> str:
        ok = [o for o in p.outcomes if isinstance(o, vaultq.MemberSucceeded)]
        bad = [f"{o.index}:{o.status}" for o in p.outcomes if isinstance(o, vaultq.MemberFailed)]
        return f"ok={len(ok)} cents={sum(o.value.cents for o in ok)} bad={','.join(bad)}"

    @app.task(name="checked_price", policy=not_blocked)
    def checked_price(p: Order) -> Priced:
        return Priced(p.sku, p.qty * 100)

    return Tasks(parse, price, receipt, guarded, explode, total, tally, checked_price)


app = vaultq.App(os.environ.get("FLOW_APP", "flow"))
tasks = build(app)
