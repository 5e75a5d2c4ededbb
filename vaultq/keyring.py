"""Keys by id: encryption (AES-256-GCM), signing and verification (hmac-sha256, ed25519).

A keyring is immutable: :meth:`Keyring.rotate` and :meth:`Keyring.public` return new
ones. Key objects (``AESGCM``, ed25519 keys, HMAC closures) are built once at load time so
sealing and opening envelopes does no key setup. The JSON format is documented in
``docs/keys.md``; ``repr``, ``str`` and every error message show key ids only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from vaultq.errors import InsecureKeyFile, KeyringError
from vaultq.payload import split_error

__all__ = ["FORMAT_VERSION", "Keyring", "SigningAlgorithm"]

SigningAlgorithm = Literal["hmac-sha256", "ed25519"]

FORMAT_VERSION = 1
ENV_VAR = "VAULTQ_KEYS"

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_HMAC_SPLIT_TRUST = (
    "this keyring uses hmac-sha256, whose secret both signs and verifies, so a "
    "'verify-only' copy would still be able to sign jobs; split trust needs ed25519 "
    "signing keys: generate a keyring with `vaultq keys generate --signing ed25519`"
)


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alg: SigningAlgorithm
    key: str
    """base64url: the hmac secret, the ed25519 private seed (signing) or public key (verify)."""


class EncryptionSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    active: str
    keys: dict[str, str]


class SigningSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    active: str | None = None
    keys: dict[str, KeyEntry] = {}


class KeyringDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The JSON text format (``docs/keys.md``)."""

    version: int
    encryption: EncryptionSection
    signing: SigningSection = SigningSection()
    verify: dict[str, KeyEntry] = {}


_DOC_DECODER = msgspec.json.Decoder(KeyringDoc)
_DOC_ENCODER = msgspec.json.Encoder()

Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes], bool]


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str, where: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise KeyringError(f"key {where} is not base64url text")
    try:
        return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {where} is not base64url text") from None


def _check_id(kid: str, what: str) -> None:
    if not _KEY_ID.fullmatch(kid):
        raise KeyringError(
            f"{what} key id must be 1-64 characters of A-Z a-z 0-9 _ - (got one that is not)"
        )


def _new_id(prefix: str, taken: Collection[str]) -> str:
    """A short random printable id (``k1a2b3c4d``) not already in ``taken``."""
    while True:
        kid = prefix + secrets.token_hex(4)
        if kid not in taken:
            return kid


def _hmac_signer(secret: bytes) -> Signer:
    def sign(data: bytes) -> bytes:
        return hmac.digest(secret, data, "sha256")

    return sign


def _hmac_verifier(secret: bytes) -> Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, "sha256"), signature)

    return verify


