"""Regenerate the batch-signature vectors: ``.venv/bin/python tests/vectors/generate_batch.py``.

Writes ``envelope_batch.json`` (docs/envelope.md, *Batch signatures*): the Merkle tree
alone (leaf hashes, roots and audit paths of trees of 1 to 8 leaves), batches of v2 job
envelopes sealed with fixed nonces and signed with one Ed25519 signature each, refusal
vectors (one defect each) and accepted ones. Only run this on purpose (a format change):
``tests/test_envelope_batch.py`` fails if sealing the same inputs ever gives other bytes.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec

from vaultq import batchsig
from vaultq.envelope import (
    JOB_DOMAIN,
    MAGIC_V2,
    JobMeta,
    ResultBody,
    _seal_job,
    _seal_result,
    open_job,
    seal_job_parts,
)
from vaultq.envelope_batch import seal_batch
from vaultq.keyring import Keyring

HERE = Path(__file__).resolve().parent
OUT = HERE / "envelope_batch.json"

ENC_KEY = bytes(range(0, 32))
ED_SEED = bytes(range(64, 96))  # s00000001, as in envelope_v2.json's ed25519 vector
ED_SEED_2 = bytes(range(96, 128))  # s00000002: another trusted signer


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


KEYRING: dict[str, Any] = {
    "version": 1,
    "encryption": {"active": "k00000001", "keys": {"k00000001": b64(ENC_KEY)}},
    "signing": {
        "active": "s00000001",
        "keys": {
            "s00000001": {"alg": "ed25519", "key": b64(ED_SEED)},
            "s00000002": {"alg": "ed25519", "key": b64(ED_SEED_2)},
        },
    },
    "verify": {},
}
"""The keyring the batches are sealed with and opened with: both signers trusted."""

ISSUED_MS = 1700000000000
OPEN: dict[str, Any] = {
    "app": "shop",
    "tasks": ["refund"],
    "queue": "default",
    "now_ms": ISSUED_MS,
    "skew_s": 60,
    "max_size": 1048576,
    "accept_v1": True,
}


def job_inputs(batch: int, i: int) -> dict[str, Any]:
    return {
        "job_id": f"018bcfe56800000000000000000{batch:02d}{i:03d}",
        "app": "shop",
        "task": "refund",
        "queue": "default",
        "payload": f'{{"order_id":{i}}}',
        "principal": None,
        "meta": {},
        "issued_at_ms": ISSUED_MS,
        "not_before_ms": ISSUED_MS,
        "expires_at_ms": ISSUED_MS + 86400000,
        "nonce": bytes((batch * 64 + i * 24 + j) % 256 for j in range(24)).hex(),
    }


def sealed_parts(keyring: Keyring, inputs: dict[str, Any]) -> Any:
    return seal_job_parts(
        keyring,
        job_id=inputs["job_id"],
        app=inputs["app"],
        task=inputs["task"],
        queue=inputs["queue"],
        payload=inputs["payload"].encode(),
        principal=None,
        meta=JobMeta(),
        issued_at=inputs["issued_at_ms"] / 1000,
        not_before=inputs["not_before_ms"] / 1000,
        expires_at=inputs["expires_at_ms"] / 1000,
        version=2,
        nonce=bytes.fromhex(inputs["nonce"]),
    )


def tree_vectors() -> list[dict[str, Any]]:
    """Trees of 1..8 leaves whose leaf inputs are the single bytes 0x00, 0x01, …"""
    out = []
    for n in range(1, 9):
        leaves = [batchsig.leaf_hash(bytes((i,))) for i in range(n)]
        out.append(
            {
                "count": n,
                "leaf_inputs": [bytes((i,)).hex() for i in range(n)],
                "leaf_hashes": [h.hex() for h in leaves],
                "root": batchsig.tree_root(leaves).hex(),
                "paths": [[h.hex() for h in p] for p in batchsig.audit_paths(leaves)],
            }
        )
    return out


def batch_vector(keyring: Keyring, batch: int, count: int) -> dict[str, Any]:
    jobs = [job_inputs(batch, i) for i in range(count)]
    parts = [sealed_parts(keyring, j) for j in jobs]
    envelopes = seal_batch(keyring, parts)
    leaves = [batchsig.leaf_hash(p.signed) for p in parts]
    root = batchsig.tree_root(leaves)
    message = batchsig.root_message("s00000001", count, root)
    signature = keyring.sign(message)
    members = []
    for i, (p, envelope) in enumerate(zip(parts, envelopes, strict=True)):
        proof = msgspec.msgpack.decode(envelope[3:])[4]
        members.append(
            {
                "job": jobs[i],
                "header": p.header.hex(),
                "ciphertext": p.ciphertext.hex(),
                "leaf_input": p.signed.hex(),
                "leaf_hash": leaves[i].hex(),
                "proof": proof.hex(),
                "envelope": envelope.hex(),
            }
        )
    return {
        "name": f"batch-{count}-ed25519",
        "count": count,
        "root": root.hex(),
        "root_message": message.hex(),
        "signature": signature.hex(),
        "members": members,
    }


def frame(parts: list[bytes]) -> bytes:
    return MAGIC_V2 + msgspec.msgpack.encode(parts)


def split(envelope: bytes) -> list[bytes]:
    decoded: list[bytes] = msgspec.msgpack.decode(envelope[3:])
    return decoded


def refusals(keyring: Keyring, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Member 4 of the 5-leaf batch (path: one hash) and member 1 (path: three hashes)
    with one defect each."""
    out: list[dict[str, Any]] = []
    members = batch["members"]
    env1 = bytes.fromhex(members[1]["envelope"])
    env4 = bytes.fromhex(members[4]["envelope"])
    h, n, c, sig, proof1 = split(env1)

    def add(name: str, error: str, reason: str, data: bytes, member: int = 1, **extra: Any) -> None:
        out.append(
            {
                "name": name,
                "error": error,
                "reason": reason,
                "envelope": data.hex(),
                "open": {"job_id": members[member]["job"]["job_id"]},
                **extra,
            }
        )

    def proof(index: int, count: int, path: bytes) -> bytes:
        return index.to_bytes(4, "big") + count.to_bytes(4, "big") + path

    path1 = proof1[8:]
    add(
        "proof-index-equals-count",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof(5, 5, path1)]),
    )
    add(
        "proof-count-zero",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof(0, 0, b"")]),
    )
    add(
        "proof-count-above-65536",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof(1, 65537, path1 + bytes(32 * 14))]),
    )
    add(
        "proof-path-one-hash-short",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof(1, 5, path1[:-32])]),
    )
    add(
        "proof-path-one-hash-long",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof(1, 5, path1 + bytes(32))]),
    )
    add(
        "proof-path-not-whole-hashes",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof1[:-1]]),
    )
    add(
        "proof-shorter-than-its-head",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof1[:7]]),
    )
    add("proof-empty", "MalformedEnvelope", "malformed", frame([h, n, c, sig, b""]))
    nil = (
        MAGIC_V2
        + b"\x95"
        + msgspec.msgpack.encode(h)[0:]
        + b"".join(msgspec.msgpack.encode(x) for x in (n, c, sig))
        + b"\xc0"
    )
    add("proof-nil", "MalformedEnvelope", "malformed", nil)
    bin16 = MAGIC_V2 + b"\x95" + b"".join(msgspec.msgpack.encode(x) for x in (h, n, c, sig))
    bin16 += b"\xc5" + len(proof1).to_bytes(2, "big") + proof1
    add("proof-bin16-framing", "MalformedEnvelope", "malformed", bin16)
    add(
        "container-six-elements",
        "MalformedEnvelope",
        "malformed",
        frame([h, n, c, sig, proof1, b""]),
    )
    tampered = bytearray(proof1)
    tampered[8 + 32] ^= 0x80  # the second sibling
    add(
        "proof-sibling-tampered",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, sig, bytes(tampered)]),
    )
    # Member 1's leaf with member 2's position and path (same count, same path length).
    proof2 = split(bytes.fromhex(members[2]["envelope"]))[4]
    add(
        "leaf-moved-to-another-index",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, sig, proof2]),
    )
    add(
        "index-changed-path-kept",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, sig, proof(0, 5, path1)]),
    )
    # Member 4 (index 4 of 5) computes its root as node(path[0], leaf), exactly as
    # index 1 of 2 would: only the signed count tells the two trees apart.
    h4, n4, c4, sig4, proof4 = split(env4)
    add(
        "count-changed-same-path-shape",
        "BadSignature",
        "bad_signature",
        frame([h4, n4, c4, sig4, proof(1, 2, proof4[8:])]),
        member=4,
    )
    bad_sig = bytearray(sig)
    bad_sig[0] ^= 0x01
    add(
        "batch-signature-tampered",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, bytes(bad_sig), proof1]),
    )
    add("batch-signature-used-as-single", "BadSignature", "bad_signature", frame([h, n, c, sig]))
    # A single-signed envelope of the same job, presented as a one-leaf batch.
    single = _seal_job(
        keyring,
        job_id=members[1]["job"]["job_id"],
        app="shop",
        task="refund",
        queue="default",
        payload=members[1]["job"]["payload"].encode(),
        principal=None,
        meta=JobMeta(),
        issued_at=ISSUED_MS / 1000,
        not_before=ISSUED_MS / 1000,
        expires_at=(ISSUED_MS + 86400000) / 1000,
        nonce=n,
    )
    sh, sn, sc, ssig = split(single)
    add(
        "single-signature-used-as-batch",
        "BadSignature",
        "bad_signature",
        frame([sh, sn, sc, ssig, proof(0, 1, b"")]),
    )
    # The same tree's root signed by the other trusted signer (s00000002), naming it in
    # the root message: the header names s00000001, so the verifier builds a message
    # naming s00000001 and checks it under s00000001's key.
    other = Keyring.from_dict({**KEYRING, "signing": {**KEYRING["signing"], "active": "s00000002"}})
    root = bytes.fromhex(batch["root"])
    sig_other = other.sign(batchsig.root_message("s00000002", 5, root))
    add(
        "root-signed-by-another-trusted-key",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, sig_other, proof1]),
    )
    sig_other_naming_1 = other.sign(batchsig.root_message("s00000001", 5, root))
    add(
        "root-naming-the-signer-signed-by-another-key",
        "BadSignature",
        "bad_signature",
        frame([h, n, c, sig_other_naming_1, proof1]),
    )
    untrusted = {
        **KEYRING,
        "signing": {
            "active": "s00000002",
            "keys": {"s00000002": KEYRING["signing"]["keys"]["s00000002"]},
        },
    }
    add("signer-not-trusted", "UntrustedSigner", "untrusted_signer", env1, keyring=untrusted)
    revoked = {
        **KEYRING,
        "revoked": ["s00000001"],
        "signing": {
            "active": "s00000002",
            "keys": {"s00000002": KEYRING["signing"]["keys"]["s00000002"]},
        },
    }
    add("signer-revoked", "RevokedKey", "revoked_key", env1, keyring=revoked)
    add(
        "too-large-with-its-proof",
        "EnvelopeTooLarge",
        "too_large",
        env1,
        open={"job_id": members[1]["job"]["job_id"], "max_size": len(env1) - 1},
    )
    return out


