"""Envelope v1: round trips, every tampering rejected, check order, test vectors."""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultq import envelope
from vaultq.envelope import (
    JOB_DOMAIN,
    JOB_ID_FORM,
    MAGIC,
    MAGIC_V2,
    RESULT_DOMAIN,
    Header,
    JobMeta,
    ResultBody,
    _seal,
    _seal_job,
    _seal_result,
    new_job_id,
    open_job,
    open_result,
    peek_header,
    seal_job,
    seal_result,
)
from vaultq.errors import (
    BadSignature,
    DecryptionFailed,
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    EnvelopeTooLarge,
    KeyringError,
    MalformedEnvelope,
    UnknownKey,
    UnknownTask,
    UnsupportedVersion,
    UntrustedSigner,
    WrongDestination,
)
from vaultq.keyring import Keyring
from vaultq.payload import Codec, Secret
from vaultq.principal import Principal

NOW = 1_700_000_000.0
HOUR = 3600.0
TASKS = frozenset({"refund", "ship"})
VECTORS = Path(__file__).parent / "vectors" / "envelope_v1.json"

HMAC = Keyring.generate(signing="hmac-sha256")
ED = Keyring.generate(signing="ed25519")


def seal(
    keyring: Keyring = HMAC,
    *,
    payload: bytes = b'{"order_id":7}',
    principal: Principal | None = None,
    app: str = "shop",
    task: str = "refund",
    queue: str = "default",
    job_id: str | None = None,
    issued_at: float = NOW,
    not_before: float | None = None,
    expires_at: float | None = None,
    meta: JobMeta | None = None,
    version: int = 2,
) -> bytes:
    return seal_job(
        keyring,
        job_id=job_id or new_job_id(issued_at),
        app=app,
        task=task,
        queue=queue,
        payload=payload,
        principal=principal,
        meta=meta or JobMeta(),
        issued_at=issued_at,
        not_before=issued_at if not_before is None else not_before,
        expires_at=issued_at + HOUR if expires_at is None else expires_at,
        version=version,
    )


def open_(data: bytes, keyring: Keyring = HMAC, **kw: Any) -> envelope.OpenedJob:
    kw.setdefault("app", "shop")
    kw.setdefault("tasks", TASKS)
    kw.setdefault("now", NOW)
    return open_job(data, keyring, **kw)


def split(data: bytes) -> list[bytes]:
    """[header, nonce, ciphertext, signature] of an envelope."""
    parts: list[bytes] = msgspec.msgpack.decode(data[3:])
    return parts


def join(parts: list[bytes]) -> bytes:
    """The envelope of these parts; the version tag follows the nonce size (24: v2)."""
    magic = MAGIC_V2 if len(parts[1]) == 24 else MAGIC
    return magic + msgspec.msgpack.encode(parts)


def reheader(data: bytes, **changes: Any) -> bytes:
    """The envelope with header fields changed and everything else kept."""
    parts = split(data)
    header = msgspec.msgpack.decode(parts[0], type=Header)
    parts[0] = msgspec.msgpack.encode(msgspec.structs.replace(header, **changes))
    return join(parts)


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_round_trip(keyring: Keyring, version: int) -> None:
    principal = Principal(
        "user:42", roles=frozenset({"staff"}), permissions=frozenset({"orders.refund"})
    )
    meta = JobMeta(parent_id="p" * 32, trace={"traceparent": "00-ab"}, timeout=5.0)
    job_id = new_job_id(NOW)
    data = seal(keyring, principal=principal, meta=meta, job_id=job_id, queue="q1", version=version)
    assert data[:3] == (MAGIC if version == 1 else MAGIC_V2)
    assert len(split(data)[1]) == (12 if version == 1 else 24)
    opened = open_(data, keyring, queue="q1", job_id=job_id)
    h = opened.header
    assert (h.version, h.job_id, h.app, h.task, h.queue) == (
        version,
        job_id,
        "shop",
        "refund",
        "q1",
    )
    assert (h.issued_at, h.not_before, h.expires_at) == (
        1_700_000_000_000,
        1_700_000_000_000,
        1_700_003_600_000,
    )
    assert h.key_id == keyring.active_key_id
    assert h.signer_id == keyring.signer_id
    assert bytes(opened.body.payload) == b'{"order_id":7}'
    assert opened.body.principal == principal
    assert opened.body.meta == meta


def test_seal_is_randomized() -> None:
    job_id = new_job_id(NOW)
    a, b = seal(job_id=job_id), seal(job_id=job_id)
    assert a != b
    assert split(a)[1] != split(b)[1]  # fresh nonce each time


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(msgspec.Struct, forbid_unknown_fields=True):
    city: str
    pin: Secret[int]


class Kind(msgspec.Struct, tag=True):
    n: int


class Everything(msgspec.Struct):
    i: int
    f: float
    s: str
    b: bool
    raw: bytes
    none: None
    when: datetime.datetime
    day: datetime.date
    at: datetime.time
    span: datetime.timedelta
    uid: uuid.UUID
    dec: decimal.Decimal
    color: Color
    level: Level
    lit: Literal["a", "b"]
    items: list[int]
    tags: set[str]
    frozen: frozenset[int]
    pair: tuple[int, str]
    var: tuple[int, ...]
    mapping: dict[str, float]
    int_keys: dict[int, str]
    opt: int | None
    union: int | str
    nested: Address
    nested_list: list[Address]
    tagged: Kind
    secret: Secret[str]
    secret_bytes: Secret[bytes]
    secrets: list[Secret[str]]
    big: int


EVERYTHING = Everything(
    i=-5,
    f=1.5,
    s="héllo",
    b=True,
    raw=b"\x00\xff",
    none=None,
    when=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
    day=datetime.date(2024, 5, 1),
    at=datetime.time(8, 15),
    span=datetime.timedelta(seconds=90),
    uid=uuid.UUID(int=12345),
    dec=decimal.Decimal("12.50"),
    color=Color.BLUE,
    level=Level.HIGH,
    lit="b",
    items=[1, 2, 3],
    tags={"x", "y"},
    frozen=frozenset({4, 5}),
    pair=(1, "one"),
    var=(1, 2, 3),
    mapping={"a": 0.25},
    int_keys={1: "one"},
    opt=None,
    union="text",
    nested=Address("Oslo", Secret(1234)),
    nested_list=[Address("Rome", Secret(1))],
    tagged=Kind(3),
    secret=Secret("tok_live"),
    secret_bytes=Secret(b"\x01\x02"),
    secrets=[Secret("a"), Secret("b")],
    big=2**70,
)


