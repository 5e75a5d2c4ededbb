"""Envelopes v1 and v2: seal and open jobs and results. Pure functions, no I/O.

Byte layout (``docs/envelope.md`` is the full specification)::

    v2: b"VQ" 0x02 || msgpack [header: bin, nonce: bin(24), ciphertext: bin, signature: bin]
    v1: b"VQ" 0x01 || msgpack [header: bin, nonce: bin(12), ciphertext: bin, signature: bin]

``header`` holds the msgpack encoding of :class:`Header` (an array); those exact bytes are
the AEAD's associated data and are covered by the signature over
``domain || header || nonce || ciphertext`` (domain ``b"vaultq/v1/job\0"`` or
``b"vaultq/v1/result\0"`` in both versions: the header's version field, inside the signed
string, keeps a v1 signature from ever verifying a v2 envelope). The AEAD is
XAES-256-GCM in v2 (a key derived per envelope from a 24-byte random nonce, so one key
seals 2^80 envelopes at a 2^-32 collision risk) and AES-256-GCM in v1 (96-bit random nonce:
keep well under 2^32 envelopes per key). v2 is sealed by default; v1 is read during a
migration window and refused with ``accept_v1=False``. The signing algorithm comes from
the receiver's keyring entry for ``signer_id``, never from the message.

:func:`open_job` checks, in this order, stopping at the first failure: size, version
tag, container and header shape (canonical encoding only), destination (app, queue, job
id), task registered, time window, signer trusted and signature valid, key id known and
decryption, body shape. The replay check and the strict typed payload decode are the
caller's next steps.

A batch-signed job (5th container element: a proof, ``vaultq/batchsig.py``) differs only
in "signature valid": its audit path must lead to a root whose signature is valid.
"""

from __future__ import annotations

import os
from collections.abc import Container

import msgspec
from cryptography.exceptions import InvalidTag

from vaultq import batchsig
from vaultq.envelope_types import (
    JOB_DOMAIN,
    JOB_ID_FORM,
    MAGIC,
    MAGIC_V2,
    MAX_TIME_MS,
    NONCE_SIZE,
    NONCE_SIZE_V2,
    RESULT_DOMAIN,
    VERSION,
    VERSIONS,
    FlowStep,
    Header,
    JobBody,
    JobMeta,
    JobParts,
    OpenedJob,
    ResultBody,
    ResultWire,
    WireContainer,
    new_job_id,
)
from vaultq.errors import (
    BadSignature,
    DecryptionFailed,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    EnvelopeTooLarge,
    InvalidArgument,
    KeyringError,
    MalformedEnvelope,
    RevokedKey,
    UnknownKey,
    UnknownTask,
    UnsupportedVersion,
    UntrustedSigner,
    WrongDestination,
)
from vaultq.keyring import Keyring
from vaultq.principal import Principal, wire_problem
from vaultq.strictjson import has_duplicate_keys

# The format's data lives in vaultq.envelope_types; it is re-exported here, where every
# caller has always imported it from.
__all__ = [
    "JOB_DOMAIN",
    "JOB_ID_FORM",
    "MAGIC",
    "MAGIC_V2",
    "MAX_TIME_MS",
    "NONCE_SIZE",
    "NONCE_SIZE_V2",
    "RESULT_DOMAIN",
    "VERSION",
    "VERSIONS",
    "FlowStep",
    "Header",
    "JobBody",
    "JobMeta",
    "JobParts",
    "OpenedJob",
    "ResultBody",
    "new_job_id",
    "open_job",
    "open_result",
    "peek_header",
    "seal_job",
    "seal_job_parts",
    "seal_result",
    "tag_version",
]

_NONCE_SIZES = {1: NONCE_SIZE, 2: NONCE_SIZE_V2}
_MAGICS = {1: MAGIC, 2: MAGIC_V2}


# Built once: these encoders/decoders hold no per-call state, and building them per call
# would dominate the cost of sealing a small job.
_msgpack_encode = msgspec.msgpack.Encoder().encode
_container_decode = msgspec.msgpack.Decoder(WireContainer).decode
_header_decode = msgspec.msgpack.Decoder(Header).decode
# Deterministic order (sets and dicts sorted) so equal inputs seal to equal plaintexts;
# the test vectors rely on it.
_body_encode = msgspec.json.Encoder(order="deterministic").encode
_job_body_decode = msgspec.json.Decoder(JobBody).decode
_result_body_decode = msgspec.json.Decoder(ResultWire).decode


