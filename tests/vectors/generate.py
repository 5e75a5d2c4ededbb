"""Regenerate the vectors: ``.venv/bin/python tests/vectors/generate.py``.

Writes ``envelope_v1.json``, ``envelope_v2.json`` (same inputs, 24-byte nonces,
XAES-256-GCM), the refusal vectors ``envelope_v1_refusals.json`` and
``envelope_v2_refusals.json``, ``keyring_refusals.json`` (keyrings that must not
load) and ``redis_stream_fields.json`` (stream ``att``/``at`` forms). Only run this on
purpose (a format change); the vectors pin the byte layouts, and the tests fail if
sealing with the same inputs ever produces other bytes.
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


# v2: the same inputs with 24-byte nonces (the first 12 bytes pick the derived key).
JOB_V2: dict[str, Any] = {**JOB, "nonce": "000102030405060708090a0b0c0d0e0f1011121314151617"}
RESULT_V2: dict[str, Any] = {
    **RESULT,
    "nonce": "18191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f",
}


def seal(keyring: Keyring, inputs: dict[str, Any] = JOB) -> bytes:
    p = inputs["principal"]
    return _seal_job(
        keyring,
        job_id=inputs["job_id"],
        app=inputs["app"],
        task=inputs["task"],
        queue=inputs["queue"],
        payload=inputs["payload"].encode(),
        principal=Principal(p["id"], roles=p["roles"], permissions=p["permissions"]),
        meta=JobMeta(**inputs["meta"]),
        issued_at=inputs["issued_at_ms"] / 1000,
        not_before=inputs["not_before_ms"] / 1000,
        expires_at=inputs["expires_at_ms"] / 1000,
        nonce=bytes.fromhex(inputs["nonce"]),
    )


def seal_result(keyring: Keyring, job: bytes, result: dict[str, Any] = RESULT) -> bytes:
    opened = open_job(job, keyring, app="shop", tasks={"refund"}, now=JOB["issued_at_ms"] / 1000)
    body = ResultBody(
        status=result["body"]["status"],
        value=msgspec.Raw(result["body"]["value"].encode()),
        attempts=result["body"]["attempts"],
    )
    return _seal_result(
        keyring,
        opened.header,
        body,
        now=result["now_ms"] / 1000,
        nonce=bytes.fromhex(result["nonce"]),
    )


def parts(envelope: bytes, keyring: Keyring) -> dict[str, str]:
    """The intermediate values an implementer checks step by step."""
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(envelope[3:])
    version, key_id = msgspec.msgpack.decode(header)[0], msgspec.msgpack.decode(header)[8]
    cipher = keyring.xaes_cipher(key_id) if version == 2 else keyring.cipher(key_id)
    assert cipher is not None
    out = {}
    if version == 2:
        # The per-envelope AES-256-GCM key and nonce, for implementers checking the KDF.
        xaes = keyring.xaes_cipher(key_id)
        assert xaes is not None
        derived_nonce = xaes.derive(nonce)[1]
        out["xaes_gcm_nonce"] = derived_nonce.hex()
    return {
        **out,
        "header": header.hex(),
        "plaintext": cipher.decrypt(nonce, ciphertext, header).decode(),
        "ciphertext": ciphertext.hex(),
        "signature": signature.hex(),
    }


def vector(
    name: str, keyring: Keyring, job: bytes, result: bytes, version: int = 1
) -> dict[str, Any]:
    return {
        "name": name,
        "keyring": keyring.to_dict(),
        "job": JOB if version == 1 else JOB_V2,
        "envelope": job.hex(),
        "envelope_parts": parts(job, keyring),
        "result": RESULT if version == 1 else RESULT_V2,
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
        "time_rounding": time_rounding(),
    }
    (HERE / "envelope_v1.json").write_text(json.dumps(out, indent=2) + "\n")
    write_refusals()
    write_v2()
    write_keyring_refusals()
    write_stream_fields()


def time_rounding() -> list[dict[str, Any]]:
    """Header times from seconds: ms = round(seconds * 1000), the product a double, ties to
    even. Each ``seconds`` here times 1000 is exactly a tie (x.5) as a double."""
    out = []
    for text in ("1700000000.0005", "1700000000.0015", "1700000000.0025", "1700000000.0035"):
        seconds = float(text)
        assert (seconds * 1000) % 1 == 0.5
        out.append({"seconds": seconds, "ms": round(seconds * 1000)})
    out.append({"seconds": 1700000000.0004, "ms": 1700000000000})
    out.append({"seconds": 1700000000.0006, "ms": 1700000000001})
    return out


def write_v2() -> None:
    vectors = []
    for alg in ("hmac-sha256", "ed25519"):
        keyring = Keyring.from_dict(keyring_doc(alg))
        job = seal(keyring, JOB_V2)
        result = seal_result(keyring, job, RESULT_V2)
        vectors.append(vector(f"job-{alg}", keyring, job, result, version=2))
    full = Keyring.from_dict(keyring_doc("ed25519"))
    public = full.public()
    job = seal(full, JOB_V2)
    vectors.append(
        vector("result-aead-only", public, job, seal_result(public, job, RESULT_V2), version=2)
    )
    out = {
        "comment": (
            "vaultq envelope v2 test vectors (XAES-256-GCM, 24-byte nonces); see "
            "docs/envelope.md. Same inputs as envelope_v1.json but the nonces."
        ),
        "domains_hex": {"job": JOB_DOMAIN.hex(), "result": RESULT_DOMAIN.hex()},
        "vectors": vectors,
        "time_rounding": time_rounding(),
    }
    (HERE / "envelope_v2.json").write_text(json.dumps(out, indent=2) + "\n")


# --- refusal (negative) vectors ------------------------------------------------------
# Each one is the positive hmac-sha256 job vector with exactly one defect. Where the defect
# is inside the signed/encrypted part (header framing, body), the envelope is re-encrypted
# and re-signed with the vector keyring, so the defect is the only reason to refuse it.

REVOKED = ["k00000008", "s00000008"]
OPEN = {"app": "shop", "tasks": ["refund"], "queue": "default", "job_id": JOB["job_id"]}
OPEN_NOW_MS = JOB["issued_at_ms"]


def mp_bin(raw: bytes, width: int = 0) -> bytes:
    """msgpack bin with a chosen length width (0 = shortest, 8/16/32 = forced)."""
    n = len(raw)
    width = width or (8 if n < 256 else 16 if n < 65536 else 32)
    tag = {8: b"\xc4", 16: b"\xc5", 32: b"\xc6"}[width]
    return tag + n.to_bytes(width // 8, "big") + raw


def mp_array(items: list[bytes], width: int = 0) -> bytes:
    n = len(items)
    if width == 0 and n < 16:
        head = bytes([0x90 | n])
    else:
        head = (
            (b"\xdc" + n.to_bytes(2, "big"))
            if width in (0, 16)
            else (b"\xdd" + n.to_bytes(4, "big"))
        )
    return head + b"".join(items)


def header_items(header: bytes) -> list[bytes]:
    """The 10 canonical msgpack items of a header, each re-encoded on its own."""
    return [msgspec.msgpack.encode(v) for v in msgspec.msgpack.decode(header)]


def _aead(keyring: Keyring, nonce: bytes) -> Any:
    return keyring.active_xaes_cipher() if len(nonce) == 24 else keyring.active_cipher()


def reseal(keyring: Keyring, header: bytes, plaintext: bytes, nonce: bytes) -> list[bytes]:
    ciphertext = _aead(keyring, nonce).encrypt(nonce, plaintext, header)
    signature = keyring.sign(b"".join((JOB_DOMAIN, header, nonce, ciphertext)))
    return [header, nonce, ciphertext, signature]


def frame(parts: list[bytes], extra: bytes = b"", vq: bytes = b"") -> bytes:
    return (vq or tag(parts[1])) + mp_array([mp_bin(p) for p in parts]) + extra


def tag(nonce: bytes) -> bytes:
    """The version tag that goes with a nonce (24 bytes: v2)."""
    return b"VQ\x02" if len(nonce) == 24 else b"VQ\x01"


def refusals(keyring: Keyring, job: bytes) -> list[dict[str, Any]]:
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(job[3:])
    plaintext = _aead(keyring, nonce).decrypt(nonce, ciphertext, header)
    vq = tag(nonce)
    items = header_items(header)
    out: list[dict[str, Any]] = []

    def add(name: str, error: str, reason: str, data: bytes, **open_: Any) -> None:
        out.append(
            {"name": name, "error": error, "reason": reason, "envelope": data.hex(), "open": open_}
        )

    def with_header(new_items: list[bytes], array_width: int = 0) -> bytes:
        return frame(reseal(keyring, mp_array(new_items, array_width), plaintext, nonce))

    parts = [header, nonce, ciphertext, signature]
    # Framing: the container (outside the signature) and the header (inside it).
    add(
        "container-extra-element",
        "MalformedEnvelope",
        "malformed",
        vq + mp_array([mp_bin(p) for p in parts] + [mp_bin(b"")]),
    )
    add(
        "container-missing-element",
        "MalformedEnvelope",
        "malformed",
        vq + mp_array([mp_bin(p) for p in parts[:3]]),
    )
    add("container-trailing-bytes", "MalformedEnvelope", "malformed", frame(parts, b"\x00"))
    add(
        "container-array16",
        "MalformedEnvelope",
        "malformed",
        vq + mp_array([mp_bin(p) for p in parts], 16),
    )
    add(
        "container-nonce-bin16",
        "MalformedEnvelope",
        "malformed",
        vq + mp_array([mp_bin(header), mp_bin(nonce, 16), mp_bin(ciphertext), mp_bin(signature)]),
    )
    add(
        "container-signature-bin32",
        "MalformedEnvelope",
        "malformed",
        vq + mp_array([mp_bin(header), mp_bin(nonce), mp_bin(ciphertext), mp_bin(signature, 32)]),
    )
    add(
        "container-str-not-bin",
        "MalformedEnvelope",
        "malformed",
        vq
        + mp_array(
            [
                mp_bin(header),
                msgspec.msgpack.encode(nonce.hex()[:12]),
                mp_bin(ciphertext),
                mp_bin(signature),
            ]
        ),
    )
    add(
        "nonce-one-byte-short",
        "MalformedEnvelope",
        "malformed",
        frame([header, nonce[:-1], ciphertext, signature], vq=vq),
    )
    add(
        "header-extra-element",
        "MalformedEnvelope",
        "malformed",
        with_header([*items, msgspec.msgpack.encode(None)]),
    )
    add("header-missing-element", "MalformedEnvelope", "malformed", with_header(items[:9]))
    add("header-array16", "MalformedEnvelope", "malformed", with_header(items, 16))
    add(
        "header-version-uint8",
        "MalformedEnvelope",
        "malformed",
        with_header([b"\xcc" + items[0], *items[1:]]),
    )
    add(
        "header-issued-at-int64",
        "MalformedEnvelope",
        "malformed",
        with_header([*items[:5], b"\xd3" + items[5][1:], *items[6:]]),
    )
    add(
        "header-app-str8",
        "MalformedEnvelope",
        "malformed",
        with_header([*items[:2], b"\xd9\x04shop", *items[3:]]),
    )
    add(
        "header-job-id-str16",
        "MalformedEnvelope",
        "malformed",
        with_header([items[0], b"\xda\x00\x20" + items[1][2:], *items[2:]]),
    )
    add(
        "header-trailing-bytes",
        "MalformedEnvelope",
        "malformed",
        frame(reseal(keyring, header + b"\xc0", plaintext, nonce)),
    )
    add(
        "header-time-as-float",
        "MalformedEnvelope",
        "malformed",
        with_header([*items[:5], msgspec.msgpack.encode(float(JOB["issued_at_ms"])), *items[6:]]),
    )
    # Every other refusal reason, once each, in the order of the checks.
    add("too-large", "EnvelopeTooLarge", "too_large", job, max_size=len(job) - 1)
    add(
        "unknown-version-tag",
        "UnsupportedVersion",
        "unsupported_version",
        b"VQ\x09" + job[3:],
    )
    add("no-version-tag", "UnsupportedVersion", "unsupported_version", b"XX" + job[2:])
    add(
        "header-version-mismatch",
        "UnsupportedVersion",
        "unsupported_version",
        with_header([b"\x01" if vq == b"VQ\x02" else b"\x02", *items[1:]]),
    )
    add("wrong-app", "WrongDestination", "wrong_destination", job, app="other")
    add("wrong-queue", "WrongDestination", "wrong_destination", job, queue="other")
    add("wrong-job-id", "WrongDestination", "wrong_destination", job, job_id="0" * 32)
    add("unregistered-task-name", "UnknownTask", "unknown_task", job, tasks=["specapp.refund"])
    add(
        "not-yet-valid",
        "EnvelopeNotYetValid",
        "not_yet_valid",
        job,
        now_ms=JOB["not_before_ms"] - 60_001,
    )
    add("expired", "EnvelopeExpired", "expired", job, now_ms=JOB["expires_at_ms"] + 60_001)
    untrusted = [*items[:9], msgspec.msgpack.encode("s00000009")]
    add("untrusted-signer", "UntrustedSigner", "untrusted_signer", with_header(untrusted))
    add(
        "unsigned-job",
        "UntrustedSigner",
        "untrusted_signer",
        frame([mp_array([*items[:9], msgspec.msgpack.encode("")]), nonce, ciphertext, b""]),
    )
    add(
        "bad-signature",
        "BadSignature",
        "bad_signature",
        frame([header, nonce, ciphertext, bytes(32)]),
    )
    # The refusal keyring revokes ids k00000008 and s00000008 (see write_refusals).
    revoked_key = [*items[:8], msgspec.msgpack.encode("k00000008"), items[9]]
    add("revoked-encryption-key", "RevokedKey", "revoked_key", with_header(revoked_key))
    revoked_signer = [*items[:9], msgspec.msgpack.encode("s00000008")]
    add("revoked-signer", "RevokedKey", "revoked_key", with_header(revoked_signer))
    unknown_key = [*items[:8], msgspec.msgpack.encode("k00000009"), items[9]]
    add("unknown-key", "UnknownKey", "unknown_key", with_header(unknown_key))
    flipped = bytearray(ciphertext)
    flipped[0] ^= 1
    add(
        "decryption-failed",
        "DecryptionFailed",
        "decryption_failed",
        frame(
            [
                header,
                nonce,
                bytes(flipped),
                keyring.sign(b"".join((JOB_DOMAIN, header, nonce, bytes(flipped)))),
            ]
        ),
    )
    add(
        "body-unknown-field",
        "MalformedEnvelope",
        "malformed",
        frame(reseal(keyring, header, plaintext[:-1] + b',"extra":1}', nonce)),
    )
    add(
        "body-not-json",
        "MalformedEnvelope",
        "malformed",
        frame(reseal(keyring, header, b"not json", nonce)),
    )
    # Header values outside the documented ranges and forms (check 3, after framing).
    for name, index, value in (
        ("header-issued-at-negative", 5, -1),
        ("header-not-before-above-2^53", 6, 2**53),
        ("header-expires-at-uint64-max", 7, 2**64 - 1),
    ):
        changed = [*items[:index], msgspec.msgpack.encode(value), *items[index + 1 :]]
        add(name, "MalformedEnvelope", "malformed", with_header(changed))
    add(
        "header-version-uint64-max",
        "UnsupportedVersion",
        "unsupported_version",
        with_header([msgspec.msgpack.encode(2**64 - 1), *items[1:]]),
    )
    for name, bad_id in (
        ("header-job-id-empty", ""),
        ("header-job-id-leading-dash", "-018bcfe568"),
        ("header-job-id-newline", JOB["job_id"] + "\n"),
        ("header-job-id-slash", "018bcfe5/68"),
        ("header-job-id-129-chars", "a" * 129),
    ):
        changed = [items[0], msgspec.msgpack.encode(bad_id), *items[2:]]
        add(name, "MalformedEnvelope", "malformed", with_header(changed), job_id=bad_id)
    # JSON that two readers could parse differently: a repeated key, at any depth.
    for name, body in (
        ("body-duplicate-key", plaintext[:-1] + b',"principal":null}'),
        (
            "body-duplicate-key-in-payload",
            plaintext.replace(b'{"order_id":7,', b'{"order_id":7,"order_id":8,', 1),
        ),
        ("body-duplicate-key-escaped", plaintext[:-1] + b',"\\u006deta":{}}'),
    ):
        assert body != plaintext
        add(name, "MalformedEnvelope", "malformed", frame(reseal(keyring, header, body, nonce)))
    for name, timeout in (
        ("body-meta-timeout-zero", b"0"),
        ("body-meta-timeout-negative", b"-5.0"),
    ):
        body = plaintext.replace(b'"meta":{', b'"meta":{"timeout":' + timeout + b",", 1)
        add(name, "MalformedEnvelope", "malformed", frame(reseal(keyring, header, body, nonce)))
    # Body field types and ranges (docs/envelope.md, *Body JSON*): one defect each, in
    # the principal (whose id reaches audit lines and result bodies), meta and payload.
    for name, body in body_defects(plaintext):
        add(name, "MalformedEnvelope", "malformed", frame(reseal(keyring, header, body, nonce)))
    # Time rounding: now_ms = round(now_s * 1000), half to even (a double product). With
    # not_before odd, 1699999940000.5 ms rounds down to the even ...40000: 1 ms short of
    # valid (rounding half up would accept it).
    odd = [*items[:6], msgspec.msgpack.encode(JOB["not_before_ms"] + 1), *items[7:]]
    add(
        "not-yet-valid-tie-rounds-to-even",
        "EnvelopeNotYetValid",
        "not_yet_valid",
        with_header(odd),
        now_s=1699999940.0005,
    )
    return out


PRINCIPAL_JSON = (
    b'"principal":{"id":"user:42","roles":["staff"],"permissions":["orders.refund"],"attrs":{}}'
)


def _principal(plaintext: bytes, principal: bytes) -> bytes:
    assert PRINCIPAL_JSON in plaintext
    return plaintext.replace(PRINCIPAL_JSON, b'"principal":' + principal, 1)


def body_defects(plaintext: bytes) -> list[tuple[str, bytes]]:
    """Job bodies that MUST be refused as malformed (check 12): each breaks one rule of
    the body field table, the rest of the body as the positive vector has it."""
    p = b'"roles":["staff"],"permissions":["orders.refund"]'
    cases = [
        ("body-principal-id-missing", b'{"roles":[],"permissions":[],"attrs":{}}'),
        ("body-principal-id-not-string", b'{"id":42}'),
        ("body-principal-id-null", b'{"id":null}'),
        ("body-principal-id-empty", b'{"id":""}'),
        ("body-principal-id-257-chars", b'{"id":"' + b"a" * 257 + b'"}'),
        ("body-principal-id-control-char", b'{"id":"user:42\\u0000"}'),
        ("body-principal-id-newline", b'{"id":"user:42\\nuser:1"}'),
        ("body-principal-id-del", b'{"id":"user:42\\u007f"}'),
        ("body-principal-id-c1-control", b'{"id":"user:42\\u0085"}'),
        ("body-principal-id-invalid-utf8", b'{"id":"user:\xff42"}'),
        ("body-principal-id-lone-surrogate", b'{"id":"user:\\ud800"}'),
        ("body-principal-roles-null", b'{"id":"user:42","roles":null}'),
        ("body-principal-roles-not-strings", b'{"id":"user:42","roles":[1]}'),
        ("body-principal-permissions-null", b'{"id":"user:42","permissions":null}'),
        ("body-principal-attrs-null", b'{"id":"user:42","attrs":null}'),
        ("body-principal-attrs-float", b'{"id":"user:42","attrs":{"plan":1.5}}'),
        ("body-principal-attrs-integral-float", b'{"id":"user:42","attrs":{"plan":1.0}}'),
        ("body-principal-attrs-exponent", b'{"id":"user:42","attrs":{"plan":1e3}}'),
        ("body-principal-attrs-null-value", b'{"id":"user:42","attrs":{"plan":null}}'),
        ("body-principal-attrs-nested-object", b'{"id":"user:42","attrs":{"plan":{"a":1}}}'),
        ("body-principal-attrs-array", b'{"id":"user:42","attrs":{"plan":["a"]}}'),
        (
            "body-principal-attrs-int-above-2^53-1",
            b'{"id":"user:42","attrs":{"n":9007199254740992}}',
        ),
        (
            "body-principal-attrs-int-below-minus-2^53-1",
            b'{"id":"user:42","attrs":{"n":-9007199254740992}}',
        ),
        ("body-principal-unknown-field", b'{"id":"user:42",' + p + b',"name":"x"}'),
        ("body-principal-not-object", b'"user:42"'),
    ]
    out = [(name, _principal(plaintext, value)) for name, value in cases]
    meta = plaintext[plaintext.index(b',"meta":') :]
    head = plaintext[: plaintext.index(b',"meta":')]
    out += [
        ("body-meta-null", head + b',"meta":null}'),
        ("body-meta-unknown-field", head + b',"meta":{"retries":1}}'),
        ("body-meta-trace-value-not-string", head + b',"meta":{"trace":{"a":1}}}'),
        ("body-meta-parent-id-not-string", head + b',"meta":{"parent_id":7}}'),
        ("body-meta-timeout-string", head + b',"meta":{"timeout":"5"}}'),
        ("body-payload-missing", b"{" + plaintext[plaintext.index(b'"principal"') :]),
        ("body-not-object", b"[" + plaintext[1:-1] + b"]"),
        ("body-trailing-data", plaintext + b"{}"),
    ]
    assert all(body != plaintext for _, body in out) and meta
    return out


def body_accepted(plaintext: bytes) -> list[tuple[str, bytes]]:
    """Job bodies on the accepting side of the same rules."""
    cases = [
        ("body-principal-null", b"null"),
        ("body-principal-id-only", b'{"id":"user:42"}'),
        ("body-principal-id-256-chars", b'{"id":"' + b"a" * 256 + b'"}'),
        # 256 characters, 512 UTF-8 bytes: the limit counts characters (code points).
        ("body-principal-id-256-non-ascii", b'{"id":"' + "é".encode() * 256 + b'"}'),
        ("body-principal-id-space-and-unicode", '{"id":"Zoë Ünal 🙂"}'.encode()),
        (
            "body-principal-attrs-int-at-2^53-1",
            b'{"id":"user:42","attrs":{"n":9007199254740991,"m":-9007199254740991}}',
        ),
        (
            "body-principal-attrs-str-int-bool",
            b'{"id":"user:42","attrs":{"plan":"pro","seats":3,"trial":false}}',
        ),
        ("body-principal-roles-repeated", b'{"id":"user:42","roles":["staff","staff"]}'),
    ]
    out = [(name, _principal(plaintext, value)) for name, value in cases]
    head = plaintext[: plaintext.index(b',"meta":')]
    out += [
        ("body-meta-absent", head + b"}"),
        ("body-meta-nulls", head + b',"meta":{"parent_id":null,"trace":null,"timeout":null}}'),
        ("body-payload-null", b'{"payload":null' + plaintext[plaintext.index(b',"principal"') :]),
        ("body-whitespace-around", b" \n" + plaintext + b" \n"),
    ]
    return out


def accepted(keyring: Keyring, job: bytes) -> list[dict[str, Any]]:
    """Envelopes that MUST open: the time boundaries (equality accepted) and ties."""
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(job[3:])
    plaintext = _aead(keyring, nonce).decrypt(nonce, ciphertext, header)
    items = header_items(header)
    skew = 60_000
    out = []

    def ok(name: str, data: bytes, **open_: Any) -> None:
        out.append({"name": name, "envelope": data.hex(), "open": open_})

    for name, body in body_accepted(plaintext):
        ok(name, frame(reseal(keyring, header, body, nonce)))
    ok("not-before-at-the-skew-boundary", job, now_ms=JOB["not_before_ms"] - skew)
    ok("expires-at-the-skew-boundary", job, now_ms=JOB["expires_at_ms"] + skew)
    # 1700086460000.5 ms rounds (half to even) to ...60000 = expires_at + skew: still runs.
    ok("expires-tie-rounds-to-even", job, now_s=1700086460.0005)
    ok(
        "job-id-custom-form",
        frame(
            reseal(
                keyring,
                mp_array([items[0], msgspec.msgpack.encode("order:7.refund_A-1"), *items[2:]]),
                plaintext,
                nonce,
            )
        ),
        job_id="order:7.refund_A-1",
    )
    ok(
        "time-zero-and-2^53-minus-1",
        frame(
            reseal(
                keyring,
                mp_array(
                    [*items[:5], b"\x00", b"\x00", msgspec.msgpack.encode(2**53 - 1), *items[8:]]
                ),
                plaintext,
                nonce,
            )
        ),
    )
    ok(
        "body-same-key-in-sibling-objects",
        frame(
            reseal(
                keyring,
                header,
                plaintext.replace(b'"meta":{', b'"meta":{"trace":{"parent_id":"x"},', 1),
                nonce,
            )
        ),
    )
    return out


ED25519_L = 2**252 + 27742317777372353535851937790883648493
"""The order of the Ed25519 base point (RFC 8032 §5.1)."""


def ed25519_refusals(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Non-canonical Ed25519 signatures (RFC 8032 §5.1.7: S MUST be < L). S + L and
    S + 2L satisfy the verification equation (it works mod L), so only the S < L check
    refuses them; a verifier that skips it (or checks only the top 3 bits) accepts a
    second signature for the same message. Each vector carries its own keyring: the
    ed25519 positive vector's."""
    doc = keyring_doc("ed25519")
    keyring = Keyring.from_dict(doc)
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(seal(keyring, inputs)[3:])
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    out = []
    for name, forged in (
        ("ed25519-s-plus-l", s + ED25519_L),
        ("ed25519-s-plus-2l", s + 2 * ED25519_L),
        ("ed25519-s-top-bit-set", s | 1 << 255),
    ):
        out.append(
            {
                "name": name,
                "error": "BadSignature",
                "reason": "bad_signature",
                "envelope": frame(
                    [header, nonce, ciphertext, r + forged.to_bytes(32, "little")]
                ).hex(),
                "open": {},
                "keyring": doc,
            }
        )
    return out