def _types(value: Any) -> Any:
    """A structure of exact types, to compare beyond ``==``."""
    if isinstance(value, msgspec.Struct):
        return (type(value), {f: _types(getattr(value, f)) for f in value.__struct_fields__})
    if isinstance(value, Secret):
        return (Secret, _types(value.reveal()))
    if isinstance(value, list | tuple):
        return (type(value), [_types(v) for v in value])
    if isinstance(value, set | frozenset):
        return (type(value), sorted(map(repr, value)))
    if isinstance(value, dict):
        return (dict, {_types(k): _types(v) for k, v in value.items()})
    return (type(value), value)


@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_every_field_kind_round_trips_through_seal_and_codec(keyring: Keyring) -> None:
    codec: Codec[Everything] = Codec(Everything)
    data = seal(keyring, payload=codec.encode(EVERYTHING))
    back = codec.decode(open_(data, keyring).body.payload)
    assert back == EVERYTHING
    assert _types(back) == _types(EVERYTHING)
    assert back.secret.reveal() == "tok_live"
    assert back.nested.pin.reveal() == 1234


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (None, None),
        (int, 3),
        (str, "x"),
        (list[int], [1, 2]),
        (dict[str, int], {"a": 1}),
        (datetime.datetime, datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)),
        (Color, Color.RED),
        (Secret[str], Secret("s")),
        (Address | None, Address("x", Secret(1))),
    ],
)
def test_non_struct_types_round_trip(tp: Any, value: Any) -> None:
    codec: Codec[Any] = Codec(tp)
    back = codec.decode(open_(seal(payload=codec.encode(value))).body.payload)
    assert back == value
    assert type(back) is type(value)


# --- tampering: every bit, every truncation -------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_every_single_bit_flip_is_rejected(keyring: Keyring, version: int) -> None:
    data = seal(keyring, principal=Principal("u"), version=version)
    for index in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[index // 8] ^= 1 << (index % 8)
        with pytest.raises(EnvelopeError):
            open_(bytes(flipped), keyring)


@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_every_truncation_is_rejected(keyring: Keyring) -> None:
    data = seal(keyring)
    for length in range(len(data)):
        with pytest.raises(EnvelopeError):
            open_(data[:length], keyring)
    with pytest.raises(MalformedEnvelope):
        open_(data + b"\x00", keyring)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(min_size=0, max_size=300).map(lambda b: json.dumps(b.hex()).encode()),
    data=st.data(),
    alg=st.sampled_from(["hmac", "ed25519"]),
)
def test_bit_flips_and_truncations_property(payload: bytes, data: st.DataObject, alg: str) -> None:
    keyring = HMAC if alg == "hmac" else ED
    sealed = seal(keyring, payload=payload)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    flipped = bytearray(sealed)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        open_(bytes(flipped), keyring)
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(EnvelopeError):
        open_(sealed[:cut], keyring)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(["app", "task", "queue", "job_id"]),
    value=st.text(min_size=1, max_size=20),
)
def test_sealed_for_one_destination_never_opens_for_another(field: str, value: str) -> None:
    sealed = seal(app="shop", task="refund", queue="default", job_id="0" * 32)
    original = {"app": "shop", "task": "refund", "queue": "default", "job_id": "0" * 32}
    if value == original[field]:
        value += "x"
    expect: dict[str, Any] = {"app": "shop", "queue": "default", "job_id": "0" * 32}
    expect["tasks"] = TASKS
    if field == "task":
        expect["tasks"] = frozenset({value})
        error: type[EnvelopeError] = UnknownTask
    else:
        expect[field] = value
        error = WrongDestination
    # Opening with other expectations fails ...
    with pytest.raises(error):
        open_(sealed, **expect)
    # ... and so does rewriting the header to match them: the header is signed and is the AAD
    # (a job id outside the documented form is refused before the signature is checked).
    forged = reheader(sealed, **{field: value})
    bad_id = field == "job_id" and not JOB_ID_FORM.fullmatch(value)
    with pytest.raises(MalformedEnvelope if bad_id else BadSignature):
        open_(forged, **expect)


@pytest.mark.parametrize(
    "changes",
    [
        {"expires_at": 1_700_999_999_000},
        {"not_before": 1_699_000_000_000},
        {"key_id": HMAC.active_key_id},  # same value: re-encoding alone must keep it valid
    ],
)
def test_header_changes(changes: dict[str, Any]) -> None:
    sealed = seal()
    rewritten = reheader(sealed, **changes)
    if rewritten == sealed:
        assert open_(rewritten).header.key_id == HMAC.active_key_id
    else:
        with pytest.raises(BadSignature):
            open_(rewritten)


def test_signer_id_swapped_to_another_trusted_signer_fails() -> None:
    rotated = HMAC.rotate()  # trusts both the old and the new signer
    sealed = seal(HMAC)
    forged = reheader(sealed, signer_id=rotated.signer_id)
    with pytest.raises(BadSignature):
        open_(forged, rotated)


@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_swapping_bodies_between_envelopes_fails(keyring: Keyring) -> None:
    a = split(seal(keyring, payload=b'{"a":1}'))
    b = split(seal(keyring, payload=b'{"b":2}'))
    with pytest.raises(BadSignature):
        open_(join([a[0], b[1], b[2], a[3]]), keyring)
    with pytest.raises(BadSignature):
        open_(join([a[0], b[1], b[2], b[3]]), keyring)
    with pytest.raises(BadSignature):
        open_(join([a[0], a[1], b[2], a[3]]), keyring)


def test_signature_by_untrusted_key_fails() -> None:
    doc = HMAC.to_dict()
    # Same encryption key, different signing key under a new id: decryptable, not trusted.
    other = Keyring.generate()
    doc_other = other.to_dict()
    doc_other["encryption"] = doc["encryption"]
    attacker = Keyring.from_dict(doc_other)
    with pytest.raises(UntrustedSigner):
        open_(seal(attacker), HMAC)


def test_signature_by_other_key_under_trusted_id_fails() -> None:
    doc = Keyring.generate().to_dict()
    victim = HMAC.to_dict()
    doc["encryption"] = victim["encryption"]
    sid = HMAC.signer_id
    assert sid is not None
    doc["signing"] = {"active": sid, "keys": {sid: doc["signing"]["keys"].popitem()[1]}}
    impostor = Keyring.from_dict(doc)
    with pytest.raises(BadSignature):
        open_(seal(impostor), HMAC)