def _ed25519_verifier(public: Ed25519PublicKey) -> Verifier:
    def verify(data: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    return verify


def _ed25519_public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Keyring:
    """Encryption keys by id (one active), signing keys by id (one active), trusted
    verification keys by id. ``repr`` shows ids only, never key material.

    Build one with :meth:`generate`, :meth:`from_env`, :meth:`from_file`,
    :meth:`from_json` or :meth:`from_dict`. Raises ``KeyringError`` for any invalid input.
    """

    __slots__ = (
        "_active",
        "_active_aead",
        "_aeads",
        "_doc",
        "_sign",
        "_signer_alg",
        "_signer_id",
        "_verifiers",
    )

    def __init__(self, doc: KeyringDoc) -> None:
        if doc.version != FORMAT_VERSION:
            raise KeyringError(
                f"keyring format version {doc.version} is not supported "
                f"(this vaultq reads version {FORMAT_VERSION}); upgrade vaultq"
            )
        self._doc = doc
        self._aeads: dict[str, AESGCM] = {}
        for kid, text in doc.encryption.keys.items():
            _check_id(kid, "encryption")
            raw = _b64d(text, f"encryption.keys.{kid}")
            if len(raw) != 32:
                raise KeyringError(f"encryption key {kid} must be 32 bytes (AES-256)")
            self._aeads[kid] = AESGCM(raw)
        if doc.encryption.active not in self._aeads:
            raise KeyringError("encryption.active must name one of encryption.keys")
        self._active = doc.encryption.active
        self._active_aead = self._aeads[self._active]

        self._verifiers: dict[str, tuple[SigningAlgorithm, Verifier]] = {}
        self._sign: Signer | None = None
        self._signer_alg: SigningAlgorithm | None = None
        for kid, entry in doc.signing.keys.items():
            _check_id(kid, "signing")
            signer, verifier = self._load_signing(kid, entry)
            self._verifiers[kid] = (entry.alg, verifier)
            if kid == doc.signing.active:
                self._sign, self._signer_alg = signer, entry.alg
        for kid, entry in doc.verify.items():
            _check_id(kid, "verify")
            if kid in self._verifiers:
                raise KeyringError(f"key id {kid} is listed under both signing and verify")
            self._verifiers[kid] = (entry.alg, self._load_verify(kid, entry))
        if doc.signing.active is not None and self._sign is None:
            raise KeyringError("signing.active must name one of signing.keys")
        self._signer_id = doc.signing.active

    @staticmethod
    def _load_signing(kid: str, entry: KeyEntry) -> tuple[Signer, Verifier]:
        raw = _b64d(entry.key, f"signing.keys.{kid}")
        if entry.alg == "hmac-sha256":
            if len(raw) < 32:
                raise KeyringError(f"hmac-sha256 key {kid} must be at least 32 bytes")
            return _hmac_signer(raw), _hmac_verifier(raw)
        if len(raw) != 32:
            raise KeyringError(f"ed25519 signing key {kid} must be a 32-byte private seed")
        private = Ed25519PrivateKey.from_private_bytes(raw)
        return private.sign, _ed25519_verifier(private.public_key())

    @staticmethod
    def _load_verify(kid: str, entry: KeyEntry) -> Verifier:
        raw = _b64d(entry.key, f"verify.{kid}")
        if entry.alg == "hmac-sha256":
            if len(raw) < 32:
                raise KeyringError(f"hmac-sha256 key {kid} must be at least 32 bytes")
            return _hmac_verifier(raw)
        if len(raw) != 32:
            raise KeyringError(f"ed25519 verify key {kid} must be a 32-byte public key")
        try:
            public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise KeyringError(f"ed25519 verify key {kid} is not a valid public key") from None
        return _ed25519_verifier(public)

    # --- constructors -------------------------------------------------------------

    @classmethod
    def generate(cls, *, signing: SigningAlgorithm = "hmac-sha256") -> Keyring:
        """A new keyring: one AES-256 key and one signing key (``hmac-sha256`` or ``ed25519``)."""
        enc_id = _new_id("k", set())
        sign_id = _new_id("s", set())
        return cls(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=EncryptionSection(active=enc_id, keys={enc_id: _b64e(_random_key())}),
                signing=SigningSection(active=sign_id, keys={sign_id: _new_signing_entry(signing)}),
            )
        )

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> Keyring:
        """Load from the environment variable ``var``: the keyring JSON itself, or
        ``@/path/to/file`` to read a file (with :meth:`from_file`'s permission check)."""
        value = os.environ.get(var)
        if not value:
            raise KeyringError(
                f"environment variable {var} is not set or empty; put a keyring's JSON "
                f"(from `vaultq keys generate`) or @/path/to/keyfile in it"
            )
        if value.startswith("@"):
            return cls.from_file(value[1:])
        try:
            return cls.from_json(value)
        except KeyringError as exc:
            raise KeyringError(f"environment variable {var}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a key file. Refuses (``InsecureKeyFile``) files readable or writable by
        group or others, like ssh does."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise KeyringError(f"cannot open key file {os.fspath(path)}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            # fstat the opened file, not the path, so the file checked is the file read.
            mode = os.fstat(handle.fileno()).st_mode
            if os.name == "posix" and mode & 0o077:
                raise InsecureKeyFile(
                    f"key file {os.fspath(path)} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {os.fspath(path)}`"
                )
            data = handle.read()
        try:
            return cls.from_json(data)
        except KeyringError as exc:
            raise KeyringError(f"key file {os.fspath(path)}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keyring:
        """Load from the parsed JSON structure (e.g. a Django setting)."""
        try:
            doc = msgspec.convert(dict(data), KeyringDoc, strict=True)
        except msgspec.ValidationError as exc:
            raise _doc_error(exc) from None
        return cls(doc)

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Load from the JSON text format written by :meth:`to_json`."""
        try:
            doc = _DOC_DECODER.decode(text)
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8
            raise _doc_error(exc) from None
        return cls(doc)

    # --- export -------------------------------------------------------------------

    def to_json(self) -> str:
        """The keyring as JSON text, key material included: treat it as a secret."""
        return msgspec.json.format(_DOC_ENCODER.encode(self._doc), indent=2).decode() + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The keyring as plain data (what :meth:`from_dict` reads). Contains key material."""
        result: dict[str, Any] = msgspec.to_builtins(self._doc)
        return result

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600 (a temporary file in the same directory,
        fsynced, then renamed over ``path``)."""
        target = Path(path)
        data = self.to_json().encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
        except OSError as exc:
            raise KeyringError(f"cannot write key file {target}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit about intent
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise KeyringError(f"cannot write key file {target}: {exc.strerror}") from None
        _fsync_dir(target.parent)

    # --- derived keyrings ---------------------------------------------------------

    def rotate(self) -> Keyring:
        """A keyring with a new active encryption key and a new active signing key (same
        algorithm). Old keys stay: they still decrypt old jobs and verify old signatures."""
        if self._signer_alg is None:
            raise KeyringError(
                "a verify-only keyring cannot be rotated; rotate the full keyring where "
                "it lives (`vaultq keys rotate FILE`) and export it again with `vaultq keys public`"
            )
        doc = self._doc
        enc_id = _new_id("k", doc.encryption.keys)
        sign_id = _new_id("s", self._verifiers)
        return Keyring(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=EncryptionSection(
                    active=enc_id, keys={**doc.encryption.keys, enc_id: _b64e(_random_key())}
                ),
                signing=SigningSection(
                    active=sign_id,
                    keys={**doc.signing.keys, sign_id: _new_signing_entry(self._signer_alg)},
                ),
                verify=dict(doc.verify),
            )
        )

    def public(self) -> Keyring:
        """The verify-only keyring for split-trust workers: every encryption key and the
        ed25519 public keys, no private signing key. Raises ``KeyringError`` for hmac."""
        doc = self._doc
        if any(e.alg == "hmac-sha256" for e in (*doc.signing.keys.values(), *doc.verify.values())):
            raise KeyringError(_HMAC_SPLIT_TRUST)
        verify = dict(doc.verify)
        for kid, entry in doc.signing.keys.items():
            private = Ed25519PrivateKey.from_private_bytes(_b64d(entry.key, kid))
            verify[kid] = KeyEntry(alg="ed25519", key=_b64e(_ed25519_public_raw(private)))
        return Keyring(KeyringDoc(version=FORMAT_VERSION, encryption=doc.encryption, verify=verify))

    # --- properties ---------------------------------------------------------------

    @property
    def active_key_id(self) -> str:
        """Id of the encryption key new envelopes are sealed with."""
        return self._active

    @property
    def signer_id(self) -> str | None:
        """The active signing key id, or None for a verify-only keyring."""
        return self._signer_id

    @property
    def can_sign(self) -> bool:
        return self._sign is not None

    @property
    def signing_algorithm(self) -> SigningAlgorithm | None:
        """Algorithm of the active signing key, or None for a verify-only keyring."""
        return self._signer_alg

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every encryption key (active and decrypt-only)."""
        return tuple(sorted(self._aeads))

    @property
    def trusted_signers(self) -> tuple[str, ...]:
        """Ids of every key whose signatures this keyring accepts."""
        return tuple(sorted(self._verifiers))

    # --- operations used by the envelope -----------------------------------------

    def cipher(self, key_id: str) -> AESGCM | None:
        """The AES-256-GCM object for ``key_id``, or None if this keyring lacks it."""
        return self._aeads.get(key_id)

    def active_cipher(self) -> AESGCM:
        """The AES-256-GCM object of the active key (new envelopes are sealed with it)."""
        return self._active_aead

    def verifier(self, signer_id: str) -> Verifier | None:
        """``verify(data, signature) -> bool`` for ``signer_id`` with the algorithm this
        keyring records for it, or None when the signer is not trusted."""
        entry = self._verifiers.get(signer_id)
        return None if entry is None else entry[1]

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the active signing key (its id is :attr:`signer_id`)."""
        if self._sign is None:
            raise KeyringError(
                "this keyring is verify-only (made by `vaultq keys public`) and cannot sign; "
                "producers need the full keyring"
            )
        return self._sign(data)

    def trusts(self, signer_id: str) -> bool:
        """Whether signatures by ``signer_id`` are accepted."""
        return signer_id in self._verifiers

    def verify(self, signer_id: str, data: bytes, signature: bytes) -> bool:
        """Check ``signature`` with the algorithm this keyring records for ``signer_id``
        (never one named by the message). False when the signer is unknown."""
        entry = self._verifiers.get(signer_id)
        return entry is not None and entry[1](data, signature)

    def signer_algorithm(self, signer_id: str) -> SigningAlgorithm | None:
        entry = self._verifiers.get(signer_id)
        return None if entry is None else entry[0]

    def __repr__(self) -> str:
        return (
            f"Keyring(active_key_id={self._active!r}, key_ids={list(self.key_ids)!r}, "
            f"signer_id={self._signer_id!r}, signing_algorithm={self._signer_alg!r}, "
            f"trusted_signers={list(self.trusted_signers)!r})"
        )

    __str__ = __repr__


def _random_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _new_signing_entry(alg: SigningAlgorithm) -> KeyEntry:
    if alg == "hmac-sha256":
        return KeyEntry(alg=alg, key=_b64e(secrets.token_bytes(32)))
    if alg == "ed25519":
        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        return KeyEntry(alg=alg, key=_b64e(seed))
    raise KeyringError("signing must be 'hmac-sha256' or 'ed25519'")


def _doc_error(exc: BaseException) -> KeyringError:
    path, problem = split_error(exc)
    return KeyringError(f"invalid keyring at {path}: {problem}")


def _fsync_dir(directory: Path) -> None:
    # Make the rename durable; some filesystems refuse to open directories: best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
