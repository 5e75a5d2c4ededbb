"""Adversarial review: attacks through the public surface and the broker storage.

Each test is a regression test for a problem found by attacking vaultq as someone who
can read and write the broker (Redis or the SQLite file), or who feeds the CLI hostile
input, plus a few checks of claims that already held (replay, redirection, algorithm
confusion, repr hygiene) so they keep holding.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis
from support.brokers import url_for
from support.workers import ROOT, make_app, running_worker

import vaultq
from vaultq.brokers.base import EnqueueItem
from vaultq.config import mask_url
from vaultq.envelope import JobMeta, open_job, seal_job
from vaultq.errors import BadSignature, PayloadError
from vaultq.payload import Codec
from vaultq.policy import PolicyRequest, evaluate

pytestmark = pytest.mark.anyio

MARK = "SECMARK7f3a"
"""Marker for payload, Secret, principal attribute and exception text: must never leak."""


class Card(msgspec.Struct, frozen=True):
    n: int
    token: vaultq.Secret[str]
    note: str = ""


class Collect(logging.Handler):
    """Every record of every logger, at every level, rendered as a handler would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@pytest.fixture
def logs() -> Iterator[Collect]:
    handler = Collect()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def card(n: int = 1) -> Card:
    return Card(n, vaultq.Secret(f"tok-{MARK}"), note=f"note-{MARK}")


# -- a task or a policy raising a BaseException ------------------------------------------


async def test_task_raising_system_exit_fails_the_job_not_the_worker(
    broker_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    unique_name: str,
    logs: Collect,
) -> None:
    """sys.exit() (or any BaseException) in task code used to tear the worker's task
    group down, printing the exit message (here: a secret) with the traceback."""

    class Abort(BaseException):
        pass

    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.exit", retries=0)
    async def exits(job: Card) -> int:
        raise SystemExit(f"exit {job.token.reveal()}")

    @app.task(name="t.abort", retries=0)
    def aborts(job: Card) -> int:  # sync: raised in a worker thread
        raise Abort(f"abort {job.token.reveal()}")

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    async with running_worker(app, concurrency=2):
        first = await exits.enqueue(card())
        second = await aborts.enqueue(card())
        with pytest.raises(vaultq.JobFailed) as failed:
            await first.result(timeout=10)
        assert failed.value.error_type == "SystemExit"
        with pytest.raises(vaultq.JobFailed) as aborted:
            await second.result(timeout=10)
        assert aborted.value.error_type.endswith("Abort")
        # the worker is still serving
        assert await (await ok.enqueue(card(5))).result(timeout=10) == 5
    await app.aclose()
    assert MARK not in logs.text()
    assert MARK not in str(failed.value) and MARK not in repr(failed.value)


async def test_policy_raising_a_base_exception_denies() -> None:
    def policy(req: PolicyRequest) -> bool:
        raise SystemExit(f"policy saw {MARK}")

    req = PolicyRequest(
        principal=None, payload=None, task="t", signer_id="s", attempt=1, job_id="j", stage="run"
    )
    decision = await evaluate(policy, req, timeout=1)
    assert (decision.allowed, decision.reason) == (False, "error")


# -- fields written straight into the broker ---------------------------------------------


async def test_garbage_stream_fields_do_not_crash_the_worker(
    redis_url: str, unique_name: str, logs: Collect
) -> None:
    """An entry with a non-numeric attempt or enqueue time used to raise ValueError out
    of fetch, killing the worker (and again after every restart, once reclaimed)."""
    app = make_app(unique_name, redis_url)

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    broker = await app.broker()
    raw = redis.Redis.from_url(redis_url)
    keys = broker.keys("default")  # type: ignore[attr-defined]
    raw.xadd(keys.stream, {"id": "j1", "env": b"junk", "att": "abc", "at": "1"})
    raw.xadd(keys.stream, {"id": "j2", "env": b"junk", "att": "9" * 5000, "at": "xyz"})
    raw.xadd(keys.stream, {"id": "j3", "env": b"junk", "att": "-7", "at": "1"})
    async with running_worker(app):
        assert await (await ok.enqueue(card(3))).result(timeout=10) == 3
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < 3:
                await anyio.sleep(0.05)
    dead = await broker.dead_letters("default")
    assert {d.job_id for d in dead} == {"j1", "j2", "j3"}
    assert {d.attempt for d in dead} == {0}  # malformed att: never attempted
    # a dead letter with garbage fields is listed, not a crash
    raw.xadd(keys.dead, {"id": "j4", "reason": "x", "detail": "y", "att": "abc", "at": "z"})
    assert any(d.job_id == "j4" for d in await broker.dead_letters("default"))
    raw.close()
    await app.aclose()


