"""Example tasks, configured like a real deployment.

Run a worker, then the producer, from the repository root::

    vaultq worker examples.jobs          # terminal 1
    python -m examples.produce           # terminal 2

The app reads its broker from ``VAULTQ_BROKER`` and its keys from ``VAULTQ_KEYS``
(``@/path/to/keyfile`` or the JSON itself). Without them it uses the embedded broker,
``sqlite:///vaultq.db`` in the working directory, and generates ``vaultq.keys`` (mode
0600) beside it on first use. With Redis, keys are mandatory::

    vaultq keys generate --out vaultq.keys
    export VAULTQ_KEYS=@vaultq.keys VAULTQ_BROKER=redis://localhost:6379/0
"""

from __future__ import annotations

import hashlib

import anyio
import msgspec

import vaultq

app = vaultq.App("examples")


# -- payloads and results: typed, strictly decoded, sealed on the wire -----------------------


class Signup(msgspec.Struct, frozen=True):
    user_id: int
    email: str


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    amount_cents: int
    card_token: vaultq.Secret[str]
    """Shown as ``Secret('***')`` in reprs and logs; readable only through ``reveal()``."""


class RefundReceipt(msgspec.Struct, frozen=True):
    order_id: int
    refunded_cents: int
    reference: str


class Document(msgspec.Struct, frozen=True):
    title: str
    text: str


class WordStats(msgspec.Struct, frozen=True):
    title: str
    words: int
    top: list[tuple[str, int]]


# -- tasks ---------------------------------------------------------------------------------


@app.task(timeout=10, retries=3)
async def send_welcome_email(job: Signup) -> str:
    """Any producer with the keys may send this: the app's default policy allows it."""
    await anyio.sleep(0.01)  # the mail service's round trip
    return f"welcome mail sent to user {job.user_id}"


@app.task(timeout=30, retries=2, policy=vaultq.require_permission("orders.refund"))
async def refund(job: Refund) -> RefundReceipt:
    """Checked at enqueue (the caller gets AuthorizationDenied at once) and again in the
    worker before every attempt; the card token is revealed only here."""
    token = job.card_token.reveal()
    await anyio.sleep(0.02)  # the payment provider's round trip
    reference = hashlib.sha256(f"{job.order_id}:{token}".encode()).hexdigest()[:12]
    return RefundReceipt(job.order_id, job.amount_cents, f"rf_{reference}")


@app.task(timeout=5, retries=0)
def word_stats(job: Document) -> WordStats:
    """A plain (sync) function runs in a worker thread, under the same deadline."""
    counts: dict[str, int] = {}
    for word in job.text.lower().split():
        word = word.strip(".,;:!?\"'()")
        if word:
            counts[word] = counts.get(word, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return WordStats(job.title, sum(counts.values()), top)