def seal_job(
    keyring: Keyring,
    *,
    job_id: str,
    app: str,
    task: str,
    queue: str,
    payload: bytes,
    principal: Principal | None,
    meta: JobMeta,
    issued_at: float,
    not_before: float,
    expires_at: float,
    version: int = VERSION,
) -> bytes:
    """Seal a job: ``payload`` is the task codec's JSON; times are seconds since the epoch.
    ``version`` is the envelope format (2, or 1 while workers that read only v1 remain).

    Raises ``KeyringError`` when ``keyring`` is verify-only, ``ValueError`` for what
    ``open_job`` would refuse (a job id outside ``JOB_ID_FORM``, times outside
    ``0..MAX_TIME_MS`` ms, a ``meta.timeout`` that is not > 0, a principal
    ``vaultq.principal.wire_problem`` names).
    """
    parts = seal_job_parts(
        keyring,
        job_id=job_id,
        app=app,
        task=task,
        queue=queue,
        payload=payload,
        principal=principal,
        meta=meta,
        issued_at=issued_at,
        not_before=not_before,
        expires_at=expires_at,
        version=version,
    )
    return _frame(parts, keyring.sign(parts.signed))


def _job_plaintext(payload: bytes, principal: Principal | None, meta: JobMeta) -> bytes:
    if meta.timeout is not None and not meta.timeout > 0:  # NaN included
        raise ValueError("cannot seal this job: meta.timeout must be > 0 seconds")
    problem = None if principal is None else wire_problem(principal)
    if problem is not None:
        raise ValueError(f"cannot seal this job: {problem}")
    return _body_encode(JobBody(msgspec.Raw(payload), principal, meta))


def seal_job_parts(
    keyring: Keyring,
    *,
    job_id: str,
    app: str,
    task: str,
    queue: str,
    payload: bytes,
    principal: Principal | None,
    meta: JobMeta,
    issued_at: float,
    not_before: float,
    expires_at: float,
    version: int = VERSION,
    nonce: bytes | None = None,
) -> JobParts:
    """``seal_job`` but the signature: what ``vaultq.envelope_batch.seal_batch`` signs as
    one batch. Same arguments and errors (``nonce``: for test vectors only, never reused)."""
    header = _job_header(
        keyring, version, job_id, app, task, queue, issued_at, not_before, expires_at
    )
    plaintext = _job_plaintext(payload, principal, meta)
    if nonce is None:
        nonce = os.urandom(_nonce_size(version))
    elif len(nonce) != _nonce_size(version):
        raise InvalidArgument("the nonce does not have this envelope version's size")
    return _encrypt(keyring, header, plaintext, nonce)


def _seal_job(
    keyring: Keyring,
    *,
    job_id: str,
    app: str,
    task: str,
    queue: str,
    payload: bytes,
    principal: Principal | None,
    meta: JobMeta,
    issued_at: float,
    not_before: float,
    expires_at: float,
    nonce: bytes,
) -> bytes:
    """``seal_job`` with an explicit nonce: for test vectors only (never reuse a nonce).
    The nonce's size picks the version (12 bytes: v1, 24 bytes: v2). Unlike ``seal_job``
    it encodes the body unchecked (no ``_job_plaintext``)."""
    version = 2 if len(nonce) == NONCE_SIZE_V2 else 1
    header = _job_header(
        keyring, version, job_id, app, task, queue, issued_at, not_before, expires_at
    )
    plaintext = _body_encode(JobBody(msgspec.Raw(payload), principal, meta))
    return _seal(keyring, JOB_DOMAIN, header, plaintext, nonce)


def _nonce_size(version: int) -> int:
    size = _NONCE_SIZES.get(version)
    if size is None:
        raise InvalidArgument(
            f"envelope version {version!r} is not one vaultq seals: use one of {VERSIONS}"
        )
    return size


def _job_header(
    keyring: Keyring,
    version: int,
    job_id: str,
    app: str,
    task: str,
    queue: str,
    issued_at: float,
    not_before: float,
    expires_at: float,
) -> Header:
    signer_id = keyring.signer_id
    if signer_id is None:
        raise KeyringError(
            "this keyring is verify-only and cannot seal jobs; producers need the full keyring"
        )
    # Header times are integer milliseconds since the epoch.
    header = Header(
        version,
        job_id,
        app,
        task,
        queue,
        round(issued_at * 1000),
        round(not_before * 1000),
        round(expires_at * 1000),
        keyring.active_key_id,
        signer_id,
    )
    # What open_job would refuse is never sealed: the job would wait for a result forever.
    problem = _header_problem(header)
    if problem is not None:
        raise InvalidArgument(f"cannot seal this job: {problem}")
    return header


