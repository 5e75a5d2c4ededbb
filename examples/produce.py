"""Enqueue the example jobs and print their results.

Start a worker first (``vaultq worker examples.jobs``), then, from the same directory
and with the same ``VAULTQ_BROKER``/``VAULTQ_KEYS``::

    python -m examples.produce

Exits 0 when every job returned its result, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

import vaultq
from examples.jobs import (
    Document,
    Refund,
    Signup,
    app,
    refund,
    send_welcome_email,
    word_stats,
)

CLERK = vaultq.Principal(
    "user:clerk-7", roles=frozenset({"support"}), permissions=frozenset({"orders.refund"})
)
INTERN = vaultq.Principal("user:intern-2", roles=frozenset({"support"}))


def main() -> int:
    print(f"app {app.name} on {app.broker_url}")
    try:
        return produce()
    except vaultq.VaultqError as exc:  # no keys for Redis, broker down...: say what to do
        print(f"examples.produce: error: {exc}", file=sys.stderr)
        return 2
    finally:
        app.close()


def produce() -> int:
    # Sync producer API (scripts, Django views); `await task.enqueue(...)` in async code.
    handles: list[vaultq.JobHandle[Any]] = [
        send_welcome_email.enqueue_sync(Signup(user_id=42, email="ada@example.com")),
        refund.enqueue_sync(
            Refund(order_id=7, amount_cents=1999, card_token=vaultq.Secret("tok_4242")),
            principal=CLERK,
        ),
        word_stats.enqueue_sync(
            Document("motto", "Seal it, check it, bound it. Then run it."), principal=CLERK
        ),
    ]
    try:
        refund.enqueue_sync(
            Refund(order_id=8, amount_cents=50000, card_token=vaultq.Secret("tok_0000")),
            principal=INTERN,
        )
        print("refund for user:intern-2 was enqueued: the policy should have refused it")
        ok = False
    except vaultq.AuthorizationDenied as exc:
        print(f"refund for user:intern-2 refused at enqueue: {exc.policy}")
        ok = True

    for handle in handles:
        try:
            value = handle.result_sync(timeout=30)
        except (vaultq.JobError, TimeoutError) as exc:
            print(f"{handle.task_name}: {exc}")
            ok = False
            continue
        print(f"{handle.task_name} ({handle.id}): {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