def test_ed25519_signature_checked_with_receivers_algorithm() -> None:
    # An hmac "signature" computed with the ed25519 public key as secret must not pass.
    public = ED.public()
    sealed = split(seal(ED))
    pub_key = public.to_dict()["verify"][ED.signer_id]["key"]
    import base64
    import hmac as hmac_mod

    secret = base64.urlsafe_b64decode(pub_key + "=")
    sealed[3] = hmac_mod.digest(secret, JOB_DOMAIN + sealed[0] + sealed[1] + sealed[2], "sha256")
    with pytest.raises(BadSignature):
        open_(join(sealed), public)


def test_rotated_out_key_fails_with_unknown_key() -> None:
    old_job = seal(HMAC)
    rotated = HMAC.rotate()
    assert open_(old_job, rotated).header.key_id == HMAC.active_key_id  # rotation keeps it
    doc = rotated.to_dict()
    del doc["encryption"]["keys"][HMAC.active_key_id]
    pruned = Keyring.from_dict(doc)
    assert pruned.trusts(HMAC.signer_id or "")
    with pytest.raises(UnknownKey):
        open_(old_job, pruned)


def test_wrong_encryption_key_under_known_id_fails_decryption() -> None:
    doc = HMAC.to_dict()
    other = Keyring.generate().to_dict()
    doc["encryption"]["keys"][HMAC.active_key_id] = other["encryption"]["keys"].popitem()[1]
    with pytest.raises(DecryptionFailed):
        open_(seal(HMAC), Keyring.from_dict(doc))


def test_oversized_envelope_refused_before_any_parsing_or_decryption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def spy(name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} called")

        return fail

    monkeypatch.setattr(Keyring, "cipher", spy("cipher"))
    monkeypatch.setattr(Keyring, "verifier", spy("verifier"))
    monkeypatch.setattr(envelope, "_container_decode", spy("container"))
    monkeypatch.setattr(envelope, "_header_decode", spy("header"))
    data = seal(payload=json.dumps("x" * 5000).encode())
    with pytest.raises(EnvelopeTooLarge):
        open_(data, max_size=4096)
    with pytest.raises(EnvelopeTooLarge):
        open_result(data, HMAC, app="shop", job_id="x", max_size=4096)
    assert calls == []


def test_size_limit_is_inclusive() -> None:
    data = seal()
    assert open_(data, max_size=len(data)).header.app == "shop"
    with pytest.raises(EnvelopeTooLarge):
        open_(data, max_size=len(data) - 1)


def test_time_window_with_skew() -> None:
    skew = 60.0
    data = seal(issued_at=NOW, not_before=NOW + 600, expires_at=NOW + 3600)
    with pytest.raises(EnvelopeNotYetValid):
        open_(data, now=NOW)  # delayed job before its time
    with pytest.raises(EnvelopeNotYetValid):
        open_(data, now=NOW + 600 - skew - 0.001)
    assert open_(data, now=NOW + 600 - skew).header.not_before == round((NOW + 600) * 1000)
    assert open_(data, now=NOW + 3600 + skew).header.app == "shop"
    with pytest.raises(EnvelopeExpired):
        open_(data, now=NOW + 3600 + skew + 0.001)
    with pytest.raises(EnvelopeExpired):
        open_(data, now=NOW + 3600 + 10, skew=0)


def test_infinite_skew_skips_time_and_nan_fails_closed() -> None:
    data = seal(issued_at=NOW, not_before=NOW + 600, expires_at=NOW + 3600)
    assert open_(data, now=NOW - 1e6, skew=math.inf).header.app == "shop"
    assert open_(data, now=NOW + 1e6, skew=math.inf).header.app == "shop"
    with pytest.raises(EnvelopeError):
        open_(data, now=NOW + 700, skew=math.nan)


def test_issued_in_the_future_is_not_yet_valid() -> None:
    data = seal(issued_at=NOW + 3600, not_before=NOW, expires_at=NOW + 7200)
    with pytest.raises(EnvelopeNotYetValid):
        open_(data, now=NOW)


@settings(max_examples=50, deadline=None)
@given(offset=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_time_window_property(offset: float) -> None:
    data = seal(issued_at=NOW, not_before=NOW, expires_at=NOW + HOUR)
    now = NOW + offset
    now_ms, skew_ms = round(now * 1000), 60_000
    inside = now_ms + skew_ms >= round(NOW * 1000) and now_ms - skew_ms <= round(
        (NOW + HOUR) * 1000
    )
    if inside:
        assert open_(data, now=now).header.app == "shop"
    else:
        with pytest.raises((EnvelopeExpired, EnvelopeNotYetValid)):
            open_(data, now=now)


MARKERS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=8, max_size=40
)


@settings(max_examples=80, deadline=None)
@given(marker=MARKERS, alg=st.sampled_from(["hmac", "ed25519"]))
def test_plaintext_never_appears_in_sealed_bytes(marker: str, alg: str) -> None:
    keyring = HMAC if alg == "hmac" else ED
    payload = msgspec.json.encode({"note": marker})
    # A principal id may not hold control characters (docs/envelope.md): the marker
    # still travels unchanged in the roles, permissions and attrs.
    ident = "user:" + "".join("?" if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c for c in marker)
    principal = Principal(
        ident,
        roles=frozenset({marker}),
        permissions=frozenset({marker}),
        attrs={"tenant": marker},
    )
    data = seal(keyring, payload=payload, principal=principal)
    for needle in (marker.encode(), json.dumps(marker).encode(), payload):
        assert needle not in data
    opened = open_(data, keyring)
    assert bytes(opened.body.payload) == payload
    assert opened.body.principal == principal


def test_fixed_marker_not_in_sealed_bytes() -> None:
    marker = "PLAINTEXT-MARKER-4242"
    data = seal(
        payload=json.dumps({"card": marker}).encode(), principal=Principal(f"user:{marker}")
    )
    assert marker.encode() not in data
    assert b"user:" not in data


# --- version, container and check order -----------------------------------------------