def _header_problem(header: Header) -> str | None:
    """Why a header's values are out of range (``docs/envelope.md``), or None."""
    if not JOB_ID_FORM.fullmatch(header.job_id):
        return (
            "the job id must be 1-128 letters, digits, '_', '.', ':' or '-', starting "
            "with a letter or digit"
        )
    if not all(
        0 <= t <= MAX_TIME_MS for t in (header.issued_at, header.not_before, header.expires_at)
    ):
        return "header times must be milliseconds since the epoch in 0..2^53-1"
    return None


def _encrypt(keyring: Keyring, header: Header, plaintext: bytes, nonce: bytes) -> JobParts:
    """Every step of sealing but the signature (jobs and results alike): the header's
    bytes, which are also the AEAD's associated data, the nonce and the ciphertext."""
    header_bytes = _msgpack_encode(header)
    aead = keyring.active_xaes_cipher() if header.version == 2 else keyring.active_cipher()
    return JobParts(
        header.version, header_bytes, nonce, aead.encrypt(nonce, plaintext, header_bytes)
    )


def _seal(keyring: Keyring, domain: bytes, header: Header, plaintext: bytes, nonce: bytes) -> bytes:
    """Encrypt, sign over ``domain`` (unless ``header`` names no signer: an AEAD-only
    result) and frame."""
    parts = _encrypt(keyring, header, plaintext, nonce)
    signature = (
        keyring.sign(b"".join((domain, parts.header, nonce, parts.ciphertext)))
        if header.signer_id
        else b""
    )
    return _frame(parts, signature)


def _frame(parts: JobParts, signature: bytes) -> bytes:
    """A single-signature envelope's bytes: version tag, then the four-bin container."""
    return _MAGICS[parts.version] + _msgpack_encode(
        (parts.header, parts.nonce, parts.ciphertext, signature)
    )


def _parse(
    data: bytes, max_size: int, accept_v1: bool = True, *, batch_ok: bool = True
) -> tuple[Header, WireContainer, batchsig.Proof | None]:
    """Size, version tag, container and header shape (a batch proof's included): the
    unauthenticated checks."""
    # Size first: nothing larger than the limit is parsed, let alone decrypted.
    if len(data) > max_size:
        raise EnvelopeTooLarge(
            f"envelope is larger than the {max_size}-byte limit; "
            "raise max_envelope_size if jobs this large are expected"
        )
    if data[:2] != b"VQ" or len(data) < 3:
        raise UnsupportedVersion("not a vaultq envelope: the VQ version tag is missing")
    version = data[2]
    if version not in VERSIONS:
        raise UnsupportedVersion(
            f"envelope format version {version} is not supported (this vaultq reads "
            "versions 1 and 2); upgrade the worker"
        )
    if version == 1 and not accept_v1:
        raise UnsupportedVersion(
            "envelope format version 1 is no longer accepted (accept_envelope_v1=False); "
            "re-enqueue the job from an upgraded producer"
        )
    framed = memoryview(data)[3:]
    try:
        container = _container_decode(framed)
        header = _header_decode(container.header)
    except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8
        raise MalformedEnvelope("envelope container or header is malformed") from None
    # Canonical framing only: msgpack has several encodings of one value (an int as
    # uint64, a short str as str8, bin16 for 12 bytes). Requiring the shortest makes one
    # job exactly one byte string, so nobody can re-frame a sealed envelope into a
    # "different" one that still verifies (the container is outside the signature).
    # The header is re-encoded and compared. The container decoded as exactly four bins
    # with nothing after them, and every other framing of those four values (array16/32,
    # a wider bin length) is strictly longer, so its length alone decides: no copy of a
    # large ciphertext.
    if _msgpack_encode(header) != container.header or len(framed) != _canonical_size(container):
        raise MalformedEnvelope("envelope is not canonically encoded (shortest msgpack forms only)")
    if header.version != version:
        raise UnsupportedVersion("envelope header version does not match its version tag")
    if len(container.nonce) != _NONCE_SIZES[version]:
        raise MalformedEnvelope("envelope nonce must be 12 bytes (v1) or 24 bytes (v2)")
    if _header_problem(header) is not None:
        raise MalformedEnvelope(
            "envelope header has a job id or time outside the allowed forms and ranges"
        )
    if container.proof is None:
        return header, container, None
    if not batch_ok:
        raise MalformedEnvelope("result envelopes are never batch-signed; this one has a proof")
    proof = batchsig.decode_proof(container.proof)
    if proof is None:
        raise MalformedEnvelope("envelope batch proof is malformed (count, index or path)")
    return header, container, proof


