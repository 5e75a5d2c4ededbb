"""Key material checks (``vaultq/keymaterial.py``): small-order and non-canonical Ed25519
verify keys, canonical base64url. Each attack is shown to work against the unchecked
primitive (OpenSSL through ``cryptography``, a lenient base64 decoder) and then to be
refused when the keyring is loaded, by every loader."""

from __future__ import annotations

import base64
import copy
import json
import secrets
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import vaultq.keyring
from vaultq.envelope import JOB_DOMAIN, JobMeta, open_job, seal_job
from vaultq.errors import KeyringError
from vaultq.keymaterial import b64d, b64e, ed25519_public_problem
from vaultq.keyring import Keyring

NOW = 1_700_000_000.0

# --- an independent Ed25519 group (affine Edwards coordinates), to derive the small-order
# points from first principles rather than trust the constants in keymaterial.py.
P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P
L = 2**252 + 27742317777372353535851937790883648493
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P,
    )


def mul(k: int, point: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = add(out, point)
        point = add(point, point)
        k >>= 1
    return out


def decode(y: int) -> Point | None:
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    for x in range(2):  # two candidate roots; a non-residue has none
        root = pow(x2, (P + 3) // 8, P) * (pow(2, (P - 1) // 4, P) if x else 1) % P
        if root * root % P == x2:
            return (root, y)
    return None


def encode(point: Point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def small_order_points() -> list[Point]:
    """The 8-torsion: [L]Q for points Q of the full group lands in it; collect all 8."""
    found: set[Point] = set()
    y = 2
    while len(found) < 8:
        y += 1
        q = decode(y)
        if q is not None:
            found.add(mul(L, q))
    assert all(mul(8, t) == IDENTITY for t in found)
    return sorted(found)


SMALL_ORDER = small_order_points()
IDENTITY_KEY = encode(IDENTITY)
FORGED_SIGNATURE = IDENTITY_KEY + bytes(32)  # R = identity, S = 0


def openssl_accepts(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def split_trust_doc(verify_key: bytes) -> dict[str, Any]:
    """A worker's verify-only keyring that trusts signer ``s00000009`` with ``verify_key``."""
    doc = Keyring.generate(signing="ed25519").public().to_dict()
    doc["verify"]["s00000009"] = {"alg": "ed25519", "key": b64e(verify_key)}
    return doc


def forge_job(doc: dict[str, Any], job_id: str) -> bytes:
    """What anyone holding the encryption key (every split-trust worker) can build: a job
    "signed" by s00000009 with the universal R = identity, S = 0 signature."""
    sealer = Keyring.from_dict(
        {**doc, "verify": {}, "signing": {"active": "s00000009", "keys": {"s00000009": {
            "alg": "hmac-sha256", "key": b64e(bytes(32))}}}}
    )  # fmt: skip
    data = seal_job(
        sealer,
        job_id=job_id,
        app="shop",
        task="refund",
        queue="default",
        payload=b'{"amount":1000000}',
        principal=None,
        meta=JobMeta(),
        issued_at=NOW,
        not_before=NOW,
        expires_at=NOW + 60,
    )
    header, nonce, ciphertext, _ = msgspec.msgpack.decode(data[3:])
    return data[:3] + msgspec.msgpack.encode((header, nonce, ciphertext, FORGED_SIGNATURE))


def test_the_small_order_points_are_the_ones_refused() -> None:
    assert len(SMALL_ORDER) == 8 and IDENTITY in SMALL_ORDER
    for point in SMALL_ORDER:
        assert "small order" in (ed25519_public_problem(encode(point)) or "")
    # Real keys, and points of large order, pass.
    for _ in range(32):
        public = Ed25519PrivateKey.generate().public_key()
        assert ed25519_public_problem(public.public_bytes(Encoding.Raw, PublicFormat.Raw)) is None


def test_identity_key_forgery_opens_without_the_check_and_is_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = split_trust_doc(IDENTITY_KEY)
    forged = forge_job(doc, "1" * 32)
    # The attack: OpenSSL accepts R = identity, S = 0 for every message under this key...
    assert openssl_accepts(IDENTITY_KEY, b"any message at all", FORGED_SIGNATURE)
    # ...so a keyring that loaded it would run the forged job (the check switched off).
    with monkeypatch.context() as unchecked:
        unchecked.setattr(vaultq.keyring, "ed25519_public_problem", lambda raw: None)
        opened = open_job(forged, Keyring.from_dict(doc), app="shop", tasks={"refund"}, now=NOW)
        assert opened.header.signer_id == "s00000009"
    # The fix: the keyring refuses the key itself, whichever loader reads it.
    with pytest.raises(KeyringError, match=r"verify key s00000009 is a point of small order"):
        Keyring.from_dict(doc)
    with pytest.raises(KeyringError, match="small order"):
        Keyring.from_json(json.dumps(doc))


@pytest.mark.parametrize("point", SMALL_ORDER, ids=lambda p: encode(p).hex()[:8])
def test_every_small_order_key_allows_forgery_and_is_refused(point: Point) -> None:
    key = encode(point)
    # Of order 1, 2, 4 or 8: the forged signature verifies for 1 message in at most 8.
    assert any(openssl_accepts(key, JOB_DOMAIN + bytes([i]), FORGED_SIGNATURE) for i in range(64))
    with pytest.raises(KeyringError, match="small order"):
        Keyring.from_dict(split_trust_doc(key))


@pytest.mark.parametrize(
    ("raw", "problem", "forges"),
    [
        # y = p and y = p + 1 are non-canonical spellings of y = 0 and the identity.
        (P.to_bytes(32, "little"), "not a canonical point encoding", True),
        ((P + 1).to_bytes(32, "little"), "not a canonical point encoding", True),
        ((1 | 1 << 255).to_bytes(32, "little"), "sign bit", True),  # identity, x = "-0"
        ((P - 1 | 1 << 255).to_bytes(32, "little"), "sign bit", True),
        ((2**255 - 1).to_bytes(32, "little"), "not a canonical point encoding", False),
        ((2).to_bytes(32, "little"), "not a point on the Ed25519 curve", False),
    ],
    ids=["y=p", "y=p+1", "identity-negative-zero", "order2-negative-zero", "y-max", "off-curve"],
)
def test_non_canonical_and_off_curve_keys_are_refused(
    raw: bytes, problem: str, forges: bool
) -> None:
    # Other spellings of small-order points: OpenSSL reads them as those points (y mod p,
    # x = 0 whatever the sign bit), so the forgery verifies for some messages.
    forged = any(openssl_accepts(raw, JOB_DOMAIN + bytes([i]), FORGED_SIGNATURE) for i in range(64))
    assert forged is forges
    with pytest.raises(KeyringError, match=problem):
        Keyring.from_dict(split_trust_doc(raw))


def test_small_order_key_refused_from_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = json.dumps(split_trust_doc(IDENTITY_KEY))
    monkeypatch.setenv("VQ_TEST_KEYS", text)
    with pytest.raises(KeyringError, match="environment variable VQ_TEST_KEYS: .*small order"):
        Keyring.from_env("VQ_TEST_KEYS")
    path = tmp_path / "keys.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(KeyringError, match="key file .*small order"):
        Keyring.from_file(path)


# --- canonical base64url ------------------------------------------------------------


def non_canonical(text: str) -> str:
    """The same bytes for a lenient decoder: a non-zero bit in the unused low bits of the
    last character (32 bytes = 43 characters carrying 258 bits, 2 of them unused)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    assert last & 0b11 == 0  # canonical: the unused bits are zero
    return text[:-1] + alphabet[last | 1]


def spots(doc: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(where, container, key) of every key string in a keyring document."""
    enc = doc["encryption"]["keys"]
    out: list[tuple[str, Any, str]] = [(f"encryption.keys.{k}", enc, k) for k in enc]
    out += [(f"signing.keys.{k}", e, "key") for k, e in doc["signing"]["keys"].items()]
    out += [(f"verify.{k}", e, "key") for k, e in doc["verify"].items()]
    return out


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_base64_with_non_zero_trailing_bits_is_refused_everywhere(alg: Any) -> None:
    full = Keyring.generate(signing=alg)
    docs = [full.to_dict()] + ([full.public().to_dict()] if alg == "ed25519" else [])
    checked = 0
    for base in docs:
        for index in range(len(spots(base))):
            doc = copy.deepcopy(base)
            where, holder, field = spots(doc)[index]
            text = holder[field]
            holder[field] = non_canonical(text)
            # The ambiguity: a lenient decoder reads both spellings as one key.
            assert base64.urlsafe_b64decode(holder[field] + "=") == b64d(text, where)
            with pytest.raises(KeyringError, match=f"key {where} is not canonical base64url"):
                Keyring.from_dict(doc)
            checked += 1
    assert checked == (2 if alg == "hmac-sha256" else 4)  # encryption, signing, verify


def test_base64_padding_must_be_exact() -> None:
    raw = secrets.token_bytes(32)
    text = b64e(raw)
    assert b64d(text, "x") == raw
    assert b64d(text + "=", "x") == raw  # the padded canonical form is accepted too
    for bad in (text + "==", text + "A=", text + "!", text + "==="):
        with pytest.raises(KeyringError):
            b64d(bad, "x")
    assert b64d(b64e(raw[:31]) + "==", "x") == raw[:31]
    with pytest.raises(KeyringError, match="not canonical"):
        b64d(b64e(raw[:31]) + "=", "x")


# --- the keyring refusal vectors -------------------------------------------------------

KEYRING_REFUSALS = Path(__file__).parent / "vectors" / "keyring_refusals.json"
PROBLEMS = {
    "small_order": "is a point of small order",
    "non_canonical_point": "is not a canonical point encoding",
    "off_curve": "is not a point on the Ed25519 curve",
    "wrong_length": "must be a 32-byte public key",
    "non_canonical_base64": "is not canonical base64url",
    "bad_base64": r"is not base64url text|impossible base64url length",
}


def _keyring_vectors() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(KEYRING_REFUSALS.read_text())
    return loaded


@pytest.mark.parametrize("vector", _keyring_vectors()["vectors"], ids=lambda v: str(v["name"]))
def test_keyring_refusal_vectors(vector: dict[str, Any]) -> None:
    assert vector["error"] == "KeyringError"
    with pytest.raises(KeyringError, match=PROBLEMS[vector["problem"]]):
        Keyring.from_dict(vector["keyring"])
    with pytest.raises(KeyringError, match=PROBLEMS[vector["problem"]]):
        Keyring.from_json(json.dumps(vector["keyring"]))


@pytest.mark.parametrize("vector", _keyring_vectors()["accepted"], ids=lambda v: str(v["name"]))
def test_keyring_vectors_accepted_spellings_load(vector: dict[str, Any]) -> None:
    assert Keyring.from_dict(vector["keyring"]).active_key_id == "k00000001"


def test_keyring_vector_forged_envelope_is_what_the_check_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The identity vector's forged envelope verifies under OpenSSL and, with the key
    check switched off, opens as a job from s00000009."""
    vector = next(v for v in _keyring_vectors()["vectors"] if "forged_envelope" in v)
    data = bytes.fromhex(vector["forged_envelope"])
    header, nonce, ciphertext, signature = msgspec.msgpack.decode(data[3:])
    signed = JOB_DOMAIN + header + nonce + ciphertext
    assert openssl_accepts(IDENTITY_KEY, signed, signature)
    monkeypatch.setattr(vaultq.keyring, "ed25519_public_problem", lambda raw: None)
    opened = open_job(data, Keyring.from_dict(vector["keyring"]), app="shop", tasks={"refund"},
                      now=1_700_000_000.0)  # fmt: skip
    assert opened.header.signer_id == "s00000009"
