"""Ed25519 envelopes of a fetched batch opened on two cores at once.

Verifying an Ed25519 signature (~60 us here) is most of what opening a job costs when
the producers sign with Ed25519, and ``cryptography``'s ``Ed25519PublicKey.verify``
releases the GIL while it runs (measured: two threads verify 1.7x as fast as one, at
1.7 cores; docs/performance.md). So when the worker fetched a batch, it opens part of
it on a helper thread while the event loop's thread opens the rest, then waits for the
helper (the GIL is free meanwhile). Both threads spend most of their time in
``verify``, so neither waits long for the GIL; a helper that verified while the loop ran
Python code would instead wait up to the interpreter's 5 ms switch interval after
every call (measured: 265 verifications/s).

What is opened here is the same ``App.open_job`` call the executor makes, with every
check; nothing is skipped later: :meth:`Executor.open` uses a pre-opened job only while
it is still unexpired at the moment it runs, and opens again otherwise (so an expired,
not-yet-valid, unknown-task or refused envelope takes the executor's usual path, with
its audit and its result). Not used for HMAC signers: their check costs ~1 us.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from vaultq.envelope import OpenedJob
from vaultq.runtime.slots import JobSlot

if TYPE_CHECKING:
    from vaultq.app import App

__all__ = ["BatchOpener", "batch_opener", "usable"]

MIN_BATCH = 4
"""Smaller batches are opened by the executor, job by job."""
MAX_HELPERS = 3


def batch_opener(app: App) -> BatchOpener | None:
    """A :class:`BatchOpener` when it pays: a trusted Ed25519 signer and more than one
    core; None otherwise."""
    cores = os.cpu_count() or 1
    keyring = app.keyring
    ed25519 = any(keyring.signer_algorithm(s) == "ed25519" for s in keyring.trusted_signers)
    if cores < 2 or not ed25519:
        return None
    return BatchOpener(app, helpers=min(MAX_HELPERS, cores - 1))


class BatchOpener:
    """Opens the envelopes of fetched slots, part on helper threads (see the module
    docstring); the result is left on each slot (``JobSlot.opened``)."""

    def __init__(self, app: App, *, helpers: int) -> None:
        self.app = app
        self.helpers = helpers
        self._pool = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="vaultq-open")

    def open(self, slots: Sequence[JobSlot], now: float) -> None:
        """Open ``slots`` (blocking the event loop for the batch's share of this thread,
        about half of it on two cores). Envelopes that do not open are left unopened."""
        todo = [s for s in slots if not s.delivery.completed]
        if len(todo) < MIN_BATCH:
            return
        parts = self.helpers + 1
        futures = [self._pool.submit(self._open_all, todo[i::parts], now) for i in range(1, parts)]
        self._open_all(todo[0::parts], now)
        for future in futures:
            future.result()

    def _open_all(self, slots: Sequence[JobSlot], now: float) -> None:
        app = self.app
        for slot in slots:
            delivery = slot.delivery
            try:
                slot.opened = app.open_job(
                    delivery.envelope,
                    tasks=app.tasks,
                    now=now,
                    queue=delivery.queue,
                    job_id=delivery.job_id,
                    skew=app.clock_skew,
                )
            except Exception:
                # EnvelopeError: the executor opens it again and answers it (reject,
                # expire, defer). Anything else (a bug) must not end the fetch loop: the
                # executor's open meets it too, where the consumer records it per job.
                slot.opened = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def usable(opened: OpenedJob | None, now: float, skew: float) -> OpenedJob | None:
    """``opened`` when its envelope passes ``open_job``'s time checks at ``now`` too
    (the only checks time can change), else None: the executor then opens it again."""
    if opened is None:
        return None
    header = opened.header
    now_ms = round(now * 1000)
    latest = now_ms + skew * 1000.0
    fits = header.not_before <= latest and header.issued_at <= latest
    return opened if fits and now_ms - skew * 1000.0 <= header.expires_at else None
