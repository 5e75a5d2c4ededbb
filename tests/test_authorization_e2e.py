"""Authorization in the worker, end to end: real worker processes on SQLite and Redis.

Each test runs ``python -m vaultq worker e2e_app_policies:app`` and produces from this
process with the same task definitions (``e2e_app_policies.build``). Task functions
count their calls in files, so "never ran" is checked, not assumed.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from e2e_app_policies import Refund, build, count
from support.brokers import url_for
from support.e2e_workers import dead_reasons, e2e_worker, settled

import vaultq
from vaultq.brokers.redis import QueueKeys
from vaultq.envelope import MAGIC, open_job

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90), pytest.mark.other_processes]

SPEC = "e2e_app_policies:app"
PAYLOAD_MARKER = "PAYLOAD-MARKER-5eb1"
ATTR_MARKER = "ATTR-MARKER-77aa"
REFUNDER = vaultq.Principal(
    "user:42", permissions=frozenset({"orders.refund"}), attrs={"email": ATTR_MARKER, "tenant": 7}
)


def _env(name: str, state: Path, **extra: str) -> dict[str, str]:
    return {"E2E_APP": name, "E2E_STATE": str(state), **extra}


def _audit_lines(log: str, job_id: str) -> list[str]:
    return [line for line in log.splitlines() if "authorization" in line and job_id in line]


async def test_revoked_rights_deny_in_the_worker_and_audit_stays_clean(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = build(unique_name, tmp_path, broker=url, keyring=keys)
    refund = app.get_task("refund")
    assert refund is not None

    # Allowed at enqueue, revoked before any worker runs it.
    revoked = await refund.enqueue(Refund(1, note=PAYLOAD_MARKER), principal=REFUNDER)
    (tmp_path / "revoked").touch()
    # The producer's own check now refuses at once, and nothing is enqueued.
    with pytest.raises(vaultq.AuthorizationDenied) as denied_early:
        await refund.enqueue(Refund(2, note=PAYLOAD_MARKER), principal=REFUNDER)
    assert PAYLOAD_MARKER not in str(denied_early.value)
    assert ATTR_MARKER not in str(denied_early.value)

    # DEBUG: "allow" audit lines are written at DEBUG (denials at WARNING).
    args = ("--concurrency", "4", "--grace", "2", "--log-level", "DEBUG")
    with e2e_worker(
        SPEC, url=url, keyring=keys, logdir=tmp_path, env=_env(unique_name, tmp_path), args=args
    ) as run:
        with pytest.raises(vaultq.JobDenied) as exc_info:
            await revoked.result(timeout=20)
        assert exc_info.value.job_id == revoked.id
        assert PAYLOAD_MARKER not in str(exc_info.value)
        assert await revoked.status() == vaultq.JobStatus.DENIED
        outcome = await revoked.outcome()
        assert outcome is not None and outcome.attempts == 1 and outcome.started_at is None
        assert count(tmp_path, "refund") == 0

        # Rights restored: the same task runs. Then revoked between two attempts: the
        # first attempt ran (and failed), the retry is denied before the function runs.
        (tmp_path / "revoked").unlink()
        ok = await refund.enqueue(Refund(3, note=PAYLOAD_MARKER), principal=REFUNDER)
        assert await ok.result(timeout=20) == 3
        flaky = await refund.enqueue(Refund(4, revoke_and_fail=True), principal=REFUNDER)
        with pytest.raises(vaultq.JobDenied):
            await flaky.result(timeout=20)
        flaky_outcome = await flaky.outcome()
        assert flaky_outcome is not None and flaky_outcome.attempts == 2
        assert count(tmp_path, "refund") == 2  # job 3 once, job 4's first attempt once

        # Nothing is left to retry; both denials are dead letters with reason "denied".
        await settled(app)
        dead = await dead_reasons(app)
        assert dead == {revoked.id: ("denied", 1), flaky.id: ("denied", 2)}
        assert run.alive()
    log = run.log()

    # One audit line per decision, with ids and the decision, never payload or attrs.
    deny = _audit_lines(log, revoked.id)
    assert len(deny) == 1, deny
    line = deny[0]
    assert "authorization deny" in line and "stage=run" in line and "attempt=1" in line
    assert "principal=user:42" in line and f"signer={keys.signer_id}" in line
    assert "still_authorized" in line and "task=refund" in line
    allow = _audit_lines(log, ok.id)
    assert len(allow) == 1 and "authorization allow" in allow[0], allow
    flaky_lines = _audit_lines(log, flaky.id)
    assert [("allow" in x, "attempt=1" in x) for x in flaky_lines] == [(True, True), (False, False)]
    assert "authorization deny" in flaky_lines[1] and "attempt=2" in flaky_lines[1]
    # The whole worker log, not just the audit lines: no payload value, no attribute.
    assert PAYLOAD_MARKER not in log
    assert ATTR_MARKER not in log
    assert "tenant" not in log


async def test_async_policy_that_raises_or_hangs_denies(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    policy_timeout = 0.5
    app = build(unique_name, tmp_path, broker=url, keyring=keys, policy_timeout=policy_timeout)
    raises, hangs = app.get_task("policy_raises"), app.get_task("policy_hangs")
    assert raises is not None and hangs is not None
    env = _env(unique_name, tmp_path, E2E_POLICY_TIMEOUT=str(policy_timeout))

    with e2e_worker(SPEC, url=url, keyring=keys, logdir=tmp_path, env=env) as run:
        # A job that runs proves the worker is up, so the timing below is the policy's.
        warm = await app.get_task("admin_only").enqueue(  # type: ignore[union-attr]
            Refund(0), principal=vaultq.Principal("ops", roles=frozenset({"admin"}))
        )
        assert await warm.result(timeout=20) == 0

        h_raise = await raises.enqueue(Refund(1, note=PAYLOAD_MARKER), principal=REFUNDER)
        with pytest.raises(vaultq.JobDenied):
            await h_raise.result(timeout=20)

        began = time.monotonic()
        h_hang = await hangs.enqueue(Refund(2, note=PAYLOAD_MARKER), principal=REFUNDER)
        with pytest.raises(vaultq.JobDenied):
            await h_hang.result(timeout=20)
        took = time.monotonic() - began
        print(f"hanging policy denied after {took:.3f} s (policy timeout {policy_timeout} s)")
        assert policy_timeout <= took < policy_timeout + 2.5

        for handle in (h_raise, h_hang):
            outcome = await handle.outcome()
            assert outcome is not None and outcome.status == "denied" and outcome.attempts == 1
        assert count(tmp_path, "policy_raises") == count(tmp_path, "policy_hangs") == 0
        await settled(app)
        dead = await dead_reasons(app)
        assert dead[h_raise.id] == ("denied", 1) and dead[h_hang.id] == ("denied", 1)
    log = run.log()
    (raise_line,) = _audit_lines(log, h_raise.id)
    assert "authorization deny" in raise_line and "reason=error" in raise_line
    assert "error=RuntimeError" in raise_line and "raises_in_worker" in raise_line
    (hang_line,) = _audit_lines(log, h_hang.id)
    assert "authorization deny" in hang_line and "reason=timeout" in hang_line
    # The raising policy's message quoted the payload: only its class was logged.
    assert PAYLOAD_MARKER not in log and ATTR_MARKER not in log


async def test_signer_not_in_allow_signers_is_denied(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    # The worker trusts two signers (a rotation keeps the old one trusted), but the
    # task allows only the ops signer: a trusted signature is not enough.
    batch_keys = vaultq.Keyring.generate()
    ops_keys = batch_keys.rotate()
    assert ops_keys.signer_id != batch_keys.signer_id
    assert batch_keys.signer_id in ops_keys.trusted_signers
    env = _env(unique_name, tmp_path, E2E_ALLOWED_SIGNER=str(ops_keys.signer_id))
    ops = build(unique_name, tmp_path, broker=url, keyring=ops_keys,
                allowed_signer=str(ops_keys.signer_id))  # fmt: skip
    honest_batch = build(unique_name, tmp_path, broker=url, keyring=batch_keys,
                         allowed_signer=str(ops_keys.signer_id))  # fmt: skip
    # A producer whose code skips the check (modified, or a stolen old key).
    rogue_batch = build(unique_name, tmp_path, broker=url, keyring=batch_keys,
                        signer_policy=vaultq.allow_all)  # fmt: skip

    with pytest.raises(vaultq.AuthorizationDenied):
        await honest_batch.get_task("signed_by_ops").enqueue(Refund(1))  # type: ignore[union-attr]

    with e2e_worker(SPEC, url=url, keyring=ops_keys, logdir=tmp_path, env=env) as run:
        good = await ops.get_task("signed_by_ops").enqueue(Refund(2))  # type: ignore[union-attr]
        bad = await rogue_batch.get_task("signed_by_ops").enqueue(  # type: ignore[union-attr]
            Refund(3), principal=vaultq.Principal("ops-bot", roles=frozenset({"admin"}))
        )
        assert await good.result(timeout=20) == 2
        # The result is sealed with the worker's (ops) keys: read it with those.
        with pytest.raises(vaultq.JobDenied):
            await ops.job(bad.id).result(timeout=20)
        assert count(tmp_path, "signed_by_ops") == 1
        await settled(ops)
        assert (await dead_reasons(ops))[bad.id] == ("denied", 1)
    (line,) = _audit_lines(run.log(), bad.id)
    assert f"signer={batch_keys.signer_id}" in line and "authorization deny" in line
    assert "allow_signers" in line


class _Box(msgspec.Struct, array_like=True, frozen=True):
    """The envelope container as an attacker with broker access sees it."""

    header: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes


def _rewrite_principal(keys: vaultq.Keyring, old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """AES-GCM is a stream cipher underneath: XOR the ciphertext where the principal id
    sits and the plaintext would read ``new``. Only the signature and the GCM tag stop it.
    (The test knows the plaintext layout through the keys; an attacker would guess it.)"""
    assert len(old) == len(new)

    def forge(envelope: bytes) -> bytes:
        box = msgspec.msgpack.decode(envelope[len(MAGIC) :], type=_Box)
        header = msgspec.msgpack.decode(box.header)
        # v2 (XAES-256-GCM) is still AES-GCM, a stream cipher, under a derived key.
        cipher = keys.xaes_cipher(header[8]) if header[0] == 2 else keys.cipher(header[8])
        assert cipher is not None
        plaintext = cipher.decrypt(box.nonce, box.ciphertext, box.header)
        at = plaintext.index(b'"id":"' + old + b'"') + len(b'"id":"')
        ct = bytearray(box.ciphertext)
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            ct[at + i] ^= a ^ b
        forged = box.__class__(box.header, box.nonce, bytes(ct), box.signature)
        return envelope[: len(MAGIC)] + msgspec.msgpack.encode(forged)

    return forge


def _tamper(
    broker_kind: str, url: str, namespace: str, job_id: str, edit: Callable[[bytes], bytes]
) -> bytes:
    """Rewrite a queued job's stored envelope, straight in the broker's storage."""
    if broker_kind == "sqlite":
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            row_id, envelope = db.execute(
                "SELECT id, envelope FROM vaultq_jobs WHERE namespace = ? AND job_id = ?",
                (namespace, job_id),
            ).fetchone()
            forged = edit(bytes(envelope))
            db.execute("UPDATE vaultq_jobs SET envelope = ? WHERE id = ?", (forged, row_id))
            db.commit()
        return forged
    stream = QueueKeys(namespace, "default").stream
    client = redis.Redis.from_url(url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
        for entry_id, fields in entries:
            if fields[b"id"] == job_id.encode():
                forged = edit(fields[b"env"])
                client.xadd(stream, {**fields, b"env": forged})  # type: ignore[dict-item]
                client.xdel(stream, entry_id)
                return forged
    finally:
        client.close()
    raise AssertionError(f"job {job_id} not found in {stream}")


def _foreign_keys_with_spoofed_ids(real: vaultq.Keyring) -> vaultq.Keyring:
    """An attacker's keyring that names the real key ids but holds its own key bytes."""
    own = vaultq.Keyring.generate().to_dict()
    enc_secret = next(iter(own["encryption"]["keys"].values()))
    sign_entry = next(iter(own["signing"]["keys"].values()))
    return vaultq.Keyring.from_dict(
        {
            "version": 1,
            "encryption": {"active": real.active_key_id, "keys": {real.active_key_id: enc_secret}},
            "signing": {"active": real.signer_id, "keys": {real.signer_id: sign_entry}},
            "verify": {},
        }
    )


