"""The app `tests/test_node_producer.py` runs in a real worker (`vaultq worker node_app:app`)
for jobs sealed by the Node.js reference producer (`examples/node_producer/`).

Configured from the environment: VAULTQ_BROKER, VAULTQ_KEYS, NODE_APP (the app name, so
each test has its own Redis namespace) and NODE_LOG (a file each run of the task appends
a line to, so the test can tell that a denied job never ran).
"""

from __future__ import annotations

import os

import msgspec

import vaultq

app = vaultq.App(os.environ.get("NODE_APP", "nodeapp"))


class Refund(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: int
    card_token: str


class Receipt(msgspec.Struct, frozen=True):
    order_id: int
    refunded: bool
    principal_id: str


# Registered under its default name, `node_app.refund` (<module>.<function>): the name a
# foreign producer must put in the header (docs/envelope.md, Task names).
@app.task(policy=vaultq.require_permission("orders.refund"))
def refund(job: Refund) -> Receipt:
    with open(os.environ["NODE_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{job.order_id}\n")
    principal = vaultq.current_job().principal
    return Receipt(job.order_id, True, principal.id if principal else "")