def accepted(batch: dict[str, Any]) -> list[dict[str, Any]]:
    env1 = bytes.fromhex(batch["members"][1]["envelope"])
    return [
        {
            "name": "at-the-size-limit-with-its-proof",
            "envelope": env1.hex(),
            "open": {"job_id": batch["members"][1]["job"]["job_id"], "max_size": len(env1)},
        }
    ]


def main() -> None:
    keyring = Keyring.from_dict(KEYRING)
    batches = [
        batch_vector(keyring, 1, 5),
        batch_vector(keyring, 2, 1),
        batch_vector(keyring, 3, 2),
    ]
    member = batches[0]["members"][0]
    opened = open_job(
        bytes.fromhex(member["envelope"]),
        keyring,
        app="shop",
        tasks={"refund"},
        now=ISSUED_MS / 1000,
    )
    result = _seal_result(
        keyring,
        opened.header,
        ResultBody(status="succeeded", value=msgspec.Raw(b"0"), attempts=1),
        now=(ISSUED_MS + 1500) / 1000,
        nonce=bytes(range(100, 124)),
    )
    proof = split(bytes.fromhex(member["envelope"]))[4]
    out = {
        "comment": (
            "vaultq batch-signature vectors; see docs/envelope.md, 'Batch signatures'. "
            "'tree': Merkle trees (leaf = SHA-256(00 || input), node = SHA-256(01 || l || r)). "
            "'batches': v2 job envelopes sealed with 'keyring', one Ed25519 signature over "
            "'root_message' per batch; each member opens with open_job(**open, job_id=its "
            "job_id). 'refusals': open as the members, after the vector's 'open' overrides "
            "and with its own 'keyring' where it has one; refused with 'error'/'reason'. "
            "'results': a result envelope carrying a proof is malformed."
        ),
        "domains_hex": {"job": JOB_DOMAIN.hex(), "batch": batchsig.BATCH_DOMAIN.hex()},
        "max_leaves": batchsig.MAX_LEAVES,
        "tree": tree_vectors(),
        "keyring": KEYRING,
        "open": OPEN,
        "batches": batches,
        "refusals": refusals(keyring, batches[0]),
        "accepted": accepted(batches[0]),
        "results": {
            "job_id": member["job"]["job_id"],
            "result_envelope": result.hex(),
            "with_proof": frame([*split(result), proof]).hex(),
        },
    }
    OUT.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