def test_version_tag() -> None:
    data = seal()
    with pytest.raises(UnsupportedVersion, match="version 3"):
        open_(b"VQ\x03" + data[3:])
    with pytest.raises(UnsupportedVersion, match="not a vaultq envelope"):
        open_(b"XX" + data[2:])
    with pytest.raises(UnsupportedVersion):
        open_(b"")
    with pytest.raises(UnsupportedVersion):
        open_(b"VQ")
    with pytest.raises(UnsupportedVersion):
        open_(reheader(data, version=1))
    with pytest.raises(UnsupportedVersion):
        open_(MAGIC + data[3:])  # a v2 body under the v1 tag
    v1 = seal(version=1)
    with pytest.raises(UnsupportedVersion):
        open_(reheader(v1, version=2))
    with pytest.raises(UnsupportedVersion):
        open_(MAGIC_V2 + v1[3:])


def test_malformed_container_and_header() -> None:
    with pytest.raises(MalformedEnvelope):
        open_(MAGIC + msgspec.msgpack.encode([b"a", b"b", b"c"]))
    with pytest.raises(MalformedEnvelope):
        open_(MAGIC + msgspec.msgpack.encode(["a", b"b", b"c", b"d"]))
    with pytest.raises(MalformedEnvelope):
        open_(MAGIC + msgspec.msgpack.encode([b"\x90", b"b" * 12, b"c", b"d"]))
    for version in (1, 2):
        parts = split(seal(version=version))
        parts[1] = parts[1][:11] if version == 1 else parts[1][:23]
        with pytest.raises(MalformedEnvelope, match="nonce"):
            open_((MAGIC if version == 1 else MAGIC_V2) + msgspec.msgpack.encode(parts))


def test_check_order_stops_at_first_failure() -> None:
    expired_elsewhere = seal(app="other", expires_at=NOW - 10 * HOUR)
    with pytest.raises(WrongDestination):  # destination before time
        open_(expired_elsewhere)
    unknown_and_expired = seal(task="nope", expires_at=NOW - 10 * HOUR)
    with pytest.raises(UnknownTask):  # task before time
        open_(unknown_and_expired)
    expired_bad_sig = reheader(seal(expires_at=NOW - 10 * HOUR), queue="default")
    parts = split(expired_bad_sig)
    parts[3] = bytes(32)
    with pytest.raises(EnvelopeExpired):  # time before signature
        open_(join(parts))
    untrusted = Keyring.generate()
    with pytest.raises(UntrustedSigner):  # signer before key id
        open_(seal(untrusted), HMAC)


def test_unsigned_job_is_refused() -> None:
    header = Header(1, "0" * 32, "shop", "refund", "default", 0, 0, 2**50, HMAC.active_key_id, "")
    data = _seal(HMAC, JOB_DOMAIN, header, b'{"payload":1}', bytes(12))
    with pytest.raises(UntrustedSigner):
        open_(data)


def test_malformed_body_after_authentication() -> None:
    assert HMAC.signer_id is not None
    header = Header(
        1, "0" * 32, "shop", "refund", "default", 0, 0, 2**50, HMAC.active_key_id, HMAC.signer_id
    )
    data = _seal(HMAC, JOB_DOMAIN, header, b'{"payload":1,"extra":2}', bytes(12))
    with pytest.raises(MalformedEnvelope, match="body"):
        open_(data)


def test_verify_only_keyring_cannot_seal_jobs() -> None:
    with pytest.raises(KeyringError, match="verify-only"):
        seal(ED.public())


def test_peek_header_is_unauthenticated_but_shaped() -> None:
    data = seal(job_id="a" * 32)
    assert peek_header(data).job_id == "a" * 32
    with pytest.raises(EnvelopeTooLarge):
        peek_header(data, max_size=10)


def test_error_messages_are_fixed_and_leak_nothing() -> None:
    data = seal(payload=b'{"secret":"hunter2"}', principal=Principal("user:hunter2"))
    parts = split(data)
    parts[2] = bytes(len(parts[2]))
    errors: list[EnvelopeError] = []
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (join(parts), {}),
        (data, {"app": "hunter2app"}),
        (data, {"now": NOW + 10 * HOUR}),
        (seal(Keyring.generate()), {}),
    ]
    for bad, kw in cases:
        with pytest.raises(EnvelopeError) as info:
            open_(bad, **kw)
        errors.append(info.value)
    for exc in errors:
        assert "hunter2" not in str(exc)
        assert exc.__cause__ is None
        assert exc.__suppress_context__ or exc.__context__ is None


# --- job ids -------------------------------------------------------------------------


def test_new_job_id_format_and_order() -> None:
    ids = [new_job_id(NOW + i / 1000) for i in range(50)]
    for job_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert ids == sorted(ids)
    assert int(ids[0][:12], 16) == round(NOW * 1000)
    assert len(set(new_job_id(NOW) for _ in range(1000))) == 1000
    assert re.fullmatch(r"[0-9a-f]{32}", new_job_id())


# --- results -------------------------------------------------------------------------


def _result(value: bytes | None = b'"receipt"') -> ResultBody:
    return ResultBody(
        status="succeeded",
        value=None if value is None else msgspec.Raw(value),
        attempts=2,
        started_at=NOW,
        finished_at=NOW + 1,
        worker_id="w1",
    )


@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_result_round_trip(keyring: Keyring) -> None:
    job = open_(seal(keyring, job_id="b" * 32), keyring)
    data = seal_result(keyring, job.header, _result(), now=NOW + 2)
    body = open_result(data, keyring, app="shop", job_id="b" * 32)
    assert body.status == "succeeded"
    assert body.value is not None
    assert bytes(body.value) == b'"receipt"'
    assert (body.attempts, body.worker_id, body.finished_at) == (2, "w1", NOW + 1)
    header = peek_header(data)
    assert header.issued_at == round((NOW + 2) * 1000)
    assert header.signer_id == keyring.signer_id


def test_result_without_value_and_with_null_value() -> None:
    job = open_(seal(job_id="c" * 32))
    empty = open_result(
        seal_result(HMAC, job.header, _result(None), now=NOW), HMAC, app="shop", job_id="c" * 32
    )
    assert empty.value is None
    null = open_result(
        seal_result(HMAC, job.header, _result(b"null"), now=NOW), HMAC, app="shop", job_id="c" * 32
    )
    assert null.value is not None
    assert bytes(null.value) == b"null"


