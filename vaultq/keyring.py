"""Keys by id: encryption (AES-256-GCM), signing and verification (hmac-sha256, ed25519).

STUB: the security-core helper fills this in. The names and signatures below are the
contract other modules code against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["Keyring", "SigningAlgorithm"]

SigningAlgorithm = Literal["hmac-sha256", "ed25519"]


class Keyring:
    """Encryption keys by id (one active), signing keys by id (one active), trusted
    verification keys by id. ``repr`` shows ids only, never key material."""

    @classmethod
    def generate(cls, *, signing: SigningAlgorithm = "hmac-sha256") -> Keyring:
        raise NotImplementedError

    @classmethod
    def from_env(cls, var: str = "VAULTQ_KEYS") -> Keyring:
        raise NotImplementedError

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keyring:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600."""
        raise NotImplementedError

    def rotate(self) -> Keyring:
        raise NotImplementedError

    def public(self) -> Keyring:
        raise NotImplementedError

    @property
    def active_key_id(self) -> str:
        raise NotImplementedError

    @property
    def signer_id(self) -> str | None:
        """The active signing key id, or None for a verify-only keyring."""
        raise NotImplementedError

    @property
    def can_sign(self) -> bool:
        raise NotImplementedError

    @property
    def signing_algorithm(self) -> SigningAlgorithm | None:
        raise NotImplementedError