def _canonical_size(box: WireContainer) -> int:
    """Bytes of the shortest msgpack encoding of the container: fixarray(4) then each
    bin with its shortest length prefix (bin8 < 256 B, bin16 < 64 KiB, else bin32)."""
    size = 1
    parts = (box.header, box.nonce, box.ciphertext, box.signature)
    for part in parts if box.proof is None else (*parts, box.proof):
        n = len(part)
        size += n + (2 if n < 0x100 else 3 if n < 0x10000 else 5)
    return size


def tag_version(data: bytes) -> int | None:
    """The format version named by an envelope's tag (1 or 2), or None when it has no
    valid tag. Unauthenticated; for an envelope that opened (or passed the structure
    check) it is the header's version, which answers to it must use."""
    version = data[2] if len(data) > 2 and data[:2] == b"VQ" else None
    return version if version in VERSIONS else None


def peek_header(data: bytes, *, max_size: int = 1024 * 1024) -> Header:
    """The header of an envelope WITHOUT authenticating it: for logs and dead letters
    only, never for decisions. Raises the same errors as the first checks of ``open_job``."""
    return _parse(data, max_size)[0]


def _authenticate(
    keyring: Keyring,
    domain: bytes,
    header: Header,
    box: WireContainer,
    *,
    unsigned_ok: bool,
    proof: batchsig.Proof | None = None,
    roots: batchsig.RootCache | None = None,
) -> None:
    signer = header.signer_id
    # A revoked key is refused for everything, whoever signed (docs/keys.md, Revocation).
    if keyring.is_revoked(signer) or keyring.is_revoked(header.key_id):
        raise RevokedKey(
            "envelope names a revoked signing or encryption key; it was refused "
            "(see docs/security.md, incident response)"
        )
    if not signer:
        # Results from verify-only (split-trust) workers carry no signature: the AEAD tag
        # under a key only keyring holders have authenticates them.
        if not unsigned_ok:
            raise UntrustedSigner("job envelopes must be signed; this one names no signer")
        if box.signature:
            raise MalformedEnvelope("an unsigned envelope must have an empty signature")
        # Only under the active key: an old key (rotated because it may have leaked)
        # must not keep authenticating results on its own.
        if header.key_id != keyring.active_key_id:
            raise UntrustedSigner(
                "an unsigned (AEAD-only) result must be sealed under the active encryption "
                "key; this one is not (deploy the rotated keyring to workers)"
            )
        return
    verify = keyring.verifier(signer)
    if verify is None:
        raise UntrustedSigner(
            "envelope signer is not trusted by this keyring; add its verify key if it should be"
        )
    signed = b"".join((domain, box.header, box.nonce, box.ciphertext))
    # Batch-signed: the path from this envelope's leaf must reach a root signed by signer.
    if not (
        verify(signed, box.signature)
        if proof is None
        else batchsig.proof_verifies(signed, proof, signer, box.signature, verify, roots)
    ):
        raise BadSignature("envelope signature is invalid")


def _decrypt(keyring: Keyring, header: Header, box: WireContainer) -> bytes:
    aead = (
        keyring.xaes_cipher(header.key_id) if header.version == 2 else keyring.cipher(header.key_id)
    )
    if aead is None:
        raise UnknownKey(
            "envelope encryption key id is not in this keyring (rotated out?); "
            "keep old keys until their envelopes have expired"
        )
    try:
        return aead.decrypt(box.nonce, box.ciphertext, box.header)
    except InvalidTag:
        raise DecryptionFailed("envelope decryption failed") from None


