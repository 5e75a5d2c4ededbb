"""Duplicate JSON keys (``vaultq/strictjson.py``) and where they are refused: job and
result bodies (signed JSON a second reader could parse differently) and key files."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultq.envelope import (
    JOB_DOMAIN,
    RESULT_DOMAIN,
    Header,
    JobMeta,
    ResultBody,
    _seal,
    open_job,
    open_result,
    seal_job,
    seal_result,
)
from vaultq.errors import KeyringError, MalformedEnvelope
from vaultq.keyring import Keyring
from vaultq.strictjson import has_duplicate_keys

NOW = 1_700_000_000.0
KEYS = Keyring.generate()


def reference(text: str) -> bool:
    """The obvious check: the standard library parser, every object's pairs in order."""
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


# Keys and strings drawn from a small alphabet rich in colons, quotes and escapes, so
# duplicates are frequent and the colon counting meets every way a colon can be spelled.
names = st.sampled_from(["a", "b", ":", "a:b", "\\u003a", "\\u003A", "\\u0061", '\\"', "\\\\u003a"])


def spell(value: Any) -> str:
    if isinstance(value, list) and value and value[0] == "obj":
        return "{" + ",".join(f'"{k}":{spell(v)}' for k, v in value[1]) + "}"
    if isinstance(value, list):
        return "[" + ",".join(spell(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return json.dumps(value)


json_values = st.recursive(
    st.none() | st.integers() | st.booleans() | names,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(st.just("obj"), st.lists(st.tuples(names, inner), max_size=4)).map(list)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from(["", " ", "\n "]))
def test_matches_the_reference_on_random_documents(value: Any, space: str) -> None:
    text = spell(value)
    if space:
        text = text.replace(",", "," + space).replace(":", space + ":" + space)
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return  # not JSON (a spaced-out escape): callers decode first
    assert has_duplicate_keys(text.encode()) == reference(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a":1,"a":2}', True),
        ('{"a":1,"\\u0061":2}', True),  # the same key, spelled with an escape
        ('{"a":"x\\u003ay","a":2}', True),  # an escaped colon (slow path)
        ('{"a\\u003a":1,"a:":2}', True),
        ('{"a":{"b":1},"c":{"b":2}}', False),  # one key in sibling objects is fine
        ('{"a":"::::","b":[{"c":":"}]}', False),
        ('{"a":"\\u003a","b":1}', False),
        ('[{"a":1},{"a":1}]', False),
    ],
)
def test_known_cases(text: str, expected: bool) -> None:
    assert has_duplicate_keys(text.encode()) is expected
    assert reference(text) is expected


# --- where duplicates decide acceptance ---------------------------------------------


def job_with_body(plaintext: bytes) -> bytes:
    sealed = seal_job(
        KEYS,
        job_id="1" * 32,
        app="shop",
        task="refund",
        queue="default",
        payload=b"{}",
        principal=None,
        meta=JobMeta(),
        issued_at=NOW,
        not_before=NOW,
        expires_at=NOW + 60,
    )
    header = open_job(sealed, KEYS, app="shop", tasks={"refund"}, now=NOW).header
    return _seal(KEYS, JOB_DOMAIN, header, plaintext, b"\x00" * 24)


def test_signed_job_body_with_a_repeated_principal_is_refused() -> None:
    """The attack: one signed body, two principals. vaultq (last wins) would run it as
    guest; a reader that keeps the first key (an audit log, another language's worker)
    sees admin. Refused, so every reader sees the same job or none."""
    body = (
        b'{"payload":{},"principal":{"id":"admin","roles":["admin"]},'
        b'"principal":{"id":"guest"},"meta":{}}'
    )
    assert msgspec.json.decode(body)["principal"]["id"] == "guest"  # what vaultq read
    with pytest.raises(MalformedEnvelope, match="repeats a key"):
        open_job(job_with_body(body), KEYS, app="shop", tasks={"refund"}, now=NOW)
    # One defect only: the same body without the repeat opens.
    good = b'{"payload":{},"principal":{"id":"guest"},"meta":{}}'
    assert open_job(job_with_body(good), KEYS, app="shop", tasks={"refund"}, now=NOW)


def test_repeated_key_inside_the_payload_is_refused() -> None:
    body = b'{"payload":{"amount":1,"amount":1000000},"principal":null,"meta":{}}'
    with pytest.raises(MalformedEnvelope, match="repeats a key"):
        open_job(job_with_body(body), KEYS, app="shop", tasks={"refund"}, now=NOW)


def test_result_body_with_a_repeated_status_is_refused() -> None:
    job = open_job(job_with_body(b'{"payload":{}}'), KEYS, app="shop", tasks={"refund"}, now=NOW)
    good = seal_result(KEYS, job.header, ResultBody(status="succeeded"), now=NOW)
    assert open_result(good, KEYS, app="shop", job_id="1" * 32).status == "succeeded"
    header = msgspec.msgpack.decode(msgspec.msgpack.decode(good[3:])[0])
    forged = _seal(
        KEYS,
        RESULT_DOMAIN,
        Header(*header),
        b'{"status":"failed","status":"succeeded","value":1}',
        b"\x00" * 24,
    )
    with pytest.raises(MalformedEnvelope, match="repeats a key"):
        open_result(forged, KEYS, app="shop", job_id="1" * 32)


def test_key_file_with_a_repeated_key_is_refused() -> None:
    """``"revoked"`` twice: vaultq kept the last (nothing revoked) while a tool keeping
    the first would report the stolen key as revoked."""
    keyring = Keyring.generate().rotate()
    old = next(k for k in keyring.key_ids if k != keyring.active_key_id)
    text = keyring.to_json()
    doubled = text.rstrip().rstrip("}") + f',"revoked":["{old}"],"revoked":[]}}'
    assert not Keyring.from_dict(json.loads(doubled)).is_revoked(old)  # last wins
    with pytest.raises(KeyringError, match="repeats a key"):
        Keyring.from_json(doubled)
    # The loader still reads the same file without the repeat.
    assert Keyring.from_json(text.rstrip().rstrip("}") + f',"revoked":["{old}"]}}').is_revoked(old)
