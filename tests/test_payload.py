"""Codec (strict msgspec JSON) and Secret[T]."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import hmac
import logging
import pickle
import uuid
from typing import Annotated, Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultq.errors import PayloadError, TaskDefinitionError
from vaultq.payload import (
    INVALID_UTF8,
    INVALID_VALUE,
    KNOWN_WORDINGS,
    MALFORMED_JSON,
    Codec,
    Secret,
    check_encodable,
    split_error,
)


class Color(enum.Enum):
    RED = "red"


class Card(msgspec.Struct):
    number: Secret[str]
    cvc: Secret[int]


class Order(msgspec.Struct):
    order_id: int
    card: Card
    tokens: list[Secret[str]] = []
    color: Color = Color.RED
    mode: Literal["fast", "slow"] = "fast"
    note: Annotated[str, msgspec.Meta(max_length=5)] = ""
    when: datetime.datetime | None = None


class Lenient(msgspec.Struct):
    __vaultq_allow_unknown_fields__ = True
    a: int


class Forbidding(msgspec.Struct, forbid_unknown_fields=True):
    a: int


class Holder(msgspec.Struct, forbid_unknown_fields=True):
    inner: Card
    lenient: Lenient | None = None
    by_name: dict[str, Card] = {}
    pair: tuple[int, Card] | None = None


class Checked(msgspec.Struct):
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError(f"value {self.value} is negative")


ORDER = Order(order_id=7, card=Card(Secret("4242424242424242"), Secret(737)))
CODEC: Codec[Order] = Codec(Order)


def payload_error(codec: Codec[Any], data: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        codec.decode(data)
    return info.value


# --- codec ---------------------------------------------------------------------------


def test_round_trip_keeps_types() -> None:
    back = CODEC.decode(CODEC.encode(ORDER))
    assert back == ORDER
    assert type(back.card.number) is Secret
    assert back.card.cvc.reveal() == 737
    assert isinstance(back.card.cvc.reveal(), int)


def test_secret_encodes_to_plain_inner_value() -> None:
    data = CODEC.encode(ORDER)
    assert msgspec.json.decode(data)["card"] == {"number": "4242424242424242", "cvc": 737}


def test_wrong_type_names_path_not_value() -> None:
    exc = payload_error(CODEC, b'{"order_id":"seven-secret","card":{"number":"x","cvc":1}}')
    assert exc.field == "$.order_id"
    assert "$.order_id" in str(exc)
    assert "Expected `int`, got `str`" in str(exc)
    assert "seven-secret" not in str(exc)


def test_missing_field() -> None:
    exc = payload_error(CODEC, b'{"card":{"number":"x","cvc":1}}')
    assert exc.field == "$"
    assert "order_id" in str(exc)


BASE = '"order_id":1,"card":{"number":"x","cvc":1}'


@pytest.mark.parametrize(
    ("doc", "field", "hidden"),
    [
        ("{" + BASE + ',"color":"ultraviolet"}', "$.color", "ultraviolet"),
        ("{" + BASE + ',"mode":"warp9"}', "$.mode", "warp9"),
        ("{" + BASE + ',"note":"toolong"}', "$.note", "toolong"),
        ("{" + BASE + ',"when":"yesterday"}', "$.when", "yesterday"),
        ('{"order_id":1,"card":{"number":"x","cvc":"hunter2"}}', "$.card.cvc", "hunter2"),
        ('{"order_id":1,"card":{"number":4111,"cvc":1}}', "$.card.number", "4111"),
        ("{" + BASE + ',"tokens":["a",99887766]}', "$.tokens[1]", "99887766"),
    ],
)  # fmt: skip
def test_error_messages_never_quote_values(doc: str, field: str, hidden: str) -> None:
    exc = payload_error(CODEC, doc.encode())
    assert exc.field == field
    assert hidden not in str(exc)
    assert hidden not in repr(exc)
    assert exc.__cause__ is None


def test_post_init_message_is_not_echoed() -> None:
    exc = payload_error(Codec(Checked), b'{"value":-987654}')
    assert "987654" not in str(exc)
    assert exc.field == "$"


def test_invalid_utf8_and_malformed_json() -> None:
    # msgspec < 0.23 raised UnicodeDecodeError here, 0.23 DecodeError("Invalid UTF-8 ...").
    exc = payload_error(CODEC, b'{"order_id":1,"card":{"number":"\xff\xfe"}}')
    assert str(exc).endswith(f": {INVALID_UTF8}")
    exc = payload_error(CODEC, b'{"order_id": 1,')
    assert "truncated" in str(exc) or "malformed" in str(exc)
    exc = payload_error(CODEC, b'{"order_id" 1}')
    assert str(exc).endswith(": JSON is malformed: expected ':' (byte 12)")


# Real inputs and what the installed msgspec (0.18.6 ... 0.23) makes of them: the table
# of wordings vaultq keeps is exercised by real errors, not only by strings we made up.
SECRET_MARK = "SECRET-7f3a"


class Shapes(msgspec.Struct, forbid_unknown_fields=True):
    when: datetime.datetime | None = None
    day: datetime.date | None = None
    at: datetime.time | None = None
    span: datetime.timedelta | None = None
    uid: uuid.UUID | None = None
    amount: decimal.Decimal | None = None
    blob: bytes | None = None
    small: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    even: Annotated[int, msgspec.Meta(multiple_of=2)] = 0
    code: Annotated[str, msgspec.Meta(pattern="^[a-z]+$", max_length=5)] = "a"
    items: Annotated[list[int], msgspec.Meta(min_length=0, max_length=2)] = []
    ratio: Annotated[float, msgspec.Meta(gt=0.5)] = 1.0
    color: Color = Color.RED
    pair: tuple[int, int] = (0, 0)


REAL_INPUTS = [
    (b'{"when":"SECRET-7f3a"}', "$.when", "Invalid RFC3339 encoded datetime"),
    (b'{"day":"SECRET-7f3a"}', "$.day", "Invalid RFC3339 encoded date"),
    (b'{"at":"SECRET-7f3a"}', "$.at", "Invalid RFC3339 encoded time"),
    (b'{"span":"SECRET-7f3a"}', "$.span", "Invalid ISO8601 duration"),
    (b'{"uid":"SECRET-7f3a"}', "$.uid", "Invalid UUID"),
    (b'{"amount":"SECRET-7f3a"}', "$.amount", "Invalid decimal string"),
    (b'{"blob":"SECRET-7f3a!"}', "$.blob", "Invalid base64 encoded string"),
    (b'{"small":12}', "$.small", "Expected `int` <= 9"),
    (b'{"small":-1}', "$.small", "Expected `int` >= 0"),
    (b'{"even":3}', "$.even", "Expected `int` that's a multiple of 2"),
    (b'{"code":"SECRETS"}', "$.code", "Expected `str` of length <= 5"),
    (b'{"code":"S3"}', "$.code", "Expected `str` matching regex '^[a-z]+$'"),
    (b'{"items":[1,2,3]}', "$.items", "Expected `array` of length <= 2"),
    (b'{"ratio":0.25}', "$.ratio", "Expected `float` > 0.5"),
    (b'{"pair":[1]}', "$.pair", "Expected `array` of length 2"),
    (b'{"small":"SECRET-7f3a"}', "$.small", "Expected `int`, got `str`"),
    (b'{"color":"SECRET-7f3a"}', "$.color", "Invalid enum value"),
    (b'{"SECRET-7f3a is no name":1}', "$", "Object contains an unknown field"),
    (b'{"small":1e999}', "$.small", "Number out of range"),
    (b'{"code":"\xffSECRET-7f3a"}', "$", INVALID_UTF8),
    (b'{"code":"SECRET-7f3a', "$", "Input data was truncated"),
    (b'{"code":SECRET-7f3a}', "$", "JSON is malformed: invalid character (byte 8)"),
    (b'{"code":"a"} SECRET-7f3a', "$", "JSON is malformed: trailing characters (byte 14)"),
]


@pytest.mark.parametrize(("data", "path", "problem"), REAL_INPUTS)
def test_real_msgspec_errors_keep_useful_wording_and_no_value(
    data: bytes, path: str, problem: str
) -> None:
    exc = payload_error(Codec(Shapes), data)
    assert SECRET_MARK not in str(exc)
    assert SECRET_MARK not in repr(exc)
    assert (exc.field, str(exc)) == (path, f"payload does not match its type at {path}: {problem}")


def test_every_known_wording_is_kept_or_reworded_without_values() -> None:
    for wording, shown in KNOWN_WORDINGS.items():
        assert split_error(msgspec.ValidationError(f"{wording} - at `$.a`")) == ("$.a", shown)
        assert split_error(msgspec.DecodeError(wording)) == ("$", shown)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        # msgspec < 0.23: invalid UTF-8 surfaced as the stdlib's UnicodeDecodeError
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ("$", INVALID_UTF8)),
        # msgspec >= 0.23 wording
        (msgspec.DecodeError("Invalid UTF-8 encoded string"), ("$", INVALID_UTF8)),
        # a future rewording of either, quoting the input: classified by type, not echoed
        (msgspec.DecodeError(f"Bad utf-8 byte in {SECRET_MARK!r}"), ("$", INVALID_UTF8)),
        (msgspec.DecodeError(f"Unexpected token {SECRET_MARK!r}"), ("$", MALFORMED_JSON)),
        (msgspec.DecodeError(f"JSON is malformed: near {SECRET_MARK}"), ("$", "JSON is malformed")),
        (ValueError(f"odd input {SECRET_MARK}"), ("$", MALFORMED_JSON)),
        (
            msgspec.ValidationError(f"Invalid value {SECRET_MARK!r} - at `$.x`"),
            ("$.x", INVALID_VALUE),
        ),
        (
            msgspec.ValidationError(f"Expected `int` {SECRET_MARK} - at `$.x`"),
            ("$.x", INVALID_VALUE),
        ),
        (msgspec.ValidationError(f"UTF-8 {SECRET_MARK}"), ("$", INVALID_VALUE)),
    ],
)
def test_unknown_wordings_fall_back_by_error_type(
    exc: BaseException, expected: tuple[str, str]
) -> None:
    assert split_error(exc) == expected
    assert SECRET_MARK not in split_error(exc)[1]


def test_unknown_fields_rejected_at_every_depth() -> None:
    exc = payload_error(CODEC, b'{"order_id":1,"card":{"number":"x","cvc":1},"extra":1}')
    assert exc.field == "$.extra"
    exc = payload_error(CODEC, b'{"order_id":1,"card":{"number":"x","cvc":1,"pin":1}}')
    assert exc.field == "$.card.pin"
    holder: Codec[Holder] = Codec(Holder)
    ok = b'{"inner":{"number":"x","cvc":1}}'
    assert holder.decode(ok).inner.cvc == Secret(1)
    assert payload_error(holder, b'{"inner":{"number":"x","cvc":1,"z":0}}').field == "$.inner.z"
    exc = payload_error(
        holder, b'{"inner":{"number":"x","cvc":1},"by_name":{"k":{"number":"x","cvc":1,"z":0}}}'
    )
    assert exc.field is not None
    assert exc.field.endswith(".z")
    exc = payload_error(
        holder, b'{"inner":{"number":"x","cvc":1},"pair":[1,{"number":"x","cvc":1,"z":0}]}'
    )
    assert "unknown field" in str(exc)
    lists: Codec[list[Card]] = Codec(list[Card])
    assert payload_error(lists, b'[{"number":"x","cvc":1,"z":1}]').field == "$[0].z"
    secrets: Codec[Secret[Card]] = Codec(Secret[Card])
    assert "unknown" in str(payload_error(secrets, b'{"number":"x","cvc":1,"z":1}'))


def test_unknown_field_name_from_input_is_not_echoed_when_odd() -> None:
    exc = payload_error(CODEC, b'{"order_id":1,"card":{"number":"x","cvc":1},"a b\'c":1}')
    assert "a b" not in str(exc)


def test_struct_can_opt_in_to_unknown_fields() -> None:
    lenient: Codec[Lenient] = Codec(Lenient)
    assert lenient.decode(b'{"a":1,"later":2}') == Lenient(1)
    holder: Codec[Holder] = Codec(Holder)
    assert holder.decode(
        b'{"inner":{"number":"x","cvc":1},"lenient":{"a":1,"new":true}}'
    ).lenient == Lenient(1)


def test_forbidding_structs_need_no_shape_pass() -> None:
    codec: Codec[Forbidding] = Codec(Forbidding)
    assert codec._shape is None
    assert payload_error(codec, b'{"a":1,"b":2}').field == "$.b"
    assert Codec(int)._shape is None
    assert Codec(Order)._shape is not None


def test_strict_no_coercion() -> None:
    assert payload_error(Codec(int), b'"1"').field == "$"
    assert payload_error(Codec(float), b'"1.5"').field == "$"
    assert payload_error(Codec(bool), b"1").field == "$"


def test_none_type() -> None:
    codec: Codec[None] = Codec(None)
    assert codec.encode(None) == b"null"
    assert codec.decode(b"null") is None
    assert payload_error(codec, b"1").field == "$"


def test_decode_accepts_raw_and_memoryview() -> None:
    data = CODEC.encode(ORDER)
    assert CODEC.decode(msgspec.Raw(data)) == ORDER
    assert CODEC.decode(memoryview(data)) == ORDER


def test_encode_failure_is_payload_error() -> None:
    codec: Codec[dict[str, Any]] = Codec(dict[str, Any])
    with pytest.raises(PayloadError, match="object"):
        codec.encode({"x": object()})


def test_check_encodable() -> None:
    check_encodable(Order)
    check_encodable(Secret[str])
    check_encodable(list[Secret[dict[str, int]]])
    check_encodable(None)

    class Custom:
        pass

    @dataclasses.dataclass
    class WithCustom:
        c: Custom

    class Struct1(msgspec.Struct):
        a: int

    class Struct2(msgspec.Struct):
        b: int

    for bad in (Custom, list[Custom], Secret[Custom], WithCustom, Struct1 | Struct2):
        with pytest.raises(TaskDefinitionError):
            check_encodable(bad)
    with pytest.raises(TaskDefinitionError):
        Codec(Custom)


def test_codec_repr_has_no_values() -> None:
    assert repr(CODEC) == "Codec(Order)"


# --- Secret --------------------------------------------------------------------------


VALUE = "tok_live_4242_sensitive"


def test_secret_is_masked_everywhere() -> None:
    secret = Secret(VALUE)
    assert repr(secret) == str(secret) == "Secret('***')"
    assert f"{secret}" == f"{secret!r}" == "Secret('***')"
    assert format(secret, ">20") == "       Secret('***')"
    assert "%s %r" % (secret, secret) == "Secret('***') Secret('***')"  # noqa: UP031
    assert VALUE not in repr(Card(Secret(VALUE), Secret(1)))
    assert VALUE not in repr([secret, {"k": secret}])
    assert VALUE not in str(ValueError(secret))


def test_secret_not_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("vaultq.test")
    with caplog.at_level(logging.DEBUG, logger="vaultq.test"):
        log.info("token %s", Secret(VALUE))
        log.info("card %r", Card(Secret(VALUE), Secret(99)))
        log.info("args", extra={"secret": Secret(VALUE)})
        try:
            raise RuntimeError(Secret(VALUE))
        except RuntimeError:
            log.exception("failed")
    assert caplog.records
    assert VALUE not in caplog.text
    for record in caplog.records:
        assert VALUE not in record.getMessage()


def test_secret_not_in_payload_errors() -> None:
    class Pin(msgspec.Struct):
        pin: Secret[Annotated[str, msgspec.Meta(pattern="^[0-9]+$")]]
        cvc: Secret[Literal[1, 2]] = Secret(1)

    codec: Codec[Pin] = Codec(Pin)
    exc = payload_error(codec, b'{"pin":"12ab-secret"}')
    assert exc.field == "$.pin"
    assert "12ab-secret" not in str(exc)
    exc = payload_error(codec, b'{"pin":"1","cvc":7654}')
    assert "7654" not in str(exc)
    assert exc.field == "$.cvc"


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret(b"a") == Secret(b"a")
    assert Secret(1) == Secret(1)
    assert Secret(1) != Secret(2)
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


def test_secret_compares_str_and_bytes_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Secret("é") == Secret("é")
    assert Secret(b"x") != Secret(b"y")
    assert len(calls) == 2


def test_secret_refuses_pickle_and_survives_copy() -> None:
    secret = Secret(VALUE)
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        pickle.dumps(Card(secret, Secret(1)))
    assert copy.copy(secret) is secret
    assert copy.deepcopy([secret])[0] is secret


def test_secret_decode_is_strict() -> None:
    codec: Codec[Card] = Codec(Card)
    assert "$.cvc" in str(payload_error(codec, b'{"number":"x","cvc":"1"}'))
    assert "$.number" in str(payload_error(codec, b'{"number":null,"cvc":1}'))
    nested: Codec[dict[str, list[Secret[int]]]] = Codec(dict[str, list[Secret[int]]])
    back = nested.decode(b'{"a":[1,2]}')
    assert back == {"a": [Secret(1), Secret(2)]}


def test_secret_with_datetime_inner() -> None:
    codec: Codec[Secret[datetime.datetime]] = Codec(Secret[datetime.datetime])
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    back = codec.decode(codec.encode(Secret(when)))
    assert back.reveal() == when
    assert isinstance(back.reveal(), datetime.datetime)


@settings(max_examples=100, deadline=None)
@given(value=st.text(min_size=4) | st.binary(min_size=4) | st.integers(min_value=10_000))
def test_secret_never_shows_value_property(value: Any) -> None:
    secret = Secret(value)
    shown = repr(value)
    for text in (repr(secret), str(secret), f"{secret}", format(secret, "^30"), repr([secret])):
        assert shown not in text
        assert text.strip() in {"Secret('***')", "[Secret('***')]"}
    codec: Codec[Secret[Any]] = Codec(Secret[type(value)])  # type: ignore[misc]
    assert codec.decode(codec.encode(secret)) == secret


class Pair(msgspec.Struct, array_like=True):
    a: int
    b: int


class LenientPair(msgspec.Struct, array_like=True):
    __vaultq_allow_unknown_fields__ = True
    a: int
    b: int


class PairHolder(msgspec.Struct, forbid_unknown_fields=True):
    pairs: list[Pair]


def test_array_like_structs_refuse_extra_elements_unless_they_opt_in() -> None:
    # Attack: an extra trailing element was silently dropped ([1, 2, "smuggled"] -> Pair(1, 2)).
    codec: Codec[Pair] = Codec(Pair)
    assert codec.decode(b"[1,2]") == Pair(1, 2)
    exc = payload_error(codec, b'[1,2,"smuggled"]')
    assert "smuggled" not in str(exc)
    assert "array" in str(exc)
    nested: Codec[PairHolder] = Codec(PairHolder)
    # (msgspec reports this one without a path inside the document: "$", not "$.pairs[1]")
    assert "at most length 2" in str(payload_error(nested, b'{"pairs":[[1,2],[3,4,5]]}'))
    assert Codec(LenientPair).decode(b'[1,2,"later"]') == LenientPair(1, 2)