def test_result_destination_and_domain_separation() -> None:
    job_data = seal(job_id="d" * 32)
    job = open_(job_data)
    data = seal_result(HMAC, job.header, _result(), now=NOW)
    with pytest.raises(WrongDestination):
        open_result(data, HMAC, app="shop", job_id="e" * 32)
    with pytest.raises(WrongDestination):
        open_result(data, HMAC, app="other", job_id="d" * 32)
    # A job envelope is not a result, and a result is not a job (different signed domain).
    with pytest.raises(BadSignature):
        open_result(job_data, HMAC, app="shop", job_id="d" * 32)
    with pytest.raises(BadSignature):
        open_(data)


@pytest.mark.parametrize("keyring", [HMAC, ED], ids=["hmac", "ed25519"])
def test_every_bit_flip_of_a_result_is_rejected(keyring: Keyring) -> None:
    job = open_(seal(keyring, job_id="f" * 32), keyring)
    data = seal_result(keyring, job.header, _result(), now=NOW)
    for index in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[index // 8] ^= 1 << (index % 8)
        with pytest.raises(EnvelopeError):
            open_result(bytes(flipped), keyring, app="shop", job_id="f" * 32)


def test_split_trust_aead_only_results() -> None:
    worker = ED.public()
    job = open_(seal(ED, job_id="1" * 32), worker)  # verify-only worker opens the job
    data = seal_result(worker, job.header, _result(), now=NOW)
    assert peek_header(data).signer_id == ""
    assert split(data)[3] == b""
    assert open_result(data, ED, app="shop", job_id="1" * 32).status == "succeeded"
    # Unsigned, so any bit flip must be caught by the AEAD (or the shape checks).
    for index in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[index // 8] ^= 1 << (index % 8)
        with pytest.raises(EnvelopeError):
            open_result(bytes(flipped), ED, app="shop", job_id="1" * 32)
    # Removing the signature of a signed result does not make it an AEAD-only one.
    signed = split(seal_result(ED, job.header, _result(), now=NOW))
    stripped = reheader(join([signed[0], signed[1], signed[2], b""]), signer_id="")
    with pytest.raises(DecryptionFailed):
        open_result(stripped, ED, app="shop", job_id="1" * 32)
    # An unsigned result must not carry a signature.
    parts = split(data)
    parts[3] = b"x"
    with pytest.raises(MalformedEnvelope):
        open_result(join(parts), ED, app="shop", job_id="1" * 32)


def test_result_from_untrusted_signer_fails() -> None:
    job = open_(seal(job_id="2" * 32))
    doc = Keyring.generate().to_dict()
    doc["encryption"] = HMAC.to_dict()["encryption"]
    other = Keyring.from_dict(doc)
    data = seal_result(other, job.header, _result(), now=NOW)
    with pytest.raises(UntrustedSigner):
        open_result(data, HMAC, app="shop", job_id="2" * 32)


# --- test vectors ----------------------------------------------------------------------


def _vectors(path: Path = VECTORS) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(path.read_text())["vectors"]
    return loaded


VECTORS_V2 = VECTORS.with_name("envelope_v2.json")
ALL_VECTORS = [pytest.param(v, id=f"v1-{v['name']}") for v in _vectors()] + [
    pytest.param(v, id=f"v2-{v['name']}") for v in _vectors(VECTORS_V2)
]


def test_vector_domains() -> None:
    for path in (VECTORS, VECTORS_V2):  # v2 signs with the same domain strings
        domains = json.loads(path.read_text())["domains_hex"]
        assert bytes.fromhex(domains["job"]) == JOB_DOMAIN == b"vaultq/v1/job\x00"
        assert bytes.fromhex(domains["result"]) == RESULT_DOMAIN == b"vaultq/v1/result\x00"


@pytest.mark.parametrize("vector", ALL_VECTORS)
def test_vectors(vector: dict[str, Any]) -> None:
    keyring = Keyring.from_dict(vector["keyring"])
    job = vector["job"]
    expected = bytes.fromhex(vector["envelope"])
    parts = vector["envelope_parts"]
    assert split(expected)[0].hex() == parts["header"]
    assert split(expected)[2].hex() == parts["ciphertext"]
    assert split(expected)[3].hex() == parts["signature"]
    if keyring.can_sign:
        p = job["principal"]
        sealed = _seal_job(
            keyring,
            job_id=job["job_id"],
            app=job["app"],
            task=job["task"],
            queue=job["queue"],
            payload=job["payload"].encode(),
            principal=Principal(p["id"], roles=p["roles"], permissions=p["permissions"]),
            meta=JobMeta(**job["meta"]),
            issued_at=job["issued_at_ms"] / 1000,
            not_before=job["not_before_ms"] / 1000,
            expires_at=job["expires_at_ms"] / 1000,
            nonce=bytes.fromhex(job["nonce"]),
        )
        assert sealed.hex() == vector["envelope"]
    opened = open_job(
        expected, keyring, app=job["app"], tasks={job["task"]}, now=job["issued_at_ms"] / 1000
    )
    version = 2 if len(job["nonce"]) == 48 else 1
    assert expected[:3] == (MAGIC_V2 if version == 2 else MAGIC)
    assert opened.header == Header(
        version,
        job["job_id"],
        job["app"],
        job["task"],
        job["queue"],
        job["issued_at_ms"],
        job["not_before_ms"],
        job["expires_at_ms"],
        "k00000001",
        "s00000001",
    )
    assert bytes(opened.body.payload).decode() == job["payload"]
    assert msgspec.json.encode(opened.body).decode() == parts["plaintext"]

    result = vector["result"]
    sealed_result = _seal_result(
        keyring,
        opened.header,
        ResultBody(
            status=result["body"]["status"],
            value=msgspec.Raw(result["body"]["value"].encode()),
            attempts=result["body"]["attempts"],
        ),
        now=result["now_ms"] / 1000,
        nonce=bytes.fromhex(result["nonce"]),
    )
    assert sealed_result.hex() == vector["result_envelope"]
    body = open_result(sealed_result, keyring, app=job["app"], job_id=job["job_id"])
    assert body.status == result["body"]["status"]
    assert body.value is not None
    assert bytes(body.value).decode() == result["body"]["value"]
    assert split(sealed_result)[3].hex() == vector["result_parts"]["signature"]


# --- strict, canonical framing (refusal vectors) -----------------------------------------

REFUSALS = Path(__file__).parent / "vectors" / "envelope_v1_refusals.json"
REFUSALS_V2 = REFUSALS.with_name("envelope_v2_refusals.json")


def _refusals(path: Path = REFUSALS) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


ALL_REFUSALS = [
    pytest.param(path, v, id=f"{path.stem.split('_')[1]}-{v['name']}")
    for path in (REFUSALS, REFUSALS_V2)
    for v in _refusals(path)["vectors"]
]


@pytest.mark.parametrize(("path", "vector"), ALL_REFUSALS)
def test_refusal_vectors(path: Path, vector: dict[str, Any]) -> None:
    doc = _refusals(path)
    params = {**doc["open"], **vector["open"]}
    with pytest.raises(EnvelopeError) as info:
        open_job(
            bytes.fromhex(vector["envelope"]),
            Keyring.from_dict(vector.get("keyring", doc["keyring"])),
            app=params["app"],
            tasks=frozenset(params["tasks"]),
            queue=params["queue"],
            job_id=params["job_id"],
            now=_vector_now(params),
            skew=params["skew_s"],
            max_size=params["max_size"],
            accept_v1=params["accept_v1"],
        )
    assert type(info.value).__name__ == vector["error"]
    assert info.value.reason == vector["reason"]


def _vector_now(params: dict[str, Any]) -> float:
    # now_s pins how a float time rounds to milliseconds (ties to even); now_ms is exact.
    return float(params["now_s"]) if "now_s" in params else params["now_ms"] / 1000


ALL_ACCEPTED = [
    pytest.param(path, v, id=f"{path.stem.split('_')[1]}-{v['name']}")
    for path in (REFUSALS, REFUSALS_V2)
    for v in _refusals(path)["accepted"]
]


@pytest.mark.parametrize(("path", "vector"), ALL_ACCEPTED)
def test_accepted_vectors_open(path: Path, vector: dict[str, Any]) -> None:
    """The other side of each boundary the refusal vectors pin: these MUST open."""
    doc = _refusals(path)
    params = {**doc["open"], **vector["open"]}
    opened = open_job(
        bytes.fromhex(vector["envelope"]),
        Keyring.from_dict(doc["keyring"]),
        app=params["app"],
        tasks=frozenset(params["tasks"]),
        queue=params["queue"],
        job_id=params["job_id"],
        now=_vector_now(params),
        skew=params["skew_s"],
    )
    assert opened.header.job_id == params["job_id"]


@pytest.mark.parametrize("path", [VECTORS, VECTORS_V2], ids=["v1", "v2"])
def test_time_rounding_vectors(path: Path) -> None:
    # Header times: ms = round(seconds * 1000) in doubles, ties to even, as the vectors say.
    for case in json.loads(path.read_text())["time_rounding"]:
        sealed = seal(issued_at=case["seconds"], not_before=case["seconds"])
        assert peek_header(sealed).issued_at == case["ms"]
        assert peek_header(sealed).not_before == case["ms"]


def test_time_rounding_ties_go_to_even() -> None:
    # The vectors' tie times really are ties in doubles, and round half to even.
    assert 1700086460.0005 * 1000 == 1700086460000.5
    assert round(1700086460.0005 * 1000) == 1700086460000
    assert 1699999940.0005 * 1000 == 1699999940000.5
    assert round(1699999940.0005 * 1000) == 1699999940000


@pytest.mark.parametrize("path", [REFUSALS, REFUSALS_V2], ids=["v1", "v2"])
def test_refusal_vectors_cover_every_reason(path: Path) -> None:
    reasons = {v["reason"] for v in _refusals(path)["vectors"]}
    # Every refusal open_job itself decides (replay is the caller's check). Listed, not
    # derived from the error classes, so a new reason is added here with its vector.
    assert reasons >= {
        "too_large",
        "unsupported_version",
        "malformed",
        "wrong_destination",
        "unknown_task",
        "not_yet_valid",
        "expired",
        "untrusted_signer",
        "bad_signature",
        "unknown_key",
        "decryption_failed",
        "revoked_key",
    }
    assert reasons <= {cls.reason for cls in EnvelopeError.__subclasses__()}


@pytest.mark.parametrize(
    ("path", "positive"), [(REFUSALS, VECTORS), (REFUSALS_V2, VECTORS_V2)], ids=["v1", "v2"]
)
def test_refusal_vectors_base_envelope_opens(path: Path, positive: Path) -> None:
    # The vectors are the positive job vector with one defect each: without it, it opens.
    doc = _refusals(path)
    base = next(v for v in _vectors(positive) if v["name"] == "job-hmac-sha256")
    # The same keys as the positive vector; the refusal keyring only adds revoked ids.
    assert {**base["keyring"], "revoked": doc["keyring"]["revoked"]} == doc["keyring"]
    params = doc["open"]
    opened = open_job(
        bytes.fromhex(base["envelope"]),
        Keyring.from_dict(doc["keyring"]),
        app=params["app"],
        tasks=frozenset(params["tasks"]),
        queue=params["queue"],
        job_id=params["job_id"],
        now=params["now_ms"] / 1000,
    )
    assert opened.header.job_id == params["job_id"]


ED25519_L = 2**252 + 27742317777372353535851937790883648493
NON_CANONICAL_ED25519 = [
    pytest.param(path, v, id=f"{path.stem.split('_')[1]}-{v['name']}")
    for path in (REFUSALS, REFUSALS_V2)
    for v in _refusals(path)["vectors"]
    if v["name"].startswith("ed25519-")
]


@pytest.mark.parametrize(("path", "vector"), NON_CANONICAL_ED25519)
def test_non_canonical_ed25519_vectors_differ_only_in_s(path: Path, vector: dict[str, Any]) -> None:
    """RFC 8032 strict S < L: each vector's S is a valid S plus a multiple of L (or with
    bit 255 set). Reduced to its canonical value, the same envelope opens, so the
    non-canonical S is the only reason it is refused (the verification equation itself,
    computed mod L, holds for S + L)."""
    params = _refusals(path)["open"]
    data = bytearray.fromhex(vector["envelope"])
    s = int.from_bytes(data[-32:], "little")
    assert s >= ED25519_L
    data[-32:] = ((s & ((1 << 255) - 1)) % ED25519_L).to_bytes(32, "little")
    opened = open_job(
        bytes(data),
        Keyring.from_dict(vector["keyring"]),
        app=params["app"],
        tasks=frozenset(params["tasks"]),
        queue=params["queue"],
        job_id=params["job_id"],
        now=params["now_ms"] / 1000,
    )
    assert opened.header.signer_id == "s00000001"


def _bin16(raw: bytes) -> bytes:
    return b"\xc5" + len(raw).to_bytes(2, "big") + raw


def test_attack_extra_container_element_is_refused() -> None:
    # A broker writer appends an element: no key needed, the signature is untouched. A
    # fifth element is read as a batch proof (docs/envelope.md), which this is not; a
    # sixth is never allowed.
    sealed = seal()
    parts = split(sealed)
    for extra in ([b"smuggled"], [b"\x00" * 8, b"smuggled"]):
        smuggled = sealed[:3] + msgspec.msgpack.encode([*parts, *extra])
        with pytest.raises(MalformedEnvelope):
            open_(smuggled)
        with pytest.raises(MalformedEnvelope):
            peek_header(smuggled)


def test_attack_extra_header_element_is_refused_even_when_signed() -> None:
    # Even the holder of the signing key cannot make a header with more than 10 elements.
    header = msgspec.msgpack.decode(split(seal())[0])
    header_bytes = msgspec.msgpack.encode([*header, "smuggled"])
    nonce = bytes(12)
    ciphertext = HMAC.active_cipher().encrypt(nonce, b'{"payload":1}', header_bytes)
    signature = HMAC.sign(b"".join((JOB_DOMAIN, header_bytes, nonce, ciphertext)))
    with pytest.raises(MalformedEnvelope):
        open_(join([header_bytes, nonce, ciphertext, signature]))


def test_attack_reframed_container_is_refused() -> None:
    # Same four values, non-shortest msgpack framing: one job must have one byte string.
    data = seal()
    header, nonce, ciphertext, signature = split(data)
    variants = [
        MAGIC
        + b"\x94"
        + _bin16(header)
        + _bin16(nonce)
        + msgspec.msgpack.encode(ciphertext)
        + msgspec.msgpack.encode(signature),
        MAGIC + b"\xdc\x00\x04" + data[4:],
        MAGIC
        + b"\x94"
        + msgspec.msgpack.encode(header)
        + msgspec.msgpack.encode(nonce)
        + msgspec.msgpack.encode(ciphertext)
        + b"\xc6"
        + (32).to_bytes(4, "big")
        + signature,
    ]
    for variant in variants:
        assert variant != data
        with pytest.raises(MalformedEnvelope, match="canonical"):
            open_(variant)
    assert open_(data).header.app == "shop"


def test_attack_non_shortest_header_ints_and_strs_are_refused_even_when_signed() -> None:
    values = msgspec.msgpack.decode(split(seal(version=1))[0])
    items = [msgspec.msgpack.encode(v) for v in values]
    cases = [
        [b"\xcc\x01", *items[1:]],  # version 1 as uint8
        [*items[:2], b"\xd9\x04shop", *items[3:]],  # "shop" as str8
        [*items[:5], b"\xd3" + items[5][1:], *items[6:]],  # uint64 time as int64
    ]
    for case in cases:
        header_bytes = b"\x9a" + b"".join(case)
        assert msgspec.msgpack.decode(header_bytes) == values  # same values, other bytes
        nonce = bytes(12)
        ciphertext = HMAC.active_cipher().encrypt(nonce, b'{"payload":1}', header_bytes)
        signature = HMAC.sign(b"".join((JOB_DOMAIN, header_bytes, nonce, ciphertext)))
        with pytest.raises(MalformedEnvelope, match="canonical"):
            open_(join([header_bytes, nonce, ciphertext, signature]))


# --- results bound to task, queue and principal ------------------------------------------


def test_result_is_bound_to_task_and_queue() -> None:
    job = open_(seal(job_id="3" * 32, task="ship", queue="q2"))
    data = seal_result(HMAC, job.header, _result(), now=NOW)
    assert open_result(data, HMAC, app="shop", job_id="3" * 32, task="ship", queue="q2")
    # Squatting: a result sealed for task "ship" is not task "refund"'s, nor another queue's.
    with pytest.raises(WrongDestination):
        open_result(data, HMAC, app="shop", job_id="3" * 32, task="refund", queue="q2")
    with pytest.raises(WrongDestination):
        open_result(data, HMAC, app="shop", job_id="3" * 32, task="ship", queue="default")


def test_rejected_record_without_task_opens_only_as_a_valueless_rejection() -> None:
    # The worker's REJECTED record for an envelope that did not open names no task.
    no_task = Header(1, "4" * 32, "shop", "", "default", 0, 0, 0, "", "")
    rejected = ResultBody(status="rejected", error_type="vaultq.BadSignature", error="x")
    data = seal_result(HMAC, no_task, rejected, now=NOW)
    body = open_result(data, HMAC, app="shop", job_id="4" * 32, task="refund", queue="default")
    assert body.status == "rejected"
    for forged in (_result(), ResultBody(status="rejected", value=msgspec.Raw(b"1"))):
        data = seal_result(HMAC, no_task, forged, now=NOW)
        with pytest.raises(WrongDestination):
            open_result(data, HMAC, app="shop", job_id="4" * 32, task="refund")


def test_result_carries_the_principal_id() -> None:
    job = open_(seal(job_id="5" * 32))
    body = msgspec.structs.replace(_result(), principal_id="user:42")
    data = seal_result(HMAC, job.header, body, now=NOW)
    assert open_result(data, HMAC, app="shop", job_id="5" * 32).principal_id == "user:42"
    plain = seal_result(HMAC, job.header, _result(), now=NOW)
    assert open_result(plain, HMAC, app="shop", job_id="5" * 32).principal_id is None


# --- envelope v2 (XAES-256-GCM) and the v1 migration window ------------------------------


def test_v2_is_the_default_and_v1_still_opens() -> None:
    assert (seal_job.__kwdefaults__ or {})["version"] == 2
    v1, v2 = seal(version=1), seal()
    assert (v1[:3], v2[:3]) == (MAGIC, MAGIC_V2)
    assert open_(v1).header.version == 1
    assert open_(v2).header.version == 2


def test_v1_refused_after_migration() -> None:
    v1 = seal(version=1, job_id="6" * 32)
    with pytest.raises(UnsupportedVersion, match="no longer accepted"):
        open_(v1, accept_v1=False)
    assert open_(seal(), accept_v1=False).header.version == 2
    job = open_(v1)
    result = seal_result(HMAC, job.header, _result(), now=NOW)
    assert result[:3] == MAGIC  # a result answers in its job's version
    assert open_result(result, HMAC, app="shop", job_id="6" * 32).status == "succeeded"
    with pytest.raises(UnsupportedVersion, match="no longer accepted"):
        open_result(result, HMAC, app="shop", job_id="6" * 32, accept_v1=False)
    assert peek_header(v1).version == 1  # logs and dead-letter tools still read v1 headers


def test_v2_result_round_trip_and_split_trust() -> None:
    job = open_(seal(ED, job_id="7" * 32), ED)
    for keyring in (ED, ED.public()):
        data = seal_result(keyring, job.header, _result(), now=NOW)
        assert data[:3] == MAGIC_V2
        assert len(split(data)[1]) == 24
        assert open_result(data, ED, app="shop", job_id="7" * 32, accept_v1=False).value


def test_v2_nonce_halves_both_matter() -> None:
    # The first 12 nonce bytes pick the derived key, the last 12 are the GCM nonce: a
    # broker writer changing either (the container is re-signed only by a key holder)
    # fails; so does a v2 envelope re-sealed with plain AES-GCM under the same key.
    data = seal()
    for index in (0, 11, 12, 23):
        parts = split(data)
        nonce = bytearray(parts[1])
        nonce[index] ^= 1
        parts[1] = bytes(nonce)
        parts[3] = HMAC.sign(b"".join((JOB_DOMAIN, parts[0], parts[1], parts[2])))
        with pytest.raises(DecryptionFailed):
            open_(join(parts))
    parts = split(data)
    parts[2] = HMAC.active_cipher().encrypt(parts[1][12:], b'{"payload":1}', parts[0])
    parts[3] = HMAC.sign(b"".join((JOB_DOMAIN, parts[0], parts[1], parts[2])))
    with pytest.raises(DecryptionFailed):
        open_(join(parts))


def test_v1_signature_never_verifies_a_v2_envelope() -> None:
    # Same domain strings in both versions: the header's version field (signed) separates
    # them. Moving a v1 header, nonce and signature under the v2 tag fails the shape checks.
    v1 = split(seal(version=1))
    with pytest.raises(EnvelopeError):
        open_(MAGIC_V2 + msgspec.msgpack.encode(v1))


@pytest.mark.parametrize("size", [200, 300, 70_000])  # ciphertext as bin8, bin16, bin32
def test_canonical_check_accepts_every_bin_width(size: int) -> None:
    payload = msgspec.json.encode({"note": "x" * size})
    data = seal(payload=payload)
    assert bytes(open_(data).body.payload) == payload
    header, nonce, ciphertext, signature = split(data)
    wider = (
        MAGIC_V2
        + b"\x94"
        + b"".join(msgspec.msgpack.encode(p) for p in (header, nonce, ciphertext))
        + b"\xc6"
        + len(signature).to_bytes(4, "big")
        + signature
    )
    with pytest.raises(MalformedEnvelope, match="canonical"):
        open_(wider)


# --- ranges and forms (header times, job ids, result counts) ------------------------


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_non_positive_meta_timeout_is_never_sealed(timeout: float) -> None:
    with pytest.raises(ValueError, match="meta.timeout must be > 0"):
        seal(meta=JobMeta(timeout=timeout))
    assert open_(seal(meta=JobMeta(timeout=0.5))).body.meta.timeout == 0.5


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "not/an id"},
        {"job_id": ""},
        {"issued_at": -0.001},
        {"expires_at": 2**53 / 1000},
    ],
)
def test_out_of_range_jobs_are_never_sealed(changes: dict[str, Any]) -> None:
    # What open_job refuses is refused at sealing too: such a job would never get a result.
    args: dict[str, Any] = {
        "job_id": "1" * 32,
        "issued_at": NOW,
        "expires_at": NOW + 60,
        **changes,
    }
    with pytest.raises(ValueError, match="cannot seal this job"):
        seal_job(
            HMAC,
            app="shop",
            task="refund",
            queue="default",
            payload=b"{}",
            principal=None,
            meta=JobMeta(),
            not_before=NOW,
            **args,
        )


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"succeeded","attempts":-1}',
        b'{"status":"succeeded","attempts":4294967296}',
        b'{"status":"succeeded","started_at":-1.0}',
        b'{"status":"succeeded","finished_at":-5}',
    ],
)
def test_result_counts_and_times_out_of_range_are_malformed(body: bytes) -> None:
    job = open_(seal())
    good = seal_result(HMAC, job.header, ResultBody(status="succeeded", attempts=1), now=NOW)
    header = Header(*msgspec.msgpack.decode(split(good)[0]))
    with pytest.raises(MalformedEnvelope, match="result body is malformed"):
        open_result(
            _seal(HMAC, RESULT_DOMAIN, header, body, b"\x00" * 24),
            HMAC,
            app="shop",
            job_id=job.header.job_id,
        )


