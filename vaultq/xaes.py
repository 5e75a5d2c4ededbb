"""XAES-256-GCM (C2SP, https://c2sp.org/XAES-256-GCM): AES-256-GCM with a 192-bit nonce.

Why: with AES-256-GCM and random 96-bit nonces, one key may seal only about 2^32
messages before the chance of a nonce collision (which breaks confidentiality and lets
an attacker forge tags) is no longer negligible. XAES-256-GCM derives a fresh AES-256 key
for every message from the long-lived key and the first half of a 24-byte random nonce
(a NIST SP 800-108r1 counter KDF with AES-256-CMAC as the PRF), then runs ordinary
AES-256-GCM with the derived key and the nonce's last 12 bytes. Random nonces are then
safe for 2^80 messages per key at a 2^-32 collision risk.

Built only from ``cryptography`` primitives: AES-256 on single blocks (ECB, which is the
bare block cipher here: every input is exactly one or two independent blocks) and
``AESGCM``. Verified against the specification's vectors in ``tests/test_xaes.py``.
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["NONCE_SIZE", "Xaes256Gcm"]

NONCE_SIZE = 24
_BLOCK_MASK = (1 << 128) - 1
_RB = 0x87  # the CMAC subkey constant for 128-bit blocks (NIST SP 800-38B, 5.3)
# The KDF's fixed input for counters 1 and 2: i (16 bits) || label "X" || 0x00 separator;
# the context (nonce[:12]) fills the rest of the block.
_PREFIX_1 = b"\x00\x01X\x00"
_PREFIX_2 = b"\x00\x02X\x00"


class Xaes256Gcm:
    """One 256-bit key. ``encrypt``/``decrypt`` take a 24-byte nonce and raise what
    ``AESGCM`` raises (``cryptography.exceptions.InvalidTag`` for a bad tag).

    The CMAC subkey K1 is computed once per key (steps 1-2 of the specification); each
    message costs two more AES block encryptions and one AES-256-GCM key setup.
    """

    __slots__ = ("_encrypt_blocks", "_head_1", "_head_2", "_k1_low", "_lock")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("XAES-256-GCM needs a 32-byte key")
        # ECB is the bare block cipher here: every input is whole, independent blocks, so
        # one encryptor serves every call (no chaining state; finalize is never needed).
        encryptor = Cipher(algorithms.AES256(key), modes.ECB()).encryptor()  # noqa: S305  # nosec B305
        # L = AES-256_K(0^128); K1 = L << 1, xor Rb when the top bit of L was set.
        big_l = int.from_bytes(encryptor.update(bytes(16)), "big")
        k1 = (big_l << 1) & _BLOCK_MASK
        if big_l >> 127:
            k1 ^= _RB
        k1_bytes = k1.to_bytes(16, "big")
        # M_i xor K1 = (prefix_i xor K1[:4]) || (nonce[:12] xor K1[4:]): the first part is
        # fixed per key, the second is shared by both blocks.
        self._head_1 = bytes(a ^ b for a, b in zip(_PREFIX_1, k1_bytes[:4], strict=True))
        self._head_2 = bytes(a ^ b for a, b in zip(_PREFIX_2, k1_bytes[:4], strict=True))
        self._k1_low = int.from_bytes(k1_bytes[4:], "big")
        self._encrypt_blocks = encryptor.update
        # A cipher context must not be used by two threads at once.
        self._lock = threading.Lock()

    def derive(self, nonce: bytes) -> tuple[AESGCM, bytes]:
        """``(AES-256-GCM under the derived key, the 12-byte GCM nonce)`` for ``nonce``."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError("XAES-256-GCM needs a 24-byte nonce")
        tail = (int.from_bytes(nonce[:12], "big") ^ self._k1_low).to_bytes(12, "big")
        blocks = self._head_1 + tail + self._head_2 + tail
        with self._lock:
            derived = self._encrypt_blocks(blocks)
        return AESGCM(derived), nonce[12:]

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        aead, inner = self.derive(nonce)
        return aead.encrypt(inner, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        aead, inner = self.derive(nonce)
        return aead.decrypt(inner, data, associated_data)

    def __repr__(self) -> str:
        return "Xaes256Gcm(<key redacted>)"