async def test_crafted_sqlite_rows_do_not_crash_the_worker(
    tmp_path: Path, unique_name: str
) -> None:
    """SQLite stores any type in any column: text attempts, text envelopes or blob ids
    used to raise TypeError in the worker and take it down."""
    db = tmp_path / "vaultq.db"
    app = make_app(unique_name, f"sqlite:///{db}")

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    await app.broker()  # creates the schema
    con = sqlite3.connect(db)
    rows = [
        ("j1", b"junk", "abc", 0.0, 0.0),
        ("j2", "text envelope", 1, 0.0, "later"),
        (b"\xff\x00blob", b"junk", 1.5, 0.0, 0.0),
        (7, 42, None, 0.0, 0.0),
    ]
    for job_id, env, attempt, nb, at in rows:
        con.execute(
            "INSERT INTO vaultq_jobs (namespace, queue, job_id, envelope, attempt, "
            "not_before, enqueued_at, deliveries) VALUES (?, 'default', ?, ?, ?, ?, ?, 'x')",
            (unique_name, job_id, env, attempt if attempt is not None else "", nb, at),
        )
    con.commit()
    con.close()
    async with running_worker(app):
        assert await (await ok.enqueue(card(4))).result(timeout=10) == 4
        broker = await app.broker()
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < len(rows):
                await anyio.sleep(0.05)
    await app.aclose()


async def test_junk_under_a_finished_job_id_keeps_its_result(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """Junk enqueued under a finished job's id used to make the worker seal a REJECTED
    outcome over the real result: an authenticated "never ran" for a job that ran (a
    producer retrying on it would run the side effect twice). The finished check comes
    first: the entry is dropped and counted, never stored or answered."""
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))
    runs: list[int] = []

    @app.task(name="t.count")
    async def count(job: Card) -> int:
        runs.append(job.n)
        return job.n

    broker = await app.broker()
    async with running_worker(app):
        handle = await count.enqueue(card(9))
        assert await handle.result(timeout=10) == 9
        assert not await broker.dead_letters("default")
        await broker.enqueue([EnqueueItem(queue="default", job_id=handle.id, envelope=b"junk")])
        with anyio.fail_after(10):
            while not await broker.counters("default"):
                await anyio.sleep(0.05)
        assert await broker.counters("default") == {"replayed": 1}
        assert not await broker.dead_letters("default")
        assert await handle.result(timeout=1) == 9
        assert await handle.status() == vaultq.JobStatus.SUCCEEDED
    assert runs == [9]
    await app.aclose()


