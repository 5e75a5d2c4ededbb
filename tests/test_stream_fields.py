"""Stream fields ``att`` and ``at`` written by whoever can write to Redis (docs/redis.md,
*Enqueueing from another language*): only the stated forms are delivered. A genuine,
correctly sealed job carried by an entry with any other ``att``/``at`` never runs: the
fetch script dead-letters it as a stub in the same atomic step, the fetch loop goes on,
and the listing tools read whatever a dead letter holds without crashing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
from support.workers import make_app, running_worker

from vaultq.brokers.redis_layout import attempt_of, seconds_of

pytestmark = pytest.mark.anyio


class Num(msgspec.Struct, frozen=True):
    n: int


FIELDS = json.loads(
    (Path(__file__).parent / "vectors" / "redis_stream_fields.json").read_text(encoding="utf-8")
)
GOOD_AT = FIELDS["at"]["accepted"][1]
# (att, at) pairs, one defect each (None: the field is missing), from the vectors: forms
# that Lua's tonumber or Python's int/float would have taken.
MALFORMED: list[tuple[str | None, str | None]] = [
    *((att, GOOD_AT) for att in FIELDS["att"]["refused"]),
    *(("1", at) for at in FIELDS["at"]["refused"]),
    ("9" * 5000, GOOD_AT),
]
VALID: list[tuple[str, str]] = [
    *((att, GOOD_AT) for att in FIELDS["att"]["accepted"]),
    *(("1", at) for at in FIELDS["at"]["accepted"]),
]


async def test_malformed_att_or_at_dead_letters_the_entry_and_never_runs_it(
    redis_url: str, unique_name: str
) -> None:
    app = make_app(unique_name, redis_url)
    ran: list[int] = []

    @app.task(name="t.num")
    async def num(job: Num) -> int:
        ran.append(job.n)
        return job.n

    cases = [*MALFORMED, *VALID]
    handles = [await num.enqueue(Num(n=i)) for i in range(len(cases))]
    broker = await app.broker()
    keys = broker.keys("default")  # type: ignore[attr-defined]
    raw = redis.Redis.from_url(redis_url)
    try:
        entries: Any = raw.xrange(keys.stream)  # bytes replies; redis-py types bytes | str
        assert len(entries) == len(cases)
        by_n: dict[str, dict[bytes, bytes]] = {}
        for entry_id, fields in entries:
            raw.xdel(keys.stream, entry_id)
            by_n[fields[b"id"].decode()] = fields
        # Rewrite every entry with its case's fields, the envelope untouched.
        for handle, (att, at) in zip(handles, cases, strict=True):
            fields = {b"id": handle.id.encode(), b"env": by_n[handle.id][b"env"]}
            if att is not None:
                fields[b"att"] = att.encode()
            if at is not None:
                fields[b"at"] = at.encode()
            raw.xadd(keys.stream, fields)
    finally:
        raw.close()

    async with running_worker(app):
        with anyio.fail_after(20):
            for handle in handles[len(MALFORMED) :]:
                await handle.result(timeout=20)
            while len(await broker.dead_letters("default")) < len(MALFORMED):
                await anyio.sleep(0.05)
    assert sorted(ran) == list(range(len(MALFORMED), len(cases)))
    dead = await broker.dead_letters("default")
    assert {d.job_id for d in dead} == {h.id for h in handles[: len(MALFORMED)]}
    for letter in dead:
        assert letter.reason == "rejected:unauthenticated"
        assert "att or at" in letter.detail
        assert letter.attempt == 0  # never attempted
    # Stubs: the envelope is not kept, so nothing can retry them unchecked.
    for letter in dead:
        assert await broker.retry_dead("default", letter.tag) is None
    assert await broker.stats("default") is not None
    await app.aclose()


@pytest.mark.parametrize("att", [a for a in FIELDS["att"]["refused"] if a is not None])
def test_listing_parses_only_the_stated_attempt_form(att: str) -> None:
    assert attempt_of(att.encode(), least=0) == 0


@pytest.mark.parametrize("at", [t for t in FIELDS["at"]["refused"] if t is not None])
def test_listing_parses_only_the_stated_seconds_form(at: str) -> None:
    assert seconds_of(at.encode()) == 0.0


@pytest.mark.parametrize(("att", "at"), VALID)
def test_listing_reads_the_stated_forms(att: str, at: str) -> None:
    assert attempt_of(att.encode(), least=0) == int(att)
    assert seconds_of(at.encode()) == float(at)
