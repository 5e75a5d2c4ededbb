"""``vaultq/reporting.py``: task failures reported without payload values, Secrets or frame
locals, through a real worker on Redis and SQLite; the Sentry ``before_send`` scrubber."""

from __future__ import annotations

import time
import uuid

import anyio
import msgspec
import pytest
from support.workers import make_app, running_worker

import vaultq
from vaultq.reporting import FailureReport, ReportFailures, scrub_sentry_event

pytestmark = pytest.mark.anyio


class Card(msgspec.Struct, frozen=True):
    owner: str
    token: vaultq.Secret[str]


@pytest.mark.parametrize("include_message", [False, True])
async def test_failures_are_reported_without_plaintext(
    broker_url: str, include_message: bool
) -> None:
    app = make_app("r" + uuid.uuid4().hex[:10], broker_url)
    reports: list[FailureReport] = []
    app.add_middleware(ReportFailures(reports.append, include_message=include_message))
    owner = "OWNER" + uuid.uuid4().hex
    token = "TOKEN" + uuid.uuid4().hex

    @app.task(name="charge", policy=vaultq.allow_all, retries=0)
    async def charge(job: Card) -> None:
        card_number = job.token.reveal()  # a frame local an SDK would capture
        assert card_number
        raise ValueError(f"declined for {job.owner} with {job.token}")

    @app.task(name="charge_sync", policy=vaultq.allow_all, retries=0)
    def charge_sync(job: Card) -> None:
        raise KeyError(job.token)

    @app.task(name="fine", policy=vaultq.allow_all)
    async def fine(job: Card) -> int:
        return 1

    @app.task(name="stuck", policy=vaultq.allow_all, timeout=0.2, retries=0)
    async def stuck(job: Card) -> None:
        await anyio.sleep(30)

    card = Card(owner=owner, token=vaultq.Secret(token))
    async with running_worker(app):
        handles = [await t.enqueue(card) for t in (charge, charge_sync, fine, stuck)]
        for h in handles:
            with pytest.raises((vaultq.JobError,)) if h is not handles[2] else _nothing():
                await h.result(timeout=30)
        deadline = time.monotonic() + 10
        while len(reports) < 2 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
    await app.aclose()

    assert [(r.task, r.error_type) for r in reports] == [
        ("charge", "ValueError"),
        ("charge_sync", "KeyError"),
    ], "one report per failure; none for success or the deadline"
    first = reports[0]
    assert first.job_id == handles[0].id and first.queue == "default" and first.attempt == 1
    assert first.frames[-1].function == "charge" and first.frames[-1].lineno > 0
    dumped = msgspec.json.encode(reports).decode()
    assert token not in dumped, "a Secret's value is never reported"
    if include_message:
        assert first.message == f"declined for {owner} with Secret('***')"
    else:
        assert first.message is None and owner not in dumped


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_sentry_scrubber_drops_locals_messages_and_request_data() -> None:
    event = {
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": "declined for alice@example.com",
                    "stacktrace": {
                        "frames": [
                            {"function": "charge", "lineno": 3, "vars": {"job": "Card(...)"}}
                        ]
                    },
                }
            ]
        },
        "threads": {"values": [{"stacktrace": {"frames": [{"vars": {"x": "1"}}]}}]},
        "request": {"url": "https://shop/x", "data": {"card": "4111"}, "cookies": "s=1"},
        "extra": {"payload": "secret"},
        "logentry": {"message": "job %s failed", "params": ["alice"], "formatted": "alice"},
    }
    out = scrub_sentry_event(event, None)
    text = repr(out)
    for leaked in ("alice", "4111", "Card(", "secret", "s=1", "'x'"):
        assert leaked not in text, leaked
    assert out["exception"]["values"][0]["value"] == "ValueError"
    assert out["exception"]["values"][0]["stacktrace"]["frames"][0]["function"] == "charge"
    assert out["request"] == {"url": "https://shop/x"}