@pytest.mark.broker_kinds("sqlite", "redis")  # reads what they store
async def test_replayed_and_moved_envelopes_never_run(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = make_app(unique_name, url, keyring=keys)
    runs: list[int] = []

    @app.task(name="t.count")
    async def count(job: Card) -> int:
        runs.append(job.n)
        return job.n

    broker = await app.broker()
    now = time.time()

    def sealed(job_id: str, queue: str, app_name: str = unique_name) -> bytes:
        return seal_job(
            keys,
            job_id=job_id,
            app=app_name,
            task="t.count",
            queue=queue,
            payload=Codec(Card).encode(card(1)),
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 600,
        )

    handle = await count.enqueue(card(1))
    copy = await _stored_envelope(broker, broker_kind, tmp_path, unique_name)  # the attacker's copy
    async with running_worker(app, queues=["default", "other"]):
        assert await handle.result(timeout=10) == 1
        await broker.enqueue([EnqueueItem(queue="default", job_id=handle.id, envelope=copy)])
        with anyio.fail_after(10):
            while not await broker.counters("default"):
                await anyio.sleep(0.05)
        # a replay is counted, not stored
        assert await broker.counters("default") == {"replayed": 1}
        assert not await broker.dead_letters("default")
        assert await handle.result(timeout=1) == 1
        moved = sealed("a" * 32, "default")
        foreign = sealed("b" * 32, "default", app_name=unique_name + "x")
        await broker.enqueue(
            [
                EnqueueItem(queue="other", job_id="a" * 32, envelope=moved),  # other queue
                EnqueueItem(queue="default", job_id="c" * 32, envelope=moved),  # other id
                EnqueueItem(queue="default", job_id="b" * 32, envelope=foreign),  # other app
            ]
        )
        with anyio.fail_after(10):
            while len(await broker.dead_letters("default")) < 2:
                await anyio.sleep(0.05)
            while not await broker.dead_letters("other"):
                await anyio.sleep(0.05)
    dead = await broker.dead_letters("default") + await broker.dead_letters("other")
    # redirected envelopes fail a check made before the signature: one reason for all
    assert [d.reason for d in dead] == ["rejected:unauthenticated"] * 3
    assert all(d.stub for d in dead)
    assert runs == [1]
    await app.aclose()


async def test_a_revoked_stolen_signing_key_forges_nothing(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    """A thief copied the keyring. `vaultq keys rotate` (the old advice) left the stolen
    signing key trusted, so forged jobs still ran; after `revoke` they are dead-lettered
    with reason rejected:revoked_key and never run, while honest jobs keep running."""
    stolen = vaultq.Keyring.generate()
    assert stolen.signer_id is not None
    fixed = stolen.revoke(stolen.signer_id).revoke(stolen.active_key_id)
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request), keyring=fixed)
    runs: list[int] = []

    @app.task(name="t.count")
    async def count(job: Card) -> int:
        runs.append(job.n)
        return job.n

    broker = await app.broker()
    now = time.time()
    forged = seal_job(
        stolen,
        job_id="f" * 32,
        app=unique_name,
        task="t.count",
        queue="default",
        payload=Codec(Card).encode(card(666)),
        principal=vaultq.Principal("admin", roles=frozenset({"admin"})),
        meta=JobMeta(),
        issued_at=now,
        not_before=now,
        expires_at=now + 600,
    )
    await broker.enqueue([EnqueueItem(queue="default", job_id="f" * 32, envelope=forged)])
    async with running_worker(app):
        honest = await count.enqueue(card(1))
        assert await honest.result(timeout=10) == 1
        with anyio.fail_after(10):
            while not await broker.dead_letters("default"):
                await anyio.sleep(0.05)
    (dead,) = await broker.dead_letters("default")
    assert (dead.job_id, dead.reason) == ("f" * 32, "rejected:revoked_key")
    assert runs == [1]
    await app.aclose()


async def _stored_envelope(broker: Any, broker_kind: str, tmp_path: Path, namespace: str) -> bytes:
    """The one queued envelope, read straight from the broker's storage."""
    if broker_kind == "sqlite":
        con = sqlite3.connect(tmp_path / "vaultq.db")
        try:
            (row,) = con.execute(
                "SELECT envelope FROM vaultq_jobs WHERE namespace = ?", (namespace,)
            ).fetchall()
        finally:
            con.close()
        return bytes(row[0])
    raw: Any = redis.Redis.from_url(broker.url)  # bytes replies; redis-py types bytes | str
    try:
        ((_, fields),) = raw.xrange(broker.keys("default").stream)
    finally:
        raw.close()
    return bytes(fields[b"env"])


# -- logs ---------------------------------------------------------------------------------


