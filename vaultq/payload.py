"""Typed payload codecs (msgspec JSON, strict); ``Secret[T]`` (``vaultq/secret.py``) and the
safe error wording (``vaultq/payload_errors.py``) are re-exported from here.

A :class:`Codec` is built once per type (each task holds its own; there is no module-level
cache) and turns values into JSON bytes and back. Decoding is strict:

- wrong types, missing fields and values that break a constraint raise ``PayloadError``
  naming the field path (``$.order_id``) and the problem, never the value;
- unknown fields are rejected in every msgspec ``Struct`` at any depth (through lists,
  dicts, tuples, unions, ``Optional`` and ``Secret``), unless the Struct opts in with a
  class attribute ``__vaultq_allow_unknown_fields__ = True``. Structs declared with
  ``forbid_unknown_fields=True`` cost nothing extra; for the others the codec runs a
  second, cheap "shape" pass (fields parsed as ``msgspec.Raw``) that only looks for
  unknown keys. For ``array_like=True`` Structs an unknown field is an extra trailing
  array element: refused the same way, unless the Struct opts in. Dataclasses, TypedDicts
  and recursive references follow msgspec's own rules (unknown keys ignored).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import math
import re
import types
import typing
import uuid
from collections import abc
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import msgspec

from vaultq.errors import PayloadError, TaskDefinitionError
from vaultq.payload_errors import (
    INVALID_UTF8,
    INVALID_VALUE,
    KNOWN_WORDINGS,
    MALFORMED_JSON,
    SAFE_NAME,
    payload_error,
    split_error,
)
from vaultq.secret import Secret

T = TypeVar("T")

__all__ = [
    "ALLOW_UNKNOWN_FIELDS",
    "INVALID_UTF8",
    "INVALID_VALUE",
    "KNOWN_WORDINGS",
    "MALFORMED_JSON",
    "Codec",
    "Secret",
    "check_encodable",
    "split_error",
]

ALLOW_UNKNOWN_FIELDS = "__vaultq_allow_unknown_fields__"
"""Name of the class attribute a Struct sets to ``True`` to accept unknown fields."""

# --- Secret hooks ---------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.reveal()
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


def _secret_inner(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[0] if args else Any


def _dec_hook(tp: Any, obj: Any) -> Any:
    if tp is Secret or typing.get_origin(tp) is Secret:
        try:
            value = msgspec.convert(obj, _secret_inner(tp), strict=True, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:
            # msgspec adds the outer field path; the inner message must not quote the value.
            raise ValueError(split_error(exc)[1]) from None
        return Secret(value)
    raise NotImplementedError(f"Decoding type {getattr(tp, '__name__', 'unknown')} is unsupported")


_FAST_INNER = frozenset({str, int, bool})


class _SecretDecoder:
    """The decoder's dec_hook, one per Codec: remembers each ``Secret[T]``'s inner type and
    skips ``msgspec.convert`` when JSON already produced exactly ``T`` (str, int, bool)."""

    __slots__ = ("_inner",)

    def __init__(self) -> None:
        self._inner: dict[Any, Any] = {}

    def __call__(self, tp: Any, obj: Any) -> Any:
        inner = self._inner.get(tp)
        if inner is None:
            if not (tp is Secret or typing.get_origin(tp) is Secret):
                return _dec_hook(tp, obj)
            inner = self._inner[tp] = _secret_inner(tp)
        if inner in _FAST_INNER and type(obj) is inner:
            return Secret(obj)
        return _dec_hook(tp, obj)


# --- type walking ---------------------------------------------------------------------

_LEAVES: tuple[type, ...] = (
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    memoryview,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    enum.Enum,
    msgspec.Raw,
    msgspec.UnsetType,
    msgspec.msgpack.Ext,
)
_CONTAINERS = frozenset(
    {list, set, frozenset, tuple, dict, typing.Union, types.UnionType}
    | {abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet}
    | {abc.Mapping, abc.MutableMapping}
)


def _is_struct(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, msgspec.Struct)


def _check_type(tp: Any, seen: set[Any]) -> None:
    """Reject custom classes msgspec would hand to a dec_hook, except ``Secret``."""
    if tp is None or tp is type(None) or tp is Any or tp is object:
        return
    if isinstance(tp, typing.NewType):
        _check_type(tp.__supertype__, seen)
        return
    if isinstance(tp, TypeVar):
        return
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        _check_type(typing.get_args(tp)[0], seen)
        return
    if tp is Secret or origin is Secret:
        _check_type(_secret_inner(tp), seen)
        return
    if origin is typing.Literal:
        return
    if origin in _CONTAINERS:
        for arg in typing.get_args(tp):
            if arg is not Ellipsis:
                _check_type(arg, seen)
        return
    if tp in seen:
        return
    seen.add(tp)
    if _is_struct(tp):
        for field in msgspec.structs.fields(tp):
            _check_type(field.type, seen)
        return
    cls = origin or tp
    if isinstance(cls, type) and (
        dataclasses.is_dataclass(cls)
        or typing.is_typeddict(cls)
        or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
    ):
        for hint in typing.get_type_hints(cls).values():
            _check_type(hint, seen)
        return
    if isinstance(cls, type) and issubclass(cls, _LEAVES):
        return
    if isinstance(cls, type) and hasattr(cls, "__attrs_attrs__"):
        return
    raise TaskDefinitionError(
        f"msgspec cannot encode or decode the type {getattr(cls, '__name__', cls)!s}; "
        "use a msgspec.Struct, a builtin type, or wrap sensitive values in vaultq.Secret"
    )


def check_encodable(tp: Any) -> None:
    """Raise ``TaskDefinitionError`` when msgspec cannot encode/decode ``tp``.

    ``Secret[T]`` is accepted wherever ``T`` is.
    """
    try:
        _check_type(tp, set())
        msgspec.json.Decoder(tp, dec_hook=_dec_hook)
        msgspec.json.Encoder(enc_hook=_enc_hook)
    except TaskDefinitionError:
        raise
    except (TypeError, ValueError, NameError) as exc:
        raise TaskDefinitionError(
            f"msgspec cannot use this type for a payload or result ({exc}); "
            "see https://jcristharif.com/msgspec/supported-types.html"
        ) from None


class _ShapeBuilder:
    """Builds the "shape" type used to find unknown fields in Structs that do not forbid
    them themselves. Leaves become ``msgspec.Raw`` (skipped, not parsed); returns ``None``
    when no Struct below ``tp`` needs the check."""

    def __init__(self) -> None:
        self._done: dict[Any, Any] = {}
        self._busy: set[Any] = set()

    def build(self, tp: Any) -> Any | None:
        if isinstance(tp, typing.NewType):
            return self.build(tp.__supertype__)
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            return self.build(typing.get_args(tp)[0])
        if tp is Secret or origin is Secret:
            return self.build(_secret_inner(tp))
        if origin in (typing.Union, types.UnionType):
            return self._union(typing.get_args(tp))
        if origin in (list, set, frozenset) or (origin is tuple and _is_var_tuple(tp)):
            item = self.build(typing.get_args(tp)[0])
            return None if item is None else list[item]  # type: ignore[valid-type]
        if origin is tuple:
            items = [self.build(arg) for arg in typing.get_args(tp)]
            if all(item is None for item in items):
                return None
            return tuple[tuple(msgspec.Raw if i is None else i for i in items)]  # type: ignore[misc]
        if origin is dict:
            key, value = typing.get_args(tp)
            shape = self.build(value)
            return None if shape is None else dict[key, shape]  # type: ignore[valid-type]
        if _is_struct(tp):
            return self._struct(tp)
        return None

    def _union(self, members: tuple[Any, ...]) -> Any | None:
        shapes = [self.build(m) for m in members]
        if all(s is None for s in shapes):
            return None
        # Raw cannot sit in a union: keep the original type of members without Structs.
        kept = tuple(m if s is None else s for m, s in zip(members, shapes, strict=True))
        return typing.Union[kept]  # noqa: UP007

    def _struct(self, tp: Any) -> Any | None:
        if tp in self._done:
            return self._done[tp]
        if tp in self._busy:
            return None  # recursive reference: checked at the first level only
        self._busy.add(tp)
        cls = typing.get_origin(tp) or tp
        config = cls.__struct_config__
        fields = msgspec.structs.fields(tp)
        shapes = [self.build(f.type) for f in fields]
        self._busy.discard(tp)
        allow = getattr(cls, ALLOW_UNKNOWN_FIELDS, False) is True
        # array_like Structs are not exempt: msgspec drops extra trailing array elements
        # unless forbid_unknown_fields is set, so ``[1, 2, "smuggled"]`` would decode.
        strict_self = config.forbid_unknown_fields or allow
        if strict_self and all(s is None for s in shapes):
            self._done[tp] = None
            return None
        shape = msgspec.defstruct(
            f"_Shape{cls.__name__}",
            [
                (f"f{i}", msgspec.Raw if s is None else s, msgspec.UNSET)
                for i, s in enumerate(shapes)
            ],
            rename={f"f{i}": f.encode_name for i, f in enumerate(fields)},
            forbid_unknown_fields=not allow,
            tag=config.tag,
            tag_field=config.tag_field,
            array_like=config.array_like,
        )
        self._done[tp] = shape
        return shape


def _is_var_tuple(tp: Any) -> bool:
    args = typing.get_args(tp)
    return len(args) == 2 and args[1] is Ellipsis


class Codec(Generic[T]):
    """Encoder/decoder pair for one type, built once (per task) and reused.

    ``decode`` is strict and raises ``PayloadError`` naming the field, never the value.
    ``encode`` raises ``PayloadError`` for values that cannot be encoded.
    Raises ``TaskDefinitionError`` at construction when msgspec cannot handle ``tp``.
    """

    __slots__ = ("_decode", "_encode", "_floats", "_shape", "type")

    @overload
    def __init__(self: Codec[None], tp: None) -> None: ...
    @overload
    def __init__(self: Codec[T], tp: type[T]) -> None: ...
    @overload
    def __init__(self, tp: Any) -> None: ...

    def __init__(self, tp: Any) -> None:
        check_encodable(tp)
        self.type = tp
        self._encode: Callable[[Any], bytes] = msgspec.json.Encoder(enc_hook=_enc_hook).encode
        self._decode: Callable[[Any], Any] = msgspec.json.Decoder(
            tp, strict=True, dec_hook=_SecretDecoder()
        ).decode
        shape = _ShapeBuilder().build(tp)
        self._shape: Callable[[Any], Any] | None = (
            None if shape is None else msgspec.json.Decoder(shape).decode
        )
        floats = _HiddenFloats()
        self._floats: _HiddenFloats | None = floats if floats.hides(tp) else None

    def __repr__(self) -> str:
        return f"Codec({getattr(self.type, '__name__', self.type)!s})"

    def encode(self, value: T) -> bytes:
        try:
            return self._encode(value)
        except RecursionError:
            raise PayloadError(
                "cannot encode the value at $: it is nested too deeply", field="$"
            ) from None
        except (
            msgspec.EncodeError,
            TypeError,
            ValueError,
            OverflowError,
            NotImplementedError,
        ) as exc:
            raise PayloadError(
                f"cannot encode a value of type {type(value).__name__}: {_safe_encode_problem(exc)}"
            ) from None

    def decode(self, data: bytes | bytearray | memoryview | msgspec.Raw) -> T:
        try:
            value: T = self._decode(data)
            if self._shape is not None:
                self._shape(data)
        except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8
            raise payload_error(exc, "payload") from None
        except RecursionError:
            # msgspec raises it for deeply nested input (``[[[[...``): bad input, not a bug.
            raise PayloadError(
                "payload does not match its type at $: JSON nested too deeply", field="$"
            ) from None
        return value

    def encode_checked(self, value: T) -> bytes:
        """``encode``, then prove the bytes decode strictly as this codec's type.

        msgspec does not check field types when a Struct is built, and its JSON encoder
        writes NaN and infinity as ``null``; so ``encode`` alone accepts
        ``Refund(order_id="7")`` and turns ``amount=nan`` into ``None``. This raises
        ``PayloadError`` naming the field, never the value, for wrong types, non-finite
        floats, ``Secret``s of the wrong inner type and nesting too deep to decode. The
        bytes returned are exactly what was checked, so the receiver decodes them alike.
        """
        data = self.encode(value)
        if self._floats is not None and b"null" in data:
            # Only a ``null`` in the output can be a hidden non-finite float; walk the
            # value (not the bytes), and only when the type has room for one.
            try:
                self._floats.check(value, "$")
            except RecursionError:
                raise PayloadError(
                    "payload does not match its type at $: nested too deeply", field="$"
                ) from None
        # The full decode the worker runs, unknown-field pass included: a Struct
        # subclass with extra fields passes isinstance() but not the worker.
        self.decode(data)
        return data


_NONFINITE = (
    "NaN and infinity cannot be sent (JSON has no encoding for them); "
    "send a finite number (or None where the field allows it)"
)
_SCALARS = (str, bytes, int, bool, type(None))


class _HiddenFloats:
    """Finds NaN/infinity where the type would also accept ``null``.

    msgspec's JSON encoder writes NaN and infinity as ``null``. Where a field is a plain
    ``float``, the strict decode then fails and names the field; where ``null`` is also
    valid (``float | None``, ``Any``), the value would silently become ``None``. Only
    those positions are walked: a Struct's fields whose type cannot hide a float are
    skipped, so the walk costs nothing for most payloads.
    """

    __slots__ = ("_busy", "_fields", "_hides")

    def __init__(self) -> None:
        self._hides: dict[Any, bool] = {}
        self._busy: set[Any] = set()
        self._fields: dict[type, tuple[tuple[str, str], ...]] = {}

    def hides(self, tp: Any) -> bool:
        """Whether a value of type ``tp`` may hold a float where ``null`` is valid too."""
        try:
            known = self._hides.get(tp)
        except TypeError:  # unhashable annotation: be conservative
            return True
        if known is not None:
            return known
        if tp in self._busy:
            return False  # recursive reference: its other occurrences decide
        self._busy.add(tp)
        try:
            found = self._hides[tp] = self._compute(tp)
        finally:
            self._busy.discard(tp)
        return found

    def _compute(self, tp: Any) -> bool:
        if tp is Any or tp is object:
            return True
        if isinstance(tp, typing.NewType):
            return self.hides(tp.__supertype__)
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            return self.hides(typing.get_args(tp)[0])
        if tp is Secret or origin is Secret:
            return self.hides(_secret_inner(tp))
        if origin in (typing.Union, types.UnionType):
            members = typing.get_args(tp)
            nullable = type(None) in members or None in members
            floaty = any(_is_float(m) for m in members)
            return (nullable and floaty) or any(self.hides(m) for m in members)
        if origin is typing.Literal:
            return False
        if origin in _CONTAINERS:
            return any(self.hides(a) for a in typing.get_args(tp) if a is not Ellipsis)
        if _is_struct(tp):
            return any(self.hides(f.type) for f in msgspec.structs.fields(tp))
        cls = origin or tp
        # Leaves never hold a float; dataclasses, TypedDicts, NamedTuples and attrs
        # classes are walked in full.
        return not (isinstance(cls, type) and issubclass(cls, _LEAVES))

    def _struct_fields(self, cls: type) -> tuple[tuple[str, str], ...]:
        fields = self._fields.get(cls)
        if fields is None:
            fields = self._fields[cls] = tuple(
                (f.name, f.encode_name) for f in msgspec.structs.fields(cls) if self.hides(f.type)
            )
        return fields

    def check(self, value: Any, path: str) -> None:
        """Raise ``PayloadError`` at the first hidden non-finite float below ``value``."""
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PayloadError(
                    f"payload does not match its type at {path}: {_NONFINITE}", field=path
                )
        elif isinstance(value, _SCALARS):
            return
        elif isinstance(value, msgspec.Struct):
            for name, encoded in self._struct_fields(type(value)):
                # The path uses the JSON name, as decode errors do.
                self.check(getattr(value, name, None), f"{path}.{encoded}")
        elif isinstance(value, Secret):
            self.check(value.reveal(), path)
        elif isinstance(value, dict):
            for key, item in value.items():
                # Keys come from the caller's data: named only when they look like names.
                label = key if isinstance(key, str) and SAFE_NAME.fullmatch(key) else "<key>"
                self.check(item, f"{path}.{label}")
        elif isinstance(value, list | tuple | set | frozenset):
            for i, item in enumerate(value):
                self.check(item, f"{path}[{i}]")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                self.check(getattr(value, f.name, None), f"{path}.{f.name}")


def _is_float(tp: Any) -> bool:
    if tp is float or tp is Any or tp is object:
        return True
    if typing.get_origin(tp) is typing.Annotated:
        return _is_float(typing.get_args(tp)[0])
    return isinstance(tp, type) and issubclass(tp, float)


_ENC_UNSUPPORTED = re.compile(r"Encoding objects of type [A-Za-z0-9_.]{1,100} is unsupported")


def _safe_encode_problem(exc: BaseException) -> str:
    message = str(exc)
    if _ENC_UNSUPPORTED.fullmatch(message) or message in {
        "Integer value out of range",
        "Only dicts with str-like or number-like keys are supported",
    }:
        return message
    return "a value cannot be encoded as JSON"