def result_vectors(keyring: Keyring, job: bytes) -> dict[str, Any]:
    """Result envelopes for the job: refused by open_result (app, job_id, task, queue of
    the refusal file's 'open'), each with one defect, and accepted ones."""
    header = msgspec.msgpack.decode(job[3:])[0]
    nonce = bytes(range(24)) if job[2] == 2 else bytes(range(12))
    items = header_items(header)
    signer = msgspec.msgpack.encode("s00000001")
    # The result header as a worker writes it (_seal_result): issued_at = not_before = now.
    now = msgspec.msgpack.encode(RESULT["now_ms"])
    base = [*items[:5], now, now, *items[7:]]

    def sealed(
        body: bytes,
        task: str | None = None,
        signer_id: bytes = signer,
        domain: bytes = RESULT_DOMAIN,
        signature: bytes | None = None,
    ) -> bytes:
        task_item = items[3] if task is None else msgspec.msgpack.encode(task)
        hdr = mp_array([*base[:3], task_item, *base[4:9], signer_id])
        ciphertext = _aead(keyring, nonce).encrypt(nonce, body, hdr)
        if signature is None:
            signed = b"".join((domain, hdr, nonce, ciphertext))
            signature = keyring.sign(signed) if signer_id != msgspec.msgpack.encode("") else b""
        return frame([hdr, nonce, ciphertext, signature])

    ok = b'{"status":"succeeded","value":"receipt-7","attempts":1}'
    refused: list[dict[str, Any]] = []

    def no(name: str, reason: str, data: bytes, **open_: Any) -> None:
        refused.append({"name": name, "reason": reason, "envelope": data.hex(), "open": open_})

    no("result-other-task", "wrong_destination", sealed(ok, task="other.task"))
    no("result-other-job-id", "wrong_destination", sealed(ok), job_id="0" * 32)
    no(
        "result-taskless-with-value",
        "wrong_destination",
        sealed(b'{"status":"rejected","value":1}', task=""),
    )
    no("result-taskless-not-rejected", "wrong_destination", sealed(ok, task=""))
    no("result-signed-with-job-domain", "bad_signature", sealed(ok, domain=JOB_DOMAIN))
    no(
        "result-unsigned-with-signature",
        "malformed",
        sealed(ok, signer_id=msgspec.msgpack.encode(""), signature=bytes(32)),
    )
    no(
        "result-untrusted-signer",
        "untrusted_signer",
        sealed(ok, signer_id=msgspec.msgpack.encode("s00000009")),
    )
    for name, body in (
        ("result-duplicate-key", b'{"status":"failed","status":"succeeded","attempts":1}'),
        ("result-attempts-float", b'{"status":"succeeded","attempts":1.0}'),
        ("result-attempts-negative", b'{"status":"succeeded","attempts":-1}'),
        ("result-attempts-above-2^31-1", b'{"status":"succeeded","attempts":2147483648}'),
        ("result-started-at-negative", b'{"status":"succeeded","started_at":-1.5}'),
        ("result-status-missing", b'{"attempts":1}'),
        ("result-unknown-field", b'{"status":"succeeded","extra":1}'),
    ):
        no(name, "malformed", sealed(body))
    accepted = [
        {"name": name, "envelope": data.hex(), "open": {}}
        for name, data in (
            ("result-succeeded", sealed(ok)),
            (
                "result-taskless-rejected",
                sealed(b'{"status":"rejected","error":"payload"}', task=""),
            ),
            (
                "result-aead-only-under-the-active-key",
                sealed(ok, signer_id=msgspec.msgpack.encode("")),
            ),
            ("result-unknown-status", sealed(b'{"status":"paused","attempts":2147483647}')),
        )
    ]
    return {"refused": refused, "accepted": accepted}