async def test_broker_given_ids_cannot_forge_audit_lines(
    redis_url: str, unique_name: str, logs: Collect
) -> None:
    app = make_app(unique_name, redis_url)

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    broker = await app.broker()
    raw = redis.Redis.from_url(redis_url)
    # (ids over 256 characters never reach the worker: the broker stubs them)
    evil = "x\nvaultq.audit INFO authorization allow: job=forged\x1b[31m" + "A" * 150
    # att/at in their stated forms, so the entry reaches the worker (docs/redis.md)
    fields = {"id": evil, "env": b"junk", "att": "1", "at": "0"}
    raw.xadd(broker.keys("default").stream, fields)  # type: ignore[attr-defined,arg-type]
    raw.close()
    async with running_worker(app):
        with anyio.fail_after(10):
            while not await broker.dead_letters("default"):
                await anyio.sleep(0.05)
    await app.aclose()
    rejected = [r for r in logs.records if "rejected on queue" in r.getMessage()]
    assert rejected
    for record in rejected:
        message = record.getMessage()
        assert "\n" not in message and "\x1b" not in message
        assert len(message) < 600
        assert "\n" not in record.vaultq["job_id"]  # type: ignore[attr-defined]


async def test_debug_logs_of_a_full_run_hold_no_secrets(
    broker_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    unique_name: str,
    logs: Collect,
) -> None:
    app = make_app(unique_name, url_for(broker_kind, tmp_path, request))

    @app.task(name="t.ok")
    async def ok(job: Card) -> Card:
        return job

    @app.task(name="t.fail", retries=1, backoff=0.01)
    async def fail(job: Card) -> int:
        raise ValueError(f"bad card {job.token.reveal()} {job.note}")

    @vaultq.rule(name="raises")
    def raises(req: PolicyRequest) -> bool:
        raise RuntimeError(f"policy saw {req.payload.token.reveal()}")

    @app.task(name="t.denied", policy=vaultq.any_of(vaultq.deny_all, raises))
    async def denied(job: Card) -> int:
        return 0

    who = vaultq.Principal("user:1", roles={"r"}, attrs={"email": f"{MARK}@example.com"})
    async with running_worker(app):
        assert await (await ok.enqueue(card(2), principal=who)).result(timeout=10) == card(2)
        with pytest.raises(vaultq.JobFailed) as failed:
            await (await fail.enqueue(card(), principal=who)).result(timeout=10)
        assert MARK in failed.value.detail
        with pytest.raises(vaultq.AuthorizationDenied) as refused:
            await denied.enqueue(card(), principal=who)
    await app.aclose()
    text = logs.text()
    assert "authorization allow" in text and "authorization deny" in text
    assert MARK not in text
    for record in logs.records:
        assert MARK not in repr(getattr(record, "vaultq", ""))
    for exc in (failed.value, refused.value):
        assert MARK not in str(exc) and MARK not in repr(exc)


def test_reprs_of_public_objects_hold_no_secrets(tmp_path: Path) -> None:
    keys = vaultq.Keyring.generate(signing="ed25519")
    app = vaultq.App("sec-repr", broker=f"sqlite:///{tmp_path}/x.db", keyring=keys)

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    who = vaultq.Principal("user:1", attrs={"ssn": MARK})
    handle = app.job("0" * 32, task="t.ok")
    secret = vaultq.Secret(MARK)
    material = keys.to_dict()
    key_bytes = [*material["encryption"]["keys"].values()]
    key_bytes += [e["key"] for e in material["signing"]["keys"].values()]
    for obj in (who, keys, keys.public(), Card(1, secret), secret, handle, ok, app):
        for text in (repr(obj), str(obj), f"{obj}", f"{obj!r:>10}"):
            assert MARK not in text
            assert not any(k in text for k in key_bytes)
    with pytest.raises(PayloadError) as bad:
        Codec(Card).decode(msgspec.json.encode({"n": "x", "token": MARK}))
    assert MARK not in str(bad.value)


# -- keys ---------------------------------------------------------------------------------


