"""XAES-256-GCM against the C2SP specification's vectors (https://c2sp.org/XAES-256-GCM)."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultq.xaes import Xaes256Gcm

NONCE = b"ABCDEFGHIJKLMNOPQRSTUVWX"


@pytest.mark.parametrize(
    ("key_byte", "aad", "derived", "ciphertext"),
    [
        (  # MSB(L) = 0
            0x01,
            b"",
            "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b",
            "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
        ),
        (  # MSB(L) = 1: the Rb branch of the CMAC subkey
            0x03,
            b"c2sp.org/XAES-256-GCM",
            "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
            "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
        ),
    ],
)
def test_specification_vectors(key_byte: int, aad: bytes, derived: str, ciphertext: str) -> None:
    xaes = Xaes256Gcm(bytes([key_byte]) * 32)
    aead, inner = xaes.derive(NONCE)
    assert inner == bytes.fromhex("4d4e4f505152535455565758")
    # The derived key, checked through the AEAD it keys: same key => same output.
    probe = AESGCM(bytes.fromhex(derived)).encrypt(inner, b"XAES-256-GCM", aad)
    assert aead.encrypt(inner, b"XAES-256-GCM", aad) == probe
    assert xaes.encrypt(NONCE, b"XAES-256-GCM", aad).hex() == ciphertext
    assert xaes.decrypt(NONCE, bytes.fromhex(ciphertext), aad) == b"XAES-256-GCM"


def test_accumulated_randomized_vector_10000() -> None:
    # The spec's accumulated test: inputs read from one SHAKE-128 stream (empty input),
    # every ciphertext hashed into a second SHAKE-128; 10,000 iterations.
    stream = hashlib.shake_128().digest(10_000 * (32 + 24 + 1 + 255 + 1 + 255))
    assert stream[:16].hex() == "7f9c2ba4e88f827d616045507605853e"
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = stream[pos : pos + n]
        pos += n
        return out

    out = hashlib.shake_128()
    for _ in range(10_000):
        key, nonce = read(32), read(24)
        plaintext = read(read(1)[0])
        aad = read(read(1)[0])
        ciphertext = Xaes256Gcm(key).encrypt(nonce, plaintext, aad)
        out.update(ciphertext)
        assert Xaes256Gcm(key).decrypt(nonce, ciphertext, aad) == plaintext
    assert out.hexdigest(32) == "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"


def test_tampering_and_wrong_nonce_fail_and_sizes_are_checked() -> None:
    xaes = Xaes256Gcm(os.urandom(32))
    nonce = os.urandom(24)
    sealed = xaes.encrypt(nonce, b"secret", b"aad")
    with pytest.raises(InvalidTag):
        xaes.decrypt(nonce, sealed, b"other")
    other = bytes([nonce[0] ^ 1]) + nonce[1:]  # first half: another derived key
    with pytest.raises(InvalidTag):
        xaes.decrypt(other, sealed, b"aad")
    with pytest.raises(ValueError, match="24-byte"):
        xaes.encrypt(nonce[:12], b"x", None)
    with pytest.raises(ValueError, match="32-byte"):
        Xaes256Gcm(bytes(16))
    assert "redacted" in repr(xaes)