def open_job(
    data: bytes,
    keyring: Keyring,
    *,
    app: str,
    tasks: Container[str],
    now: float,
    queue: str | None = None,
    job_id: str | None = None,
    skew: float = 60.0,
    max_size: int = 1024 * 1024,
    accept_v1: bool = True,
    roots: batchsig.RootCache | None = None,
) -> OpenedJob:
    """Open a job envelope, raising the ``EnvelopeError`` subclass of the first failed
    check (see the module docstring for the order). ``now`` and ``skew`` are seconds.
    ``accept_v1=False`` refuses format v1 (``UnsupportedVersion``) once migration is over.
    ``roots``: where batch roots already verified in this process are remembered (the
    worker's); without it every batch-signed envelope is verified in full.

    The caller then checks replay and decodes ``body.payload`` with the task's codec.
    """
    header, box, proof = _parse(data, max_size, accept_v1)
    if (
        header.app != app
        or (queue is not None and header.queue != queue)
        or (job_id is not None and header.job_id != job_id)
    ):
        raise WrongDestination("envelope was sealed for another app, queue or job id")
    if header.task not in tasks:
        raise UnknownTask("envelope names a task this worker has not registered")
    now_ms = round(now * 1000)
    # Float on purpose: skew=math.inf (check everything but time) must work, and the
    # checks are written so that a NaN skew fails closed.
    latest = now_ms + skew * 1000.0
    earliest = now_ms - skew * 1000.0
    if not (header.not_before <= latest and header.issued_at <= latest):
        raise EnvelopeNotYetValid("envelope is not valid yet (delayed job, or clocks disagree)")
    if not earliest <= header.expires_at:
        raise EnvelopeExpired("envelope expired before the job could start")
    _authenticate(keyring, JOB_DOMAIN, header, box, unsigned_ok=False, proof=proof, roots=roots)
    plaintext = _decrypt(keyring, header, box)
    try:
        body = _job_body_decode(plaintext)
        # Signed JSON that another reader could parse differently is refused (strictjson).
        duplicated = has_duplicate_keys(plaintext)
    except (msgspec.DecodeError, ValueError, RecursionError):  # invalid UTF-8, nesting
        raise MalformedEnvelope("job body is malformed") from None
    if duplicated:
        raise MalformedEnvelope("job body is malformed: a JSON object repeats a key")
    if body.principal is not None and (problem := wire_problem(body.principal)) is not None:
        raise MalformedEnvelope(f"job body is malformed: {problem}")
    return OpenedJob(header, body)


def seal_result(keyring: Keyring, header: Header, body: ResultBody, *, now: float) -> bytes:
    """Seal a job's result. ``header`` is the opened job's header; the result header keeps
    its version, job id, app, task, queue and expiry and takes its own issue time and keys.
    The result answers in the job's format version: its producer reads that version.

    A verify-only keyring (split trust) seals AEAD-only: signer id ``""``, no signature.
    """
    nonce = os.urandom(_nonce_size(header.version))
    return _seal_result(keyring, header, body, now=now, nonce=nonce)


def _seal_result(
    keyring: Keyring, header: Header, body: ResultBody, *, now: float, nonce: bytes
) -> bytes:
    now_ms = round(now * 1000)
    result_header = Header(
        header.version,
        header.job_id,
        header.app,
        header.task,
        header.queue,
        now_ms,
        now_ms,
        header.expires_at,
        keyring.active_key_id,
        keyring.signer_id or "",
    )
    return _seal(keyring, RESULT_DOMAIN, result_header, _body_encode(body), nonce)


def open_result(
    data: bytes,
    keyring: Keyring,
    *,
    app: str,
    job_id: str,
    task: str | None = None,
    queue: str | None = None,
    max_size: int = 1024 * 1024,
    accept_v1: bool = True,
) -> ResultBody:
    """Open a result envelope for ``job_id``. Accepts a trusted signer with a valid
    signature, or signer id ``""`` (AEAD-only, from a verify-only worker).

    Give ``task`` and ``queue`` (the producer knows both) to bind the result to them: a
    result sealed for another task or queue under the same job id raises
    ``WrongDestination``. A worker's REJECTED record for an envelope that did not open
    names no task (``""``); it is accepted for any ``task`` only as a value-less REJECTED
    outcome. ``accept_v1=False`` refuses format v1 results (``UnsupportedVersion``).
    """
    header, box, _ = _parse(data, max_size, accept_v1, batch_ok=False)
    if (
        header.app != app
        or header.job_id != job_id
        or (queue is not None and header.queue != queue)
        or (task is not None and header.task not in (task, ""))
    ):
        raise WrongDestination("result envelope belongs to another app, job, task or queue")
    _authenticate(keyring, RESULT_DOMAIN, header, box, unsigned_ok=True)
    plaintext = _decrypt(keyring, header, box)
    try:
        wire = _result_body_decode(plaintext)
        duplicated = has_duplicate_keys(plaintext)
    except (msgspec.DecodeError, ValueError, RecursionError):  # invalid UTF-8, nesting
        raise MalformedEnvelope("result body is malformed") from None
    if duplicated:
        raise MalformedEnvelope("result body is malformed: a JSON object repeats a key")
    if task is not None and header.task != task and (wire.status != "rejected" or len(wire.value)):
        raise WrongDestination("result envelope belongs to another app, job, task or queue")
    return ResultBody(
        status=wire.status,
        value=wire.value if len(wire.value) else None,
        error_type=wire.error_type,
        error=wire.error,
        attempts=wire.attempts,
        started_at=wire.started_at,
        finished_at=wire.finished_at,
        worker_id=wire.worker_id,
        principal_id=wire.principal_id,
    )
