"""Batch-signed job envelopes (docs/envelope.md, *Batch signatures*): the vectors byte
for byte, every refusal, the cache of verified roots against revocation and reloaded
keys, and the producer's switch (``batch_signatures``) on ``enqueue_many``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

import vaultq
from vaultq import batchsig
from vaultq.batchsig import RootCache
from vaultq.envelope import (
    JobMeta,
    OpenedJob,
    new_job_id,
    open_job,
    open_result,
    seal_job,
    seal_job_parts,
)
from vaultq.envelope_batch import seal_batch
from vaultq.errors import (
    BadSignature,
    EnvelopeError,
    InvalidArgument,
    KeyringError,
    MalformedEnvelope,
    RevokedKey,
    UntrustedSigner,
)
from vaultq.keyring import Keyring
from vaultq.testing import run_pending

VECTORS = Path(__file__).parent / "vectors" / "envelope_batch.json"
DOC: dict[str, Any] = json.loads(VECTORS.read_text())
NOW = 1_700_000_000.0


class Item(msgspec.Struct, frozen=True):
    n: int


class Blob(msgspec.Struct, frozen=True):
    text: str


def _open(data: bytes, keyring: Keyring, params: dict[str, Any], **kw: Any) -> OpenedJob:
    return open_job(
        data,
        keyring,
        app=params["app"],
        tasks=frozenset(params["tasks"]),
        queue=params["queue"],
        job_id=params["job_id"],
        now=params["now_ms"] / 1000,
        skew=params["skew_s"],
        max_size=params["max_size"],
        accept_v1=params["accept_v1"],
        **kw,
    )


# -- vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("tree", DOC["tree"], ids=lambda t: f"tree-{t['count']}")
def test_tree_vectors(tree: dict[str, Any]) -> None:
    leaves = [batchsig.leaf_hash(bytes.fromhex(x)) for x in tree["leaf_inputs"]]
    assert [x.hex() for x in leaves] == tree["leaf_hashes"]
    assert batchsig.tree_root(leaves).hex() == tree["root"]
    paths = batchsig.audit_paths(leaves)
    assert [[p.hex() for p in path] for path in paths] == tree["paths"]
    for i, path in enumerate(paths):
        assert batchsig.root_from_path(leaves[i], i, tree["count"], path) == bytes.fromhex(
            tree["root"]
        )


@pytest.mark.parametrize("batch", DOC["batches"], ids=lambda b: b["name"])
def test_batch_vectors_reproduce_byte_for_byte_and_open(batch: dict[str, Any]) -> None:
    keyring = Keyring.from_dict(DOC["keyring"])
    parts = []
    for member in batch["members"]:
        job = member["job"]
        parts.append(
            seal_job_parts(
                keyring,
                job_id=job["job_id"],
                app=job["app"],
                task=job["task"],
                queue=job["queue"],
                payload=job["payload"].encode(),
                principal=None,
                meta=JobMeta(),
                issued_at=job["issued_at_ms"] / 1000,
                not_before=job["not_before_ms"] / 1000,
                expires_at=job["expires_at_ms"] / 1000,
                nonce=bytes.fromhex(job["nonce"]),
            )
        )
        assert parts[-1].header.hex() == member["header"]
        assert parts[-1].signed.hex() == member["leaf_input"]
        assert batchsig.leaf_hash(parts[-1].signed).hex() == member["leaf_hash"]
    envelopes = seal_batch(keyring, parts)
    leaves = [bytes.fromhex(m["leaf_hash"]) for m in batch["members"]]
    root = batchsig.tree_root(leaves)
    assert root.hex() == batch["root"]
    message = batchsig.root_message("s00000001", batch["count"], root)
    assert message.hex() == batch["root_message"]
    # Ed25519 is deterministic: the same key and message give the same signature.
    assert keyring.sign(message).hex() == batch["signature"]
    for member, envelope in zip(batch["members"], envelopes, strict=True):
        assert envelope.hex() == member["envelope"]
        box = msgspec.msgpack.decode(envelope[3:])
        assert box[3].hex() == batch["signature"] and box[4].hex() == member["proof"]
        params = {**DOC["open"], "job_id": member["job"]["job_id"]}
        opened = _open(envelope, keyring, params)
        assert bytes(opened.body.payload) == member["job"]["payload"].encode()


REFUSALS = DOC["refusals"]


@pytest.mark.parametrize("vector", REFUSALS, ids=lambda v: v["name"])
def test_batch_refusal_vectors(vector: dict[str, Any]) -> None:
    params = {**DOC["open"], **vector["open"]}
    keyring = Keyring.from_dict(vector.get("keyring", DOC["keyring"]))
    for roots in (None, RootCache()):
        with pytest.raises(EnvelopeError) as info:
            _open(bytes.fromhex(vector["envelope"]), keyring, params, roots=roots)
        assert type(info.value).__name__ == vector["error"]
        assert info.value.reason == vector["reason"]


def test_refusals_cover_every_rejection_the_format_adds() -> None:
    names = {v["name"] for v in REFUSALS}
    assert names >= {
        "proof-index-equals-count",
        "proof-count-zero",
        "proof-count-above-65536",
        "proof-path-one-hash-short",
        "proof-path-one-hash-long",
        "proof-sibling-tampered",
        "leaf-moved-to-another-index",
        "count-changed-same-path-shape",
        "root-signed-by-another-trusted-key",
        "signer-not-trusted",
        "signer-revoked",
        "batch-signature-used-as-single",
        "single-signature-used-as-batch",
        "too-large-with-its-proof",
    }


@pytest.mark.parametrize("vector", DOC["accepted"], ids=lambda v: v["name"])
def test_batch_accepted_vectors(vector: dict[str, Any]) -> None:
    params = {**DOC["open"], **vector["open"]}
    _open(bytes.fromhex(vector["envelope"]), Keyring.from_dict(DOC["keyring"]), params)


def test_a_result_never_carries_a_proof() -> None:
    keyring = Keyring.from_dict(DOC["keyring"])
    results = DOC["results"]
    body = open_result(
        bytes.fromhex(results["result_envelope"]), keyring, app="shop", job_id=results["job_id"]
    )
    assert body.status == "succeeded"
    with pytest.raises(MalformedEnvelope, match="never batch-signed"):
        open_result(
            bytes.fromhex(results["with_proof"]), keyring, app="shop", job_id=results["job_id"]
        )


# -- the cache of verified roots -------------------------------------------------------


def _batch(keyring: Keyring, n: int, *, app: str = "a") -> list[bytes]:
    parts = [
        seal_job_parts(
            keyring,
            job_id=new_job_id(NOW),
            app=app,
            task="t",
            queue="q",
            payload=b'{"n":1}',
            principal=None,
            meta=JobMeta(),
            issued_at=NOW,
            not_before=NOW,
            expires_at=NOW + 600,
        )
        for _ in range(n)
    ]
    return seal_batch(keyring, parts)


def _open_simple(data: bytes, keyring: Keyring, roots: RootCache | None = None) -> OpenedJob:
    return open_job(data, keyring, app="a", tasks={"t"}, now=NOW, roots=roots)


def test_one_verification_per_batch_with_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    keyring = Keyring.generate(signing="ed25519")
    envelopes = _batch(keyring, 16)
    signer = keyring.signer_id
    assert signer is not None
    real = keyring.verifier(signer)
    assert real is not None
    calls: list[int] = []

    def counting(message: bytes, signature: bytes) -> bool:
        calls.append(1)
        return real(message, signature)

    monkeypatch.setattr(Keyring, "verifier", lambda _self, _sid: counting)
    cache = RootCache()
    for e in envelopes:
        _open_simple(e, keyring, cache)
    assert len(calls) == 1
    for e in envelopes:
        _open_simple(e, keyring)  # no cache: every envelope verified in full
    assert len(calls) == 17


def test_a_cached_root_does_not_outlive_revocation_or_trust() -> None:
    keyring = Keyring.generate(signing="ed25519")
    signer = keyring.signer_id
    assert signer is not None
    envelopes = _batch(keyring, 4)
    cache = RootCache()
    _open_simple(envelopes[0], keyring, cache)
    assert len(cache) == 1
    # Revoked after the root was cached: the batch mates are refused anyway.
    revoked = keyring.revoke(signer)
    with pytest.raises(RevokedKey):
        _open_simple(envelopes[1], revoked, cache)
    # A keyring that no longer trusts the signer.
    other = Keyring.from_dict(
        {**keyring.to_dict(), "signing": Keyring.generate(signing="ed25519").to_dict()["signing"]}
    )
    with pytest.raises(UntrustedSigner):
        _open_simple(envelopes[2], other, cache)


def test_a_cached_root_is_not_taken_for_another_key_under_the_same_id() -> None:
    """The cache remembers which verifier accepted a root: a keyring whose signer id
    names other key material verifies afresh (and refuses)."""
    a = Keyring.generate(signing="ed25519")
    fresh = Keyring.generate(signing="ed25519").to_dict()["signing"]
    (entry,) = fresh["keys"].values()
    doc_b = {**a.to_dict(), "signing": {"active": a.signer_id, "keys": {a.signer_id: entry}}}
    b = Keyring.from_dict(doc_b)
    envelopes = _batch(a, 3)
    cache = RootCache()
    _open_simple(envelopes[0], a, cache)
    with pytest.raises(BadSignature):
        _open_simple(envelopes[1], b, cache)


def test_a_forged_batch_mate_is_refused_after_its_root_was_cached() -> None:
    keyring = Keyring.generate(signing="ed25519")
    envelopes = _batch(keyring, 4)
    cache = RootCache()
    _open_simple(envelopes[0], keyring, cache)
    header, nonce, ciphertext, signature, proof = msgspec.msgpack.decode(envelopes[1][3:])
    forged = bytearray(ciphertext)
    forged[0] ^= 1
    data = envelopes[1][:3] + msgspec.msgpack.encode(
        [header, nonce, bytes(forged), signature, proof]
    )
    with pytest.raises(BadSignature):
        _open_simple(data, keyring, cache)


def test_seal_batch_refuses_what_it_cannot_sign() -> None:
    keyring = Keyring.generate(signing="ed25519")
    with pytest.raises(InvalidArgument, match="1 to 65536"):
        seal_batch(keyring, [])
    parts = _batch(keyring, 1)
    assert len(msgspec.msgpack.decode(parts[0][3:])) == 5
    with pytest.raises(KeyringError, match="verify-only"):
        seal_batch(keyring.public(), [])


def test_an_hmac_signed_batch_verifies_like_any_signature() -> None:
    """The reader takes the algorithm from its keyring, as for single signatures;
    vaultq itself only seals batches with ed25519 (see the enqueue tests below)."""
    keyring = Keyring.generate()
    for e in _batch(keyring, 3):
        _open_simple(e, keyring)


def test_a_single_signature_still_opens_with_a_cache() -> None:
    keyring = Keyring.generate(signing="ed25519")
    single = seal_job(
        keyring,
        job_id=new_job_id(NOW),
        app="a",
        task="t",
        queue="q",
        payload=b"{}",
        principal=None,
        meta=JobMeta(),
        issued_at=NOW,
        not_before=NOW,
        expires_at=NOW + 60,
    )
    cache = RootCache()
    _open_simple(single, keyring, cache)
    assert len(cache) == 0


# -- the producer's switch -------------------------------------------------------------


def _app(name: str, keyring: Keyring, **options: Any) -> vaultq.App:
    return vaultq.App(name, broker=f"memory://{name}", keyring=keyring, **options)


async def _queued(app: vaultq.App) -> list[list[bytes]]:
    broker = await app.broker()
    return [msgspec.msgpack.decode(e.envelope[3:]) for e in await broker.queued("default")]


@pytest.mark.anyio
async def test_enqueue_many_signs_one_batch_and_the_jobs_run(unique_name: str) -> None:
    keyring = Keyring.generate(signing="ed25519")
    app = _app(unique_name, keyring, batch_signatures=True)

    @app.task(name="t.double")
    async def double(item: Item) -> int:
        return item.n * 2

    handles = await double.enqueue_many([Item(n) for n in range(7)])
    boxes = await _queued(app)
    assert len(boxes) == 7 and all(len(b) == 5 for b in boxes)
    assert len({b[3] for b in boxes}) == 1  # one signature for the whole call
    assert sorted(int.from_bytes(b[4][:4], "big") for b in boxes) == list(range(7))
    await run_pending(app)
    assert [await h.result(timeout=1) for h in handles] == [n * 2 for n in range(7)]
    # One job alone is signed alone: every worker reads that form.
    await double.enqueue(Item(1))
    (box,) = await _queued(app)
    assert len(box) == 4
    await app.aclose()


@pytest.mark.anyio
async def test_batch_signatures_are_off_by_default(unique_name: str) -> None:
    app = _app(unique_name, Keyring.generate(signing="ed25519"))

    @app.task(name="t.noop")
    async def noop(item: Item) -> None: ...

    await noop.enqueue_many([Item(n) for n in range(3)])
    boxes = await _queued(app)
    assert [len(b) for b in boxes] == [4, 4, 4] and len({b[3] for b in boxes}) == 3
    await app.aclose()


@pytest.mark.anyio
async def test_a_call_larger_than_one_tree_signs_one_root_per_chunk(
    unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchsig, "MAX_LEAVES", 4)
    app = _app(unique_name, Keyring.generate(signing="ed25519"), batch_signatures=True)

    @app.task(name="t.noop")
    async def noop(item: Item) -> None: ...

    await noop.enqueue_many([Item(n) for n in range(10)])
    boxes = await _queued(app)
    counts = sorted(int.from_bytes(b[4][4:8], "big") for b in boxes)
    assert counts == [2, 2] + [4] * 8 and len({b[3] for b in boxes}) == 3
    await app.aclose()


@pytest.mark.anyio
async def test_batch_signatures_with_an_hmac_key_is_a_configuration_error(
    unique_name: str,
) -> None:
    app = _app(unique_name, Keyring.generate(), batch_signatures=True)

    @app.task(name="t.noop")
    async def noop(item: Item) -> None: ...

    with pytest.raises(vaultq.ConfigurationError, match="needs an ed25519 signing key"):
        await noop.enqueue_many([Item(1), Item(2)])
    with pytest.raises(vaultq.ConfigurationError, match="needs an ed25519 signing key"):
        await noop.enqueue(Item(1))
    assert await _queued(app) == []
    await app.aclose()


@pytest.mark.anyio
async def test_the_size_limit_counts_the_proof(unique_name: str) -> None:
    keyring = Keyring.generate(signing="ed25519")
    app = _app(unique_name, keyring, batch_signatures=True, max_envelope_size=1024)

    @app.task(name="t.blob")
    async def blob(b: Blob) -> None: ...

    # Fits alone (single signature), not with a 64-leaf batch's 8 + 6 x 32 byte proof.
    size = 1024 - 350
    await blob.enqueue(Blob("x" * size))
    with pytest.raises(vaultq.PayloadError, match="max_envelope_size"):
        await blob.enqueue_many([Blob("x" * size)] * 64)
    assert len(await _queued(app)) == 1
    await app.aclose()