# --- result vectors (open_result) ----------------------------------------------------


def _open_result_vector(path: Path, vector: dict[str, Any]) -> ResultBody:
    doc = _refusals(path)
    params = {**doc["open"], **vector["open"]}
    return open_result(
        bytes.fromhex(vector["envelope"]),
        Keyring.from_dict(doc["keyring"]),
        app=params["app"],
        job_id=params["job_id"],
        task=params["tasks"][0],
        queue=params["queue"],
    )


RESULT_REFUSALS = [
    pytest.param(path, v, id=f"{path.stem.split('_')[1]}-{v['name']}")
    for path in (REFUSALS, REFUSALS_V2)
    for v in _refusals(path)["results"]["refused"]
]
RESULT_ACCEPTED = [
    pytest.param(path, v, id=f"{path.stem.split('_')[1]}-{v['name']}")
    for path in (REFUSALS, REFUSALS_V2)
    for v in _refusals(path)["results"]["accepted"]
]


@pytest.mark.parametrize(("path", "vector"), RESULT_REFUSALS)
def test_result_refusal_vectors(path: Path, vector: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError) as info:
        _open_result_vector(path, vector)
    assert info.value.reason == vector["reason"]


@pytest.mark.parametrize(("path", "vector"), RESULT_ACCEPTED)
def test_result_accepted_vectors(path: Path, vector: dict[str, Any]) -> None:
    assert _open_result_vector(path, vector).status in {"succeeded", "rejected", "paused"}