def write_refusals() -> None:
    # The positive hmac-sha256 keyring, plus two revoked ids for the revoked_key vectors.
    keyring = Keyring.from_dict({**keyring_doc("hmac-sha256"), "revoked": REVOKED})
    v1, v2 = seal(keyring), seal(keyring, JOB_V2)
    v2_only = [
        {
            "name": "v1-after-migration",
            "error": "UnsupportedVersion",
            "reason": "unsupported_version",
            "envelope": v1.hex(),
            "open": {"accept_v1": False},
        },
        {
            "name": "v2-container-under-v1-tag",
            "error": "UnsupportedVersion",
            "reason": "unsupported_version",
            "envelope": (b"VQ\x01" + v2[3:]).hex(),
            "open": {},
        },
        {
            "name": "v1-container-under-v2-tag",
            "error": "UnsupportedVersion",
            "reason": "unsupported_version",
            "envelope": (b"VQ\x02" + v1[3:]).hex(),
            "open": {},
        },
    ]
    for version, job, extra in (
        (1, v1, ed25519_refusals(JOB)),
        (2, v2, v2_only + ed25519_refusals(JOB_V2)),
    ):
        out = {
            "comment": (
                f"vaultq envelope v{version} refusal vectors; see docs/envelope.md. Open each "
                "envelope with open_job(app, tasks, queue, job_id, now=now_ms/1000, skew=60, "
                "max_size=1048576, accept_v1=True), after applying the vector's 'open' "
                "overrides and with the vector's own 'keyring' where it has one; it must be "
                "refused with 'error' (reason code 'reason'). 'now_s', where given, is the "
                "time in seconds (a double) instead of now_ms: now_ms = round(now_s * 1000) "
                "computed in doubles, ties to even. Each of 'accepted' must open. "
                "'results' holds result envelopes for the same job: open each with "
                "open_result(app, job_id, task=tasks[0], queue) after its 'open' overrides; "
                "'refused' ones must fail with 'reason', 'accepted' ones must open."
            ),
            "keyring": keyring.to_dict(),
            "open": {
                **OPEN,
                "now_ms": OPEN_NOW_MS,
                "skew_s": 60,
                "max_size": 1024 * 1024,
                "accept_v1": True,
            },
            "vectors": refusals(keyring, job) + extra,
            "accepted": accepted(keyring, job),
            "results": result_vectors(keyring, job),
        }
        path = HERE / f"envelope_v{version}_refusals.json"
        path.write_text(json.dumps(out, indent=2) + "\n")


