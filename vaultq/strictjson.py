"""Duplicate object keys in JSON that decides acceptance (envelope bodies, key files).

JSON (RFC 8259 §4) leaves duplicate names undefined: msgspec, Python's ``json`` and
``JSON.parse`` keep the last, other parsers keep the first or refuse. A signed body such
as ``{"principal": {"id": "admin"}, "principal": {"id": "guest"}}`` then means one thing
to the worker and another to any other reader that audits it, so vaultq refuses
duplicates wherever JSON decides acceptance. msgspec has no option for it, hence this.

The fast path costs one extra msgspec decode and encode (a few microseconds for a job
body). Both sides count ``:`` bytes: in the input, each object member has one structural
colon, plus the colons written literally inside strings; msgspec's re-encoding of the
decoded value writes every member's colon and every string's colons literally. Decoding
keeps the last of duplicate members and drops the others, with every colon they held,
and adds none. So, when the input spells no colon as an escape (``\\u003a``), the counts
are equal exactly when no object repeats a key. Input with such an escape (or anything
that looks like one) takes the slow, obviously correct path: the standard library's
parser with a hook that sees every object's members in order.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["has_duplicate_keys"]

_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Duplicate(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate
    return obj


_pairs_decoder = json.JSONDecoder(object_pairs_hook=_no_repeats)


def has_duplicate_keys(raw: bytes | bytearray | memoryview) -> bool:
    """Whether any JSON object in ``raw`` repeats a key, at any depth.

    ``raw`` must already have decoded with msgspec (the caller's typed decode): input
    that is not JSON raises msgspec's ``DecodeError`` or ``ValueError`` here too.
    """
    data = bytes(raw)
    # A one-byte search first (memchr): most bodies hold no escape at all.
    if b"\\" not in data or b"\\u003" not in data:
        return data.count(b":") != _encode(_decode_any(data)).count(b":")
    try:
        _pairs_decoder.decode(data.decode("utf-8"))
    except _Duplicate:
        return True
    return False
