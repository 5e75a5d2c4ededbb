"""msgspec error messages made safe to show: a field path and a problem, never a value.

Split from ``payload.py``; used by the payload codecs, the keyring loader and the Django
backend to report what does not fit where without echoing what was sent.
"""

from __future__ import annotations

import re

import msgspec

from vaultq.errors import PayloadError

__all__ = [
    "INVALID_UTF8",
    "INVALID_VALUE",
    "KNOWN_WORDINGS",
    "MALFORMED_JSON",
    "SAFE_NAME",
    "payload_error",
    "split_error",
]

# --- error messages -------------------------------------------------------------------
# msgspec messages sometimes quote the offending value ("Invalid enum value 'xyz'"), and
# their wording changes between releases (0.23 turned UnicodeDecodeError into
# DecodeError("Invalid UTF-8 encoded string")). So the safety property (never echo a
# value) rests on an allow-list, not on recognising dangerous wordings: only a message in
# the table below, or one of the shapes right after it, is shown; anything else becomes a
# fixed message chosen by the error's *type*:
#
# - ``msgspec.ValidationError``: the JSON parsed, a value does not fit the type (also what
#   a Struct's own ``__post_init__`` raises, which may quote anything);
# - any other ``msgspec.DecodeError`` or a ``ValueError``: the bytes are not valid JSON
#   (or not valid UTF-8, when the message says so).
#
# tests/test_payload.py checks every row against the installed msgspec and states which
# rows each supported msgspec release produces.

INVALID_UTF8 = "invalid UTF-8 text"
MALFORMED_JSON = "malformed JSON"
INVALID_VALUE = "value does not match the declared type or its constraints"

KNOWN_WORDINGS: dict[str, str] = {
    # exact msgspec message (after the " - at `$...`" path is cut) -> what we show
    "Input data was truncated": "Input data was truncated",
    "Invalid UTF-8 encoded string": INVALID_UTF8,  # msgspec >= 0.23
    "Invalid RFC3339 encoded datetime": "Invalid RFC3339 encoded datetime",
    "Invalid RFC3339 encoded date": "Invalid RFC3339 encoded date",
    "Invalid RFC3339 encoded time": "Invalid RFC3339 encoded time",
    "Invalid ISO8601 duration": "Invalid ISO8601 duration",
    "Invalid UUID": "Invalid UUID",
    "Invalid decimal string": "Invalid decimal string",
    "Invalid base64 encoded string": "Invalid base64 encoded string",
    "Invalid epoch timestamp": "Invalid epoch timestamp",
    "Number out of range": "Number out of range",
    "Duration is out of range": "Duration is out of range",
    "Timezone offsets must be within +/- 24 hours": "Timezone offsets must be within +/- 24 hours",
}
"""Known msgspec wordings (msgspec 0.18.6 to 0.23) kept or reworded, by exact message."""

_PATH_SPLIT = " - at `"
# "Expected `int`, got `str`", "Expected `int` >= 0", "Expected `str` matching regex '^a'":
# the type, the input's kind and constraints from the schema, never the value. The tail
# is spelled out so a free-form message that merely starts with "Expected `" is not shown.
_EXPECTED = re.compile(
    r"Expected `[^`]{1,60}`"
    r"(?:, got `[A-Za-z_]{1,20}`"
    r"| (?:>=|<=|>|<) -?[0-9.e+inf-]{1,40}"
    r"| that's a multiple of -?[0-9.e+-]{1,40}"
    r"| of (?:at least |at most )?length (?:>= |<= )?\d{1,20}(?: to \d{1,20})?(?:, got \d{1,20})?"
    r"| matching regex .{1,160}"
    r"| with (?:no|a) timezone component)?"
)
_MISSING = re.compile(r"Object missing required field `[^`]{1,100}`")
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`", re.DOTALL)
# "JSON is malformed: invalid character (byte 12)": msgspec's own fixed reasons and an
# offset, never input text; anything past that shape is cut.
_MALFORMED = re.compile(r"JSON is malformed: [a-z ':,{}\[\]\\\"-]{1,60} \(byte \d{1,12}\)")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")


def _safe_problem(message: str, syntax: bool) -> tuple[str, str]:
    """``(problem, field)``: the rewritten problem, and the unknown field's name if any.

    ``syntax`` is True for errors that are not ``ValidationError`` (the input is not JSON).
    """
    known = KNOWN_WORDINGS.get(message)
    if known is not None:
        return known, ""
    malformed = _MALFORMED.fullmatch(message)
    if malformed is not None:
        return message, ""
    if message.startswith("JSON is malformed"):
        return "JSON is malformed", ""
    if message.startswith("Invalid enum value"):
        return "Invalid enum value", ""
    if _EXPECTED.fullmatch(message) or _MISSING.fullmatch(message):
        return message, ""
    unknown = _UNKNOWN.fullmatch(message)
    if unknown is not None:
        # The name comes from the input: keep it only if it looks like a field name.
        name = unknown.group(1)
        if SAFE_NAME.fullmatch(name):
            return "unknown field (not declared by the Struct)", name
        return "Object contains an unknown field", ""
    if syntax:
        # A reworded syntax error: still say which of the two it is, without the wording.
        return (INVALID_UTF8 if "utf-8" in message.lower() else MALFORMED_JSON), ""
    return INVALID_VALUE, ""


def split_error(exc: BaseException) -> tuple[str, str]:
    """``(path, problem)`` of a msgspec error, the problem rewritten to never quote a value.

    Classified by type first (``UnicodeDecodeError``: msgspec < 0.23 on invalid UTF-8;
    ``ValidationError``: a value does not fit; other ``DecodeError``/``ValueError``: not
    JSON), then by the known wordings; unknown wordings get a fixed message.
    """
    if isinstance(exc, UnicodeDecodeError):
        return "$", INVALID_UTF8
    syntax = not isinstance(exc, msgspec.ValidationError)
    message = str(exc)
    problem, sep, rest = message.rpartition(_PATH_SPLIT)
    path = "$"
    if sep and rest.endswith("`"):
        path, message = rest[:-1], problem
    safe, field = _safe_problem(message, syntax)
    if field:
        path = f"{path}.{field}"
    return path, safe


def payload_error(exc: BaseException, what: str) -> PayloadError:
    path, problem = split_error(exc)
    return PayloadError(f"{what} does not match its type at {path}: {problem}", field=path)