# --- keyrings that must not load --------------------------------------------------------

P25519 = 2**255 - 19
SMALL_ORDER_Y = {
    "identity": 1,
    "order-2": P25519 - 1,
    "order-4": 0,
    "order-8-a": int.from_bytes(
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"
    ),
    "order-8-b": int.from_bytes(
        bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"
    ),
}
IDENTITY = (1).to_bytes(32, "little")


def with_verify_key(raw_text: str) -> dict[str, Any]:
    """The ed25519 vector keyring, verify-only, trusting signer s00000009 with this key."""
    doc = Keyring.from_dict(keyring_doc("ed25519")).public().to_dict()
    doc["verify"]["s00000009"] = {"alg": "ed25519", "key": raw_text}
    return doc


def forged_identity_job() -> bytes:
    """A v2 job naming signer s00000009 with the universal signature R = identity, S = 0:
    OpenSSL verifies it under the identity key whatever the header and ciphertext."""
    sealer = Keyring.from_dict(keyring_doc("hmac-sha256"))
    header, nonce, ciphertext, _ = msgspec.msgpack.decode(seal(sealer, JOB_V2)[3:])
    plaintext = sealer.active_xaes_cipher().decrypt(nonce, ciphertext, header)
    forged = mp_array([*header_items(header)[:9], msgspec.msgpack.encode("s00000009")])
    ciphertext = sealer.active_xaes_cipher().encrypt(nonce, plaintext, forged)
    return frame([forged, nonce, ciphertext, IDENTITY + bytes(32)])