def test_signature_algorithm_comes_from_the_receiver(tmp_path: Path) -> None:
    """An ed25519-signed job naming the id of the worker's hmac key (and vice versa)
    fails the signature check: the message cannot pick the algorithm."""
    hmac_keys = vaultq.Keyring.generate()
    doc = hmac_keys.to_dict()
    ed = vaultq.Keyring.generate(signing="ed25519").to_dict()
    sid = doc["signing"]["active"]
    forged = dict(doc)
    forged["signing"] = {"active": sid, "keys": {sid: next(iter(ed["signing"]["keys"].values()))}}
    ed_keys = vaultq.Keyring.from_dict(forged)  # same ids and AES key, ed25519 signer
    now = time.time()
    for signer, checker in ((ed_keys, hmac_keys), (hmac_keys, ed_keys)):
        data = seal_job(
            signer,
            job_id="d" * 32,
            app="a",
            task="t",
            queue="q",
            payload=b"{}",
            principal=None,
            meta=JobMeta(),
            issued_at=now,
            not_before=now,
            expires_at=now + 60,
        )
        with pytest.raises(BadSignature):
            open_job(data, checker, app="a", tasks={"t"}, now=now)


async def test_verify_only_keyring_cannot_enqueue(tmp_path: Path) -> None:
    public = vaultq.Keyring.generate(signing="ed25519").public()
    app = vaultq.App("sec-public", broker=f"sqlite:///{tmp_path}/x.db", keyring=public)

    @app.task(name="t.ok")
    async def ok(job: Card) -> int:
        return job.n

    with pytest.raises(vaultq.ConfigurationError):
        await ok.enqueue(card())
    await app.aclose()


def test_key_files_insecure_through_a_symlink_or_malformed_are_refused(tmp_path: Path) -> None:
    keys = vaultq.Keyring.generate()
    target = tmp_path / "real.json"
    target.write_text(keys.to_json())
    os.chmod(target, 0o644)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(vaultq.InsecureKeyFile):
        vaultq.Keyring.from_file(link)
    doc = keys.to_dict()
    kid = doc["encryption"]["active"]
    short = doc["encryption"]["keys"][kid][:20]
    doc["encryption"]["keys"][kid] = short
    with pytest.raises(vaultq.KeyringError) as bad:
        vaultq.Keyring.from_dict(doc)
    assert short not in str(bad.value)
    doc = keys.to_dict()
    doc["encryption"]["keys"] = {"k\n1": doc["encryption"]["keys"][kid]}
    doc["encryption"]["active"] = "k\n1"
    with pytest.raises(vaultq.KeyringError):
        vaultq.Keyring.from_dict(doc)
    deep = b'{"version": 1, "encryption": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(vaultq.KeyringError):
        vaultq.Keyring.from_json(deep)


# -- the CLI ------------------------------------------------------------------------------


