"""Keys by id: encryption (AES-256-GCM), signing and verification (hmac-sha256, ed25519).

A keyring is immutable: :meth:`Keyring.rotate` and :meth:`Keyring.public` return new
ones. Key objects (``AESGCM``, ed25519 keys, HMAC closures) are built once at load time so
sealing and opening envelopes does no key setup. The JSON format is documented in
``docs/keys.md``; ``repr``, ``str`` and every error message show key ids only.

Key material must not outlive an error either: error reporters (Sentry, Django's debug
page and admin mails) record the local variables of every frame a traceback passes
through. So the loaders do their parsing in helpers that *return* an error message
instead of raising, drop their key-holding locals, and only then raise a fresh
``KeyringError`` (no ``__context__``, no inner frames) from a frame holding no key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultq.errors import InsecureKeyFile, KeyringError
from vaultq.files import untrusted_reason
from vaultq.keydoc import (
    DOC_DECODER,
    DOC_ENCODER,
    FORMAT_VERSION,
    EncryptionSection,
    KeyEntry,
    KeyringDoc,
    SigningAlgorithm,
    SigningSection,
    doc_error,
    new_signing_entry,
)
from vaultq.keyio import create_exclusive, write_atomic
from vaultq.keymaterial import (
    Signer,
    Verifier,
    b64d,
    b64e,
    check_id,
    ed25519_public_problem,
    ed25519_public_raw,
    ed25519_verifier,
    hmac_signer,
    hmac_verifier,
    new_id,
    random_key,
)
from vaultq.strictjson import has_duplicate_keys
from vaultq.xaes import Xaes256Gcm

__all__ = [
    "FORMAT_VERSION",
    "EncryptionSection",
    "KeyEntry",
    "Keyring",
    "KeyringDoc",
    "SigningAlgorithm",
    "SigningSection",
    "load_or_create_file",
]

ENV_VAR = "VAULTQ_KEYS"

_HMAC_VERIFY = (
    "is an hmac-sha256 secret, and whoever holds an hmac secret can sign with it, so it "
    "cannot be a verify-only entry; put it under signing.keys (a non-active signing key "
    "still verifies) or use ed25519 public keys under verify"
)
_HMAC_SPLIT_TRUST = (
    "this keyring uses hmac-sha256, whose secret both signs and verifies, so a "
    "'verify-only' copy would still be able to sign jobs; split trust needs ed25519 "
    "signing keys: generate a keyring with `vaultq keys generate --signing ed25519`"
)

_Arg = TypeVar("_Arg")
_Result = TypeVar("_Result")


class Keyring:
    """Encryption keys by id (one active), signing keys by id (one active), trusted
    verification keys by id, and revoked ids. ``repr`` shows ids only, never key material.

    Build one with :meth:`generate`, :meth:`from_env`, :meth:`from_file`,
    :meth:`from_json` or :meth:`from_dict`. Raises ``KeyringError`` for any invalid input.
    """

    __slots__ = (
        "_active",
        "_active_aead",
        "_active_xaes",
        "_aeads",
        "_doc",
        "_revoked",
        "_sign",
        "_signer_alg",
        "_signer_id",
        "_verifiers",
        "_xaes",
    )

    def __init__(self, doc: KeyringDoc) -> None:
        problem = _attempt(self._setup, doc)
        del doc  # nothing holding key material stays in this frame (module docstring)
        if problem is not None:
            raise KeyringError(problem)

    def _setup(self, doc: KeyringDoc) -> None:
        if doc.version != FORMAT_VERSION:
            raise KeyringError(
                f"keyring format version {doc.version} is not supported "
                f"(this vaultq reads version {FORMAT_VERSION}); upgrade vaultq"
            )
        for kid in doc.revoked:
            check_id(kid, "revoked")
        revoked = frozenset(doc.revoked)
        actives = (("encryption", doc.encryption.active), ("signing", doc.signing.active))
        for what, active in actives:
            if active is not None and active in revoked:
                raise KeyringError(
                    f"{what}.active names revoked key {active}; make another key active "
                    "(`vaultq keys revoke` does so when it revokes an active key)"
                )
        aeads: dict[str, AESGCM] = {}
        xaes: dict[str, Xaes256Gcm] = {}
        for kid, text in doc.encryption.keys.items():
            check_id(kid, "encryption")
            if kid in revoked:
                continue  # listed but revoked: never used, so not even loaded
            raw = b64d(text, f"encryption.keys.{kid}")
            if len(raw) != 32:
                raise KeyringError(f"encryption key {kid} must be 32 bytes (AES-256)")
            aeads[kid] = AESGCM(raw)
            xaes[kid] = Xaes256Gcm(raw)
        if doc.encryption.active not in aeads:
            raise KeyringError("encryption.active must name one of encryption.keys")

        verifiers: dict[str, tuple[SigningAlgorithm, Verifier]] = {}
        sign: Signer | None = None
        signer_alg: SigningAlgorithm | None = None
        for kid, entry in doc.signing.keys.items():
            check_id(kid, "signing")
            if kid in revoked:
                continue
            signer, verifier = self._load_signing(kid, entry)
            verifiers[kid] = (entry.alg, verifier)
            if kid == doc.signing.active:
                sign, signer_alg = signer, entry.alg
        for kid, entry in doc.verify.items():
            check_id(kid, "verify")
            if kid in doc.signing.keys:
                raise KeyringError(f"key id {kid} is listed under both signing and verify")
            if entry.alg == "hmac-sha256":
                raise KeyringError(f"verify.{kid} {_HMAC_VERIFY}")
            if kid in revoked:
                continue
            verifiers[kid] = (entry.alg, self._load_verify(kid, entry))
        if doc.signing.active is not None and sign is None:
            raise KeyringError("signing.active must name one of signing.keys")
        # Assigned only once everything is valid, so a failed load leaves no key material
        # (least of all the document) on the half-built object.
        self._aeads = aeads
        self._xaes = xaes
        self._active = doc.encryption.active
        self._active_aead = aeads[self._active]
        self._active_xaes = xaes[self._active]
        self._verifiers = verifiers
        self._sign, self._signer_alg = sign, signer_alg
        self._signer_id = doc.signing.active
        self._revoked = revoked
        self._doc = doc

    @staticmethod
    def _load_signing(kid: str, entry: KeyEntry) -> tuple[Signer, Verifier]:
        raw = b64d(entry.key, f"signing.keys.{kid}")
        if entry.alg == "hmac-sha256":
            if len(raw) < 32:
                raise KeyringError(f"hmac-sha256 key {kid} must be at least 32 bytes")
            return hmac_signer(raw), hmac_verifier(raw)
        if len(raw) != 32:
            raise KeyringError(f"ed25519 signing key {kid} must be a 32-byte private seed")
        private = Ed25519PrivateKey.from_private_bytes(raw)
        return private.sign, ed25519_verifier(private.public_key())

    @staticmethod
    def _load_verify(kid: str, entry: KeyEntry) -> Verifier:
        raw = b64d(entry.key, f"verify.{kid}")
        # Checked here because OpenSSL checks none of it (keymaterial.py): a small-order
        # key would let anyone sign as this signer.
        problem = ed25519_public_problem(raw)
        if problem is not None:
            raise KeyringError(f"ed25519 verify key {kid} {problem}")
        try:
            public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise KeyringError(f"ed25519 verify key {kid} is not a valid public key") from None
        return ed25519_verifier(public)

    # --- constructors -------------------------------------------------------------

    @classmethod
    def generate(cls, *, signing: SigningAlgorithm = "hmac-sha256") -> Keyring:
        """A new keyring: one AES-256 key and one signing key (``hmac-sha256`` or ``ed25519``)."""
        enc_id = new_id("k", set())
        sign_id = new_id("s", set())
        return cls(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=EncryptionSection(active=enc_id, keys={enc_id: b64e(random_key())}),
                signing=SigningSection(active=sign_id, keys={sign_id: new_signing_entry(signing)}),
            )
        )

    @classmethod
    def from_env(cls, var: str = ENV_VAR) -> Keyring:
        """Load from the environment variable ``var``: the keyring JSON itself, or
        ``@/path/to/file`` to read a file (with :meth:`from_file`'s checks)."""
        value = os.environ.get(var)
        if not value:
            raise KeyringError(
                f"environment variable {var} is not set or empty; put a keyring's JSON "
                f"(from `vaultq keys generate`) or @/path/to/keyfile in it"
            )
        if value.startswith("@"):
            return cls.from_file(value[1:])
        built = _attempt(_from_json, value)
        del value
        if isinstance(built, str):
            raise KeyringError(f"environment variable {var}: {built}")
        return built

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load a key file, refusing (``InsecureKeyFile``) what OpenSSH refuses for a
        private key: a file owned by another user (root excepted), a file group or others
        can access, or one in a directory others can write to (``docs/keys.md``)."""
        name = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise KeyringError(f"cannot open key file {name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            # fstat the opened file, not the path, so the file checked is the file read.
            problem = untrusted_reason(name, os.fstat(handle.fileno()))
            if problem is not None:
                raise InsecureKeyFile(problem)
            built = _attempt(_read_json, handle)
        if isinstance(built, str):
            raise KeyringError(f"key file {name}: {built}")
        return built

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keyring:
        """Load from the parsed JSON structure (e.g. a Django setting)."""
        built = _attempt(_from_dict, data)
        del data
        if isinstance(built, str):
            raise KeyringError(built)
        return built

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Load from the JSON text format written by :meth:`to_json`."""
        built = _attempt(_from_json, text)
        del text
        if isinstance(built, str):
            raise KeyringError(built)
        return built

    # --- export -------------------------------------------------------------------

    def to_json(self) -> str:
        """The keyring as JSON text, key material included: treat it as a secret."""
        return msgspec.json.format(DOC_ENCODER.encode(self.to_dict()), indent=2).decode() + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The keyring as plain data (what :meth:`from_dict` reads). Contains key material."""
        result: dict[str, Any] = msgspec.to_builtins(self._doc)
        if not result["revoked"]:
            # Files without revocations stay readable by vaultq versions before `revoked`;
            # one with revocations is refused by them (unknown field), which fails closed.
            del result["revoked"]
        return result

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600 (a temporary file in the same directory,
        fsynced, then renamed over ``path``)."""
        target = Path(path)
        problem = write_atomic(target, self.to_json().encode())
        if problem is not None:
            raise KeyringError(f"cannot write key file {target}: {problem}")

    # --- derived keyrings ---------------------------------------------------------

    def rotate(self) -> Keyring:
        """A keyring with a new active encryption key and a new active signing key (same
        algorithm). Old keys stay: they still decrypt old jobs and verify old signatures.
        Rotation is not revocation: to stop trusting a stolen key, :meth:`revoke` it."""
        if self._signer_alg is None:
            raise KeyringError(
                "a verify-only keyring cannot be rotated; rotate the full keyring where "
                "it lives (`vaultq keys rotate FILE`) and export it again with `vaultq keys public`"
            )
        doc = self._doc
        enc_id = new_id("k", (*doc.encryption.keys, *doc.revoked))
        sign_id = new_id("s", (*doc.signing.keys, *doc.verify, *doc.revoked))
        return Keyring(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=EncryptionSection(
                    active=enc_id, keys={**doc.encryption.keys, enc_id: b64e(random_key())}
                ),
                signing=SigningSection(
                    active=sign_id,
                    keys={**doc.signing.keys, sign_id: new_signing_entry(self._signer_alg)},
                ),
                verify=dict(doc.verify),
                revoked=list(doc.revoked),
            )
        )

    def revoke(self, key_id: str) -> Keyring:
        """A keyring that never trusts ``key_id`` again, for anything: no decryption
        under it, no signature by it, whatever other copies of the key say.

        The key's material is dropped and its id is recorded under ``revoked`` (so a
        keyring merged from an old copy still refuses it). Revoking the *active*
        encryption or signing key makes a new one active (same algorithm), which needs
        the full keyring: a verify-only one can revoke only keys it does not seal with.
        Revoking an id already revoked changes nothing. Raises ``KeyringError`` for an
        id this keyring has never held.
        """
        check_id(key_id, "revoked")
        doc = self._doc
        if key_id in self._revoked:
            return self
        known = {*doc.encryption.keys, *doc.signing.keys, *doc.verify}
        if key_id not in known:
            raise KeyringError(
                f"key id {key_id} is not in this keyring; its keys are {', '.join(sorted(known))}"
            )
        if key_id == doc.encryption.active and self._signer_alg is None:
            # Raised before any key material is copied into this frame's locals.
            raise KeyringError(
                f"key {key_id} is the active encryption key, which a verify-only keyring "
                "cannot replace; revoke it in the full keyring (`vaultq keys revoke FILE "
                f"{key_id}`) and export it again with `vaultq keys public`"
            )
        revoked = sorted({*doc.revoked, key_id})
        taken = (*known, *revoked)
        enc_keys = {k: v for k, v in doc.encryption.keys.items() if k != key_id}
        enc_active = doc.encryption.active
        sign_keys = {k: v for k, v in doc.signing.keys.items() if k != key_id}
        sign_active = doc.signing.active
        if key_id == enc_active:
            enc_active = new_id("k", taken)
            enc_keys[enc_active] = b64e(random_key())
        if key_id == sign_active and self._signer_alg is not None:
            sign_active = new_id("s", (*taken, enc_active))
            sign_keys[sign_active] = new_signing_entry(self._signer_alg)
        return Keyring(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=EncryptionSection(active=enc_active, keys=enc_keys),
                signing=SigningSection(active=sign_active, keys=sign_keys),
                verify={k: v for k, v in doc.verify.items() if k != key_id},
                revoked=revoked,
            )
        )

    def public(self) -> Keyring:
        """The verify-only keyring for split-trust workers: every encryption key, the
        ed25519 public keys and the revoked ids, no private signing key. Raises
        ``KeyringError`` for hmac."""
        doc = self._doc
        if any(e.alg == "hmac-sha256" for e in (*doc.signing.keys.values(), *doc.verify.values())):
            raise KeyringError(_HMAC_SPLIT_TRUST)
        verify = dict(doc.verify)
        for kid in doc.signing.keys:
            if kid in self._revoked:
                continue
            verify[kid] = KeyEntry(alg="ed25519", key=b64e(self._public_raw(kid)))
        return Keyring(
            KeyringDoc(
                version=FORMAT_VERSION,
                encryption=doc.encryption,
                verify=verify,
                revoked=list(doc.revoked),
            )
        )

    def _public_raw(self, kid: str) -> bytes:
        seed = b64d(self._doc.signing.keys[kid].key, kid)  # valid: checked at load
        return ed25519_public_raw(Ed25519PrivateKey.from_private_bytes(seed))

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

    @property
    def revoked_ids(self) -> tuple[str, ...]:
        """Ids this keyring never trusts again (:meth:`revoke`)."""
        return tuple(sorted(self._revoked))

    def is_revoked(self, key_id: str) -> bool:
        """Whether ``key_id`` (encryption, signing or verify) has been revoked."""
        return key_id in self._revoked

    # --- operations used by the envelope -----------------------------------------

    def cipher(self, key_id: str) -> AESGCM | None:
        """The AES-256-GCM object for ``key_id``, or None if this keyring lacks it or
        has revoked it."""
        return self._aeads.get(key_id)

    def active_cipher(self) -> AESGCM:
        """The AES-256-GCM object of the active key (new envelopes are sealed with it)."""
        return self._active_aead

    def xaes_cipher(self, key_id: str) -> Xaes256Gcm | None:
        """The XAES-256-GCM object for ``key_id`` (envelope v2), or None if this keyring
        lacks it. Same key bytes as :meth:`cipher`; v2 derives a key per envelope."""
        return self._xaes.get(key_id)

    def active_xaes_cipher(self) -> Xaes256Gcm:
        """The XAES-256-GCM object of the active key (new v2 envelopes are sealed with it)."""
        return self._active_xaes

    def verifier(self, signer_id: str) -> Verifier | None:
        """``verify(data, signature) -> bool`` for ``signer_id`` with the algorithm this
        keyring records for it, or None when the signer is not trusted (or revoked)."""
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
            f"trusted_signers={list(self.trusted_signers)!r}, "
            f"revoked={list(self.revoked_ids)!r})"
        )

    __str__ = __repr__


