"""``Secret[T]``: a value that never shows itself in a ``repr``, a log line or a pickle.

Split from ``payload.py`` (which encodes and decodes ``Secret`` fields: the plain value
inside the encrypted JSON). Imported from ``vaultq`` and ``vaultq.payload`` alike.
"""

from __future__ import annotations

import hmac
from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

__all__ = ["Secret"]

_MASK = "Secret('***')"


class Secret(Generic[T]):
    """A sensitive value: ``repr``/``str``/format/logging show ``Secret('***')``.

    Encodes to the plain inner value inside the (encrypted) JSON, decodes back to
    ``Secret``; equality is by value (constant time for str/bytes); ``.reveal()`` returns it.
    Pickling, ``__reduce__`` and ``__getstate__`` are refused so the value cannot leak
    through a pickle stream or a state export; copies return the same object.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The wrapped value. Call it at the last moment, and never log the result."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return format(_MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        # compare_digest keeps the comparison time independent of where values differ.
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        if isinstance(a, bytes | bytearray) and isinstance(b, bytes | bytearray):
            return hmac.compare_digest(a, b)
        return bool(a == b)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled; reveal() and handle the value on purpose")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self.__reduce__()

    def __getstate__(self) -> NoReturn:
        # object.__getstate__ (3.11+) would return {"_value": ...}: serializers that call
        # it directly (copyreg helpers, dill, some debug tools) would get the plain value.
        raise TypeError("Secret values have no state to export; reveal() the value on purpose")

    def __setstate__(self, state: Any) -> NoReturn:
        raise TypeError("Secret values cannot be restored from a state; build Secret(value)")

    def __copy__(self) -> Secret[T]:
        return self

    def __deepcopy__(self, memo: Any) -> Secret[T]:
        return self