def keyring_refusals() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, problem: str, doc: dict[str, Any], **extra: Any) -> None:
        out.append(
            {"name": name, "error": "KeyringError", "problem": problem, "keyring": doc, **extra}
        )

    for name, y in SMALL_ORDER_Y.items():
        for sign in (0, 1) if y not in (1, P25519 - 1) else (0,):
            raw = (y | sign << 255).to_bytes(32, "little")
            extra = {}
            if name == "identity":
                extra = {
                    "forged_envelope": forged_identity_job().hex(),
                    "comment": (
                        "forged_envelope is signed R = identity, S = 0; a verifier that "
                        "loaded this key would accept it (and any other message)"
                    ),
                }
            label = f"verify-key-small-order-{name}" + ("-neg" if sign else "")
            add(label, "small_order", with_verify_key(b64(raw)), **extra)
    for name, value in (
        ("y-equals-p", P25519),
        ("y-equals-p-plus-1", P25519 + 1),
        ("identity-negative-zero", 1 | 1 << 255),
        ("order-2-negative-zero", P25519 - 1 | 1 << 255),
    ):
        add(
            f"verify-key-{name}",
            "non_canonical_point",
            with_verify_key(b64(value.to_bytes(32, "little"))),
        )
    add("verify-key-off-curve", "off_curve", with_verify_key(b64((2).to_bytes(32, "little"))))
    add("verify-key-31-bytes", "wrong_length", with_verify_key(b64(bytes(range(1, 32)))))

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    def trailing(text: str) -> str:  # the same bytes for a lenient decoder
        return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]

    hmac_doc = keyring_doc("hmac-sha256")
    enc = hmac_doc["encryption"]["keys"]["k00000001"]
    sig = hmac_doc["signing"]["keys"]["s00000001"]["key"]

    def enc_key(text: str) -> dict[str, Any]:
        return {**hmac_doc, "encryption": {"active": "k00000001", "keys": {"k00000001": text}}}

    def sign_key(text: str) -> dict[str, Any]:
        entry = {"alg": "hmac-sha256", "key": text}
        return {**hmac_doc, "signing": {"active": "s00000001", "keys": {"s00000001": entry}}}

    pub = with_verify_key("x")["verify"]["s00000001"]["key"]
    add("encryption-key-trailing-bits", "non_canonical_base64", enc_key(trailing(enc)))
    add("signing-key-trailing-bits", "non_canonical_base64", sign_key(trailing(sig)))
    add("verify-key-trailing-bits", "non_canonical_base64", with_verify_key(trailing(pub)))
    add("encryption-key-double-padding", "non_canonical_base64", enc_key(enc + "=="))
    add("encryption-key-standard-alphabet", "bad_base64", enc_key(enc[:-2] + "+/"))
    add("encryption-key-whitespace", "bad_base64", enc_key(enc[:20] + " " + enc[20:]))
    add("encryption-key-impossible-length", "bad_base64", enc_key(enc + "AA"))
    return out