async def test_forged_principal_is_rejected(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> None:
    url = url_for(broker_kind, tmp_path, request)
    keys = vaultq.Keyring.generate()
    app = build(unique_name, tmp_path, broker=url, keyring=keys)
    admin_only = app.get_task("admin_only")
    assert admin_only is not None
    root = vaultq.Principal("root:42", roles=frozenset({"admin"}))

    # 1. A legitimate job for user:42, whose principal an attacker with write access to
    #    the broker flips to root:42 by XOR-ing the ciphertext.
    user = vaultq.Principal("user:42", roles=frozenset({"admin"}))
    flipped = await admin_only.enqueue(Refund(1), principal=user)
    forged = _tamper(
        broker_kind, url, unique_name, flipped.id, _rewrite_principal(keys, b"user:42", b"root:42")
    )
    with pytest.raises(vaultq.BadSignature):
        open_job(forged, keys, app=unique_name, tasks={"admin_only"}, now=time.time())

    # 2. An envelope sealed with the attacker's own keys (admin principal): untrusted.
    stranger = build(unique_name, tmp_path, broker=url, keyring=vaultq.Keyring.generate())
    foreign = await stranger.get_task("admin_only").enqueue(Refund(2), principal=root)  # type: ignore[union-attr]

    # 3. The same, but the attacker's keyring reuses the real key ids.
    spoofer = build(unique_name, tmp_path, broker=url, keyring=_foreign_keys_with_spoofed_ids(keys))
    spoofed = await spoofer.get_task("admin_only").enqueue(Refund(3), principal=root)  # type: ignore[union-attr]

    with e2e_worker(
        SPEC, url=url, keyring=keys, logdir=tmp_path, env=_env(unique_name, tmp_path)
    ) as run:
        # The worker goes on serving honest jobs.
        honest = await admin_only.enqueue(Refund(4), principal=root)
        assert await honest.result(timeout=20) == 4
        assert count(tmp_path, "admin_only") == 1
        await settled(app, timeout=20)
        dead = await dead_reasons(app)
    # Refused before (or by) the signature: one reason, and no outcome under their ids.
    for handle in (flipped, foreign, spoofed):
        assert dead[handle.id] == ("rejected:unauthenticated", 1)
        assert await (await app.broker()).get_result("default", handle.id) is None
    rejected = [x for x in run.log().splitlines() if " rejected on queue " in x]
    assert len(rejected) == 3 and all("root:42" not in x for x in rejected)


DOC = Path(__file__).resolve().parent.parent / "docs" / "authorization.md"


def test_worker_doc_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks marked ``<!-- test: worker -->`` in docs/authorization.md run as written."""
    monkeypatch.chdir(tmp_path)  # the example uses the embedded broker in the cwd
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- test: worker -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    namespace: dict[str, Any] = {"__name__": "docs_authorization_worker"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
