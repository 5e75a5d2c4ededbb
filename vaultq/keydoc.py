"""The keyring's JSON document (``docs/keys.md``): its msgspec types, decoding and
encoding, and the fresh signing entries :class:`vaultq.keyring.Keyring` adds on
generation, rotation and revocation.

Split from ``keyring.py`` along the line between the *text format* (what a key file
says, checked field by field) and the *loaded keyring* (cipher and verifier objects
built from it). Every ``repr`` here shows key ids only, never key material.
"""

from __future__ import annotations

import secrets
from typing import Literal

import msgspec

from vaultq.errors import KeyringError
from vaultq.keymaterial import b64e, new_ed25519_seed
from vaultq.payload_errors import split_error

__all__ = [
    "DOC_DECODER",
    "DOC_ENCODER",
    "FORMAT_VERSION",
    "EncryptionSection",
    "KeyEntry",
    "KeyringDoc",
    "SigningAlgorithm",
    "SigningSection",
    "doc_error",
    "new_signing_entry",
]

SigningAlgorithm = Literal["hmac-sha256", "ed25519"]

FORMAT_VERSION = 1


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alg: SigningAlgorithm
    key: str
    """base64url: the hmac secret, the ed25519 private seed (signing) or public key (verify)."""

    def __repr__(self) -> str:  # the default repr would print the key
        return f"KeyEntry(alg={self.alg!r}, key=<redacted>)"


class EncryptionSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    active: str
    keys: dict[str, str]

    def __repr__(self) -> str:
        return f"EncryptionSection(active={self.active!r}, keys=<{len(self.keys)} redacted>)"


class SigningSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    active: str | None = None
    keys: dict[str, KeyEntry] = {}

    def __repr__(self) -> str:
        return f"SigningSection(active={self.active!r}, keys=<{len(self.keys)} redacted>)"


class KeyringDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The JSON text format (``docs/keys.md``)."""

    version: int
    encryption: EncryptionSection
    signing: SigningSection = SigningSection()
    verify: dict[str, KeyEntry] = {}
    revoked: list[str] = []
    """Ids never trusted again, for encryption, signing or verification, even if a key
    with that id is still listed (``Keyring.revoke``). Omitted from the JSON when empty."""

    def __repr__(self) -> str:
        return (
            f"KeyringDoc(version={self.version!r}, encryption={self.encryption!r}, "
            f"signing={self.signing!r}, verify=<{len(self.verify)} redacted>, "
            f"revoked={self.revoked!r})"
        )


DOC_DECODER = msgspec.json.Decoder(KeyringDoc)
DOC_ENCODER = msgspec.json.Encoder()


def new_signing_entry(alg: SigningAlgorithm) -> KeyEntry:
    if alg == "hmac-sha256":
        return KeyEntry(alg=alg, key=b64e(secrets.token_bytes(32)))
    if alg == "ed25519":
        return KeyEntry(alg=alg, key=b64e(new_ed25519_seed()))
    raise KeyringError("signing must be 'hmac-sha256' or 'ed25519'")


def doc_error(exc: BaseException) -> KeyringError:
    path, problem = split_error(exc)
    return KeyringError(f"invalid keyring at {path}: {problem}")
