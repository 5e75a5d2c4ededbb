"""Typed payload codecs (msgspec JSON, strict) and ``Secret[T]``.

STUB: the security-core helper fills this in. The names and signatures below are the
contract other modules code against.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Codec", "Secret", "check_encodable"]


class Secret(Generic[T]):
    """A sensitive value: ``repr``/``str``/format/logging show ``Secret('***')``.

    Encodes to the plain inner value inside the (encrypted) JSON, decodes back to
    ``Secret``; equality is by value (constant time for str/bytes); ``.reveal()`` returns it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value


class Codec(Generic[T]):
    """Encoder/decoder pair for one type, built once (per task) and reused.

    ``decode`` is strict and raises ``PayloadError`` naming the field, never the value.
    ``encode`` raises ``PayloadError`` for values that cannot be encoded.
    """

    def __init__(self, tp: Any) -> None:
        self.type = tp

    def encode(self, value: T) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> T:
        raise NotImplementedError


def check_encodable(tp: Any) -> None:
    """Raise ``TaskDefinitionError`` when msgspec cannot encode/decode ``tp``."""
    raise NotImplementedError