def write_stream_fields() -> None:
    """The Redis stream fields ``att`` and ``at`` (docs/redis.md): forms a worker delivers
    and forms it dead-letters (``null``: the field is missing)."""
    out = {
        "comment": (
            "Redis stream entry fields att and at (docs/redis.md, Enqueueing from another "
            "language): a worker delivers an entry only when both are present and match; "
            "null means the field is missing"
        ),
        "att": {
            "accepted": ["1", "3", "999999999"],
            "refused": [
                None,
                "",
                "0",
                "-7",
                "+2",
                " 2",
                "2 ",
                "01",
                "1.0",
                "1e3",
                "0x10",
                "nan",
                "inf",
                "1000000000",
                "9" * 40,
                "\u0667",
            ],
        },
        "at": {
            "accepted": ["0", "1700000000", "1700000000.123456", "999999999999.123456789"],
            "refused": [
                None,
                "",
                "-1700000000",
                "1.7e9",
                "0x10",
                "nan",
                "inf",
                "1700000000.",
                ".5",
                "1700000000.1234567891",
                "1" * 13,
                " 1700000000",
                "1700000000,5",
            ],
        },
    }
    text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    (HERE / "redis_stream_fields.json").write_text(text, encoding="utf-8")


def write_keyring_refusals() -> None:
    accepted = keyring_doc("hmac-sha256")
    enc = accepted["encryption"]["keys"]["k00000001"]
    out = {
        "comment": (
            "vaultq keyrings that must not load (docs/keys.md, docs/envelope.md): each "
            "'keyring' must be refused with KeyringError; 'problem' says why. 'accepted' "
            "lists spellings that must load (padded canonical base64url)."
        ),
        "vectors": keyring_refusals(),
        "accepted": [
            {
                "name": "encryption-key-padded",
                "keyring": {
                    **accepted,
                    "encryption": {"active": "k00000001", "keys": {"k00000001": enc + "="}},
                },
            }
        ],
    }
    (HERE / "keyring_refusals.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
