"""The app of the workflow tests: a three-step chain (parse -> price -> receipt), a
step guarded by a permission, and a step that fails. ``build(app)`` registers the tasks
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


class Tasks(msgspec.Struct, frozen=True):
    parse: Any  # vaultq.Task[Text, Order]
    price: Any  # vaultq.Task[Order, Priced]
    receipt: Any  # vaultq.Task[Priced, str]
    guarded: Any  # vaultq.Task[Priced, str], needs permission "flow.guarded"
    explode: Any  # vaultq.Task[Order, Priced], always raises


def build(app: vaultq.App) -> Tasks:
    @app.task(name="parse")
    def parse(p: Text) -> Order:
        sku, qty = p.text.split(":")
        return Order(sku, int(qty))

    @app.task(name="price")
    async def price(p: Order) -> Priced:
        # FLOW_SLEEP: the crash test's window for a kill -9 in the middle of a chain.
        await anyio.sleep(float(os.environ.get("FLOW_SLEEP", "0")))
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

    return Tasks(parse, price, receipt, guarded, explode)


app = vaultq.App(os.environ.get("FLOW_APP", "flow"))
tasks = build(app)