def load_or_create_file(path: Path) -> tuple[Keyring, bool]:
    """The keyring in ``path``, generated there first if the file does not exist yet
    (hmac-sha256). Returns ``(keyring, created)``; ``created`` is True only for the
    process whose file won, when several start at once.

    Missing directories are created 0700 and the file 0600, whatever the umask; the file
    is then loaded with :meth:`Keyring.from_file`'s ownership and mode checks.
    """
    created = False
    if not path.exists():
        # Generated before knowing whether this process wins: the loser's keys are dropped.
        outcome = create_exclusive(path, Keyring.generate().to_json().encode())
        if isinstance(outcome, str):
            raise KeyringError(f"cannot create the key file {path}: {outcome}")
        created = outcome
    return Keyring.from_file(path), created


def _attempt(build: Callable[[_Arg], _Result], arg: _Arg) -> _Result | str:
    """``build(arg)``, or the message of the ``KeyringError`` it raised. The exception,
    its traceback and the frames holding ``arg`` end here (see the module docstring)."""
    try:
        return build(arg)
    except KeyringError as exc:
        return str(exc)


def _from_json(text: str | bytes) -> Keyring:
    try:
        doc = DOC_DECODER.decode(text)
        # A repeated key ("revoked" twice, one id under two keys) would mean one keyring
        # to vaultq (the last wins) and another to a tool that keeps the first.
        duplicated = has_duplicate_keys(text.encode() if isinstance(text, str) else text)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8
        raise doc_error(exc) from None
    if duplicated:
        raise KeyringError(
            "invalid keyring: a JSON object repeats a key; keep one of each (which one "
            "was meant is not for vaultq to guess)"
        )
    return Keyring(doc)


def _read_json(handle: BinaryIO) -> Keyring:
    return _from_json(handle.read())


def _from_dict(data: Mapping[str, Any]) -> Keyring:
    try:
        doc = msgspec.convert(dict(data), KeyringDoc, strict=True)
    except msgspec.ValidationError as exc:
        raise doc_error(exc) from None
    return Keyring(doc)
