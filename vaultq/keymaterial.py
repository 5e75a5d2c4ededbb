"""Key material: its text form (canonical base64url), its checks, and the signer and
verifier callables built from it once, at keyring load time.

Split from ``keyring.py`` (the ``Keyring`` class and its loaders; the document is in
``keydoc.py``). Every check here raises ``KeyringError`` with a message that names the key's
place in the document (``verify.s1``), never its bytes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Callable, Collection

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from vaultq.errors import KeyringError

__all__ = [
    "Signer",
    "Verifier",
    "b64d",
    "b64e",
    "check_id",
    "ed25519_public_problem",
    "ed25519_public_raw",
    "ed25519_verifier",
    "hmac_signer",
    "hmac_verifier",
    "new_ed25519_seed",
    "new_id",
    "random_key",
]

Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes], bool]

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def b64e(raw: bytes) -> str:
    """Unpadded base64url: the one spelling vaultq writes."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str, where: str) -> bytes:
    """Decode canonical base64url (RFC 4648 §5 and §3.5): unpadded, or padded with exactly
    the ``=`` the length calls for, and zero trailing bits.

    Canonical only, so one key has one spelling: a decoder that ignores the unused low
    bits of the last character reads ``...B`` and ``...A`` as the same key, and a second
    implementation that refuses one of them (or compares key text) disagrees with vaultq
    about which files hold which keys.
    """
    if not _B64URL.fullmatch(text):
        raise KeyringError(f"key {where} is not base64url text (A-Z a-z 0-9 - _ only)")
    bare = text.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {where} has an impossible base64url length") from None
    canonical = b64e(raw)
    if bare != canonical or (bare != text and text != canonical + "=" * (-len(canonical) % 4)):
        raise KeyringError(
            f"key {where} is not canonical base64url (non-zero trailing bits or wrong "
            "padding); write it unpadded, as `vaultq keys generate` does"
        )
    return raw


def check_id(kid: str, what: str) -> None:
    if not _KEY_ID.fullmatch(kid):
        raise KeyringError(
            f"{what} key id must be 1-64 characters of A-Z a-z 0-9 _ - (got one that is not)"
        )


def new_id(prefix: str, taken: Collection[str]) -> str:
    """A short random printable id (``k1a2b3c4d``) not already in ``taken``."""
    while True:
        kid = prefix + secrets.token_hex(4)
        if kid not in taken:
            return kid


def random_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_ed25519_seed() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def hmac_signer(secret: bytes) -> Signer:
    def sign(data: bytes) -> bytes:
        return hmac.digest(secret, data, "sha256")

    return sign


def hmac_verifier(secret: bytes) -> Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, "sha256"), signature)

    return verify


def ed25519_verifier(public: Ed25519PublicKey) -> Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    return verify


def ed25519_public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- Ed25519 public key checks (RFC 8032 §5.1.3 decoding, plus small order) -----------
# OpenSSL (through `cryptography`) checks neither at load nor at verification whether a
# public key is a point of small order, nor whether its encoding is canonical. With the
# identity point as the key, R = identity and S = 0 verify for *every* message
# ([S]B = R + [k]A is 0 = 0 + 0): anyone could sign as that signer. The other small-order
# points allow the same forgery for 1 message in 2, 4 or 8. So a verify key must decode
# (canonically) to a point of the curve and must not be one of the 8 small-order points.

_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
# The y coordinates of the 8 points of order 1, 2, 4 and 8 (each y holds the points ±x):
# 1 (identity), p-1 (order 2), 0 (order 4, x = ±sqrt(-1)), and the two y of order 8
# (the same list libsodium's crypto_core_ed25519_is_valid_point blocks).
_SMALL_ORDER_Y = frozenset(
    {
        0,
        1,
        _P - 1,
        int.from_bytes(
            bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            "little",
        ),
        int.from_bytes(
            bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            "little",
        ),
    }
)


def ed25519_public_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not an acceptable Ed25519 public key, or None when it is: a 32-byte
    canonical encoding (RFC 8032 §5.1.3: y < p, no "negative zero" x) of a point on the
    curve that is not of small order."""
    if len(raw) != 32:
        return "must be a 32-byte public key"
    value = int.from_bytes(raw, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= _P:
        return "is not a canonical point encoding (y >= 2^255-19)"
    # x^2 = (y^2 - 1) / (d y^2 + 1); square root as in RFC 8032 §5.1.3 (p = 5 mod 8).
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return "is not a point on the Ed25519 curve"
    if x == 0 and sign:
        return "is not a canonical point encoding (x = 0 with the sign bit set)"
    if y in _SMALL_ORDER_Y:
        return (
            "is a point of small order, with which forged signatures verify; it is not "
            "a real public key (take the key from `vaultq keys public`)"
        )
    return None
