"""Regenerate ``envelope_v1.json``: ``.venv/bin/python tests/vectors/generate.py``.

Only run this on purpose (a format change); the vectors pin the v1 byte layout, and the
tests fail if sealing with the same inputs ever produces other bytes.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec

from vaultq.envelope import (
    JOB_DOMAIN,
    RESULT_DOMAIN,
    JobMeta,
    ResultBody,
    _seal_job,
    _seal_result,
    open_job,
)
from vaultq.keyring import Keyring
from vaultq.principal import Principal

HERE = Path(__file__).resolve().parent


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


ENC_KEY = bytes(range(0, 32))
HMAC_KEY = bytes(range(32, 64))
ED_SEED = bytes(range(64, 96))


def keyring_doc(alg: str) -> dict[str, Any]:
    key = HMAC_KEY if alg == "hmac-sha256" else ED_SEED
    return {
        "version": 1,
        "encryption": {"active": "k00000001", "keys": {"k00000001": b64(ENC_KEY)}},
        "signing": {"active": "s00000001", "keys": {"s00000001": {"alg": alg, "key": b64(key)}}},
        "verify": {},
    }


JOB: dict[str, Any] = {
    "job_id": "018bcfe5680000000000000000000001",
    "app": "shop",
    "task": "refund",
    "queue": "default",
    "payload": '{"order_id":7,"card_token":"tok_visa"}',
    "principal": {"id": "user:42", "roles": ["staff"], "permissions": ["orders.refund"]},
    "meta": {"parent_id": "018bcfe5680000000000000000000000"},
    "issued_at_ms": 1700000000000,
    "not_before_ms": 1700000000000,
    "expires_at_ms": 1700086400000,
    "nonce": "000102030405060708090a0b",
}
RESULT: dict[str, Any] = {
    "now_ms": 1700000001500,
    "body": {"status": "succeeded", "value": '"receipt-7"', "attempts": 1},
    "nonce": "0c0d0e0f1011121314151617",
}


def seal(keyring: Keyring) -> bytes:
    p = JOB["principal"]
    return _seal_job(
        keyring,
        job_id=JOB["job_id"],
        app=JOB["app"],
        task=JOB["task"],
        queue=JOB["queue"],
        payload=JOB["payload"].encode(),
        principal=Principal(p["id"], roles=p["roles"], permissions=p["permissions"]),
        meta=JobMeta(**JOB["meta"]),
        issued_at=JOB["issued_at_ms"] / 1000,
        not_before=JOB["not_before_ms"] / 1000,
        expires_at=JOB["expires_at_ms"] / 1000,
        nonce=bytes.fromhex(JOB["nonce"]),
    )


def seal_result(keyring: Keyring, job: bytes) -> bytes:
    opened = open_job(job, keyring, app="shop", tasks={"refund"}, now=JOB["issued_at_ms"] / 1000)
    body = ResultBody(
        status=RESULT["body"]["status"],
        value=msgspec.Raw(RESULT["body"]["value"].encode()),
        attempts=RESULT["body"]["attempts"],
    )
    return _seal_result(
        keyring,
        opened.header,
        body,
        now=RESULT["now_ms"] / 1000,
        nonce=bytes.fromhex(RESULT["nonce"]),
    )


def parts(envelope: bytes, keyring: Keyring) -> dict[str, str]:
    """The intermediate values an implementer checks step by step."""
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(envelope[3:])
    key_id = msgspec.msgpack.decode(header)[8]
    cipher = keyring.cipher(key_id)
    assert cipher is not None
    return {
        "header": header.hex(),
        "plaintext": cipher.decrypt(nonce, ciphertext, header).decode(),
        "ciphertext": ciphertext.hex(),
        "signature": signature.hex(),
    }


def vector(name: str, keyring: Keyring, job: bytes, result: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "keyring": keyring.to_dict(),
        "job": JOB,
        "envelope": job.hex(),
        "envelope_parts": parts(job, keyring),
        "result": RESULT,
        "result_envelope": result.hex(),
        "result_parts": parts(result, keyring),
    }


def main() -> None:
    vectors = []
    for alg in ("hmac-sha256", "ed25519"):
        keyring = Keyring.from_dict(keyring_doc(alg))
        job = seal(keyring)
        vectors.append(vector(f"job-{alg}", keyring, job, seal_result(keyring, job)))
    # AEAD-only result from a verify-only (split-trust) worker keyring.
    full = Keyring.from_dict(keyring_doc("ed25519"))
    public = full.public()
    job = seal(full)
    vectors.append(vector("result-aead-only", public, job, seal_result(public, job)))
    out = {
        "comment": "vaultq envelope v1 test vectors; see docs/envelope.md",
        "domains_hex": {"job": JOB_DOMAIN.hex(), "result": RESULT_DOMAIN.hex()},
        "vectors": vectors,
    }
    (HERE / "envelope_v1.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