def _cli(*args: str | bytes, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    keys = vaultq.Keyring.generate()
    path = tmp_path / "vaultq.keys"
    keys.save(path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env["VAULTQ_KEYS"] = f"@{path}"
    env["VAULTQ_BROKER"] = f"sqlite:///{tmp_path}/vaultq.db"
    return env


def test_cli_enqueue_refuses_hostile_json_cleanly(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Deeply nested JSON and invalid UTF-8 used to end in RecursionError and
    UnicodeEncodeError tracebacks instead of a PayloadError."""
    deep = '{"n": 1, "token": ' + "[" * 50_000 + "]" * 50_000 + "}"
    bad_utf8 = b'{"n": 1, "token": "' + MARK.encode() + b'\xff"}'
    for payload in (deep, bad_utf8):
        done = _cli("enqueue", "sec_cli_app", "sec.echo", payload, env=cli_env, cwd=tmp_path)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out[-2000:]
        assert b"Traceback" not in out
        assert MARK.encode() not in out
        assert b"vaultq: error: payload does not match its type" in done.stderr


async def test_cli_wait_masks_secrets_in_results(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """``vaultq enqueue --wait`` crashed on a result holding a Secret; it prints it masked."""
    import sec_cli_app

    path = cli_env["VAULTQ_KEYS"][1:]
    app = sec_cli_app.build("sec-cli", cli_env["VAULTQ_BROKER"], vaultq.Keyring.from_file(path))
    payload = '{"n": 3, "token": "tok-' + MARK + '"}'
    async with running_worker(app):
        done = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "vaultq",
                "enqueue",
                "sec_cli_app",
                "sec.echo",
                payload,
                "--wait",
            ],
            env=cli_env,
            cwd=tmp_path,
            check=False,
        )
        failed = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "vaultq",
                "enqueue",
                "sec_cli_app",
                "sec.fail",
                payload,
                "--wait",
            ],
            env=cli_env,
            cwd=tmp_path,
            check=False,
        )
    await app.aclose()
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"Traceback" not in done.stderr
    assert b'"n":3' in done.stdout and b"Secret('***')" in done.stdout
    assert failed.returncode == 1
    for out in (done.stdout, done.stderr, failed.stdout, failed.stderr):
        assert MARK.encode() not in out


def test_cli_dead_list_escapes_what_the_broker_holds(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Dead letters are read from the broker, where an attacker may have written escape
    sequences; ``vaultq dead list`` printed them raw to the operator's terminal."""
    # enqueueing creates the database and its schema
    done = _cli(
        "enqueue",
        "sec_cli_app",
        "sec.echo",
        '{"n": 1, "token": "t"}',
        "--delay",
        "600",
        env=cli_env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    con = sqlite3.connect(tmp_path / "vaultq.db")
    con.execute(
        "INSERT INTO vaultq_dead (namespace, queue, job_id, reason, detail, attempt, at) "
        "VALUES ('sec-cli', 'default', ?, ?, ?, 'x', 0)",
        ("id\x1b]0;pwned\x07", "failed\x1b[2J", "line\nforged  attempt=1  reason=ok"),
    )
    con.commit()
    con.close()
    done = _cli("dead", "list", "sec_cli_app", env=cli_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"\x1b" not in done.stdout and b"\x07" not in done.stdout
    assert done.stdout.count(b"\n") == 1


# -- URLs in logs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://user:pa/ss{m}@host:6379/0", "pa/ss{m}"),
        ("redis://:p?w#x{m}@host/0", "p?w#x{m}"),
        ("rediss://u:a#b{m}@h:1/0", "a#b{m}"),
        ("redis+cluster://u:x/y?z{m}@h1:7000,h2:7001/", "x/y?z{m}"),
        ("redis+sentinel://:s@s/{m}@h1:26379/mymaster", "s@s/{m}"),
        ("redis://u:plain{m}@h/0", "plain{m}"),
    ],
)
def test_mask_url_hides_passwords_holding_url_delimiters(url: str, password: str) -> None:
    """`mask_url` used to cut the userinfo where urlsplit ends the netloc (the first
    `/ ? #`), so `u:pa/ss@host` was logged as is: the password in the broker's url."""
    url, password = url.format(m=MARK), password.format(m=MARK)
    masked = mask_url(url)
    assert MARK not in masked
    assert password not in masked
    assert ":***@" in masked


def test_secret_exports_no_state() -> None:
    """object.__getstate__ returned {'_value': <the secret>} to anything that asked
    (copyreg-based serializers, dill, debug tools that dump object state)."""
    secret = vaultq.Secret(f"tok-{MARK}")
    with pytest.raises(TypeError, match="no state"):
        secret.__getstate__()
    with pytest.raises(TypeError, match="cannot be restored"):
        object.__new__(vaultq.Secret).__setstate__({"_value": "x"})
    assert repr(secret) == "Secret('***')"


async def test_authorization_denied_escapes_the_principal_id(tmp_path: Path) -> None:
    """A principal id is caller input (a user name, a header). AuthorizationDenied put it
    in its message raw, so a crafted id forged log lines or terminal escapes wherever the
    error was printed or logged; it is escaped like the audit lines escape it."""
    app = make_app("authz-escape", f"sqlite:///{tmp_path}/q.db")

    @app.task(name="t.admin", policy=vaultq.require_role("admin"))
    async def admin(job: Card) -> int:
        return job.n

    hostile = "user:1\nINFO vaultq.audit authorization allow \x1b[2Jroot"
    with pytest.raises(vaultq.AuthorizationDenied) as denied:
        await admin.enqueue(card(), principal=vaultq.Principal(hostile))
    message = str(denied.value)
    assert "\n" not in message and "\x1b" not in message
    assert "user:1\\nINFO" in message  # still says who, escaped
    await app.aclose()
