"""vaultq/batchsig.py alone: the Merkle tree, audit paths, the proof encoding, the signed
root message and the cache of verified roots. No envelope, no broker."""

from __future__ import annotations

import hashlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaultq import batchsig
from vaultq.batchsig import (
    BATCH_DOMAIN,
    MAX_LEAVES,
    RootCache,
    audit_paths,
    decode_proof,
    encode_proof,
    leaf_hash,
    path_length,
    root_from_path,
    root_message,
    tree_root,
)
from vaultq.envelope import JOB_DOMAIN, RESULT_DOMAIN


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_small_trees_match_rfc_9162_by_hand() -> None:
    a, b, c, d, e = leaves(5)
    assert leaf_hash(b"x") == h(b"\x00x")
    assert tree_root([a]) == a
    assert tree_root([a, b]) == h(b"\x01" + a + b)
    ab = h(b"\x01" + a + b)
    cd = h(b"\x01" + c + d)
    # 3 leaves: split at 2 (the largest power of two below 3), so c is promoted.
    assert tree_root([a, b, c]) == h(b"\x01" + ab + c)
    abcd = h(b"\x01" + ab + cd)
    assert tree_root([a, b, c, d, e]) == h(b"\x01" + abcd + e)
    assert audit_paths([a, b, c, d, e]) == [[b, cd, e], [a, cd, e], [d, ab, e], [c, ab, e], [abcd]]
    assert [path_length(i, 5) for i in range(5)] == [3, 3, 3, 3, 1]
    with pytest.raises(ValueError, match="at least one"):
        tree_root([])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=1, max_value=300), data=st.data())
def test_every_path_leads_to_the_root_and_nothing_else_does(n: int, data: st.DataObject) -> None:
    hashes = leaves(n)
    root = tree_root(hashes)
    paths = audit_paths(hashes)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = paths[i]
    assert len(path) == path_length(i, n) <= 9
    assert root_from_path(hashes[i], i, n, path) == root
    proof = decode_proof(encode_proof(i, n, path))
    assert proof is not None
    assert (proof.index, proof.count, list(proof.path)) == (i, n, path)
    # The leaf at any other index, with this path, does not reach the root.
    j = data.draw(st.integers(min_value=0, max_value=n - 1))
    if j != i:
        assert root_from_path(hashes[j], i, n, path) != root
        assert root_from_path(hashes[i], j, n, path) != root
    # Any one flipped bit in any sibling breaks it.
    if path:
        k = data.draw(st.integers(min_value=0, max_value=len(path) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        bad = bytearray(path[k])
        bad[bit // 8] ^= 1 << (bit % 8)
        tampered = [*path[:k], bytes(bad), *path[k + 1 :]]
        assert root_from_path(hashes[i], i, n, tampered) != root
    # A path one hash short or long is no path at all.
    assert root_from_path(hashes[i], i, n, [*path, root]) is None
    if path:
        assert root_from_path(hashes[i], i, n, path[:-1]) is None


def test_positions_outside_the_tree_have_no_root() -> None:
    hashes = leaves(4)
    path = audit_paths(hashes)[0]
    assert root_from_path(hashes[0], 4, 4, path) is None
    assert root_from_path(hashes[0], -1, 4, path) is None
    assert root_from_path(hashes[0], 0, 0, []) is None


def test_proof_encoding_and_its_refusals() -> None:
    path = [bytes([i]) * 32 for i in range(3)]
    raw = encode_proof(1, 5, path)
    assert raw == b"\x00\x00\x00\x01\x00\x00\x00\x05" + b"".join(path)
    assert decode_proof(raw) is not None
    assert decode_proof(encode_proof(0, 1, [])) is not None
    assert decode_proof(b"") is None
    assert decode_proof(raw[:7]) is None
    assert decode_proof(raw[:-1]) is None  # not whole hashes
    assert decode_proof(raw + bytes(32)) is None  # one hash too many
    assert decode_proof(raw[:-32]) is None  # one too few
    assert decode_proof(encode_proof(5, 5, path)) is None  # index not below count
    assert decode_proof(encode_proof(0, 0, [])) is None
    top = [bytes(32)] * 16
    assert decode_proof(encode_proof(0, MAX_LEAVES, top)) is not None
    assert decode_proof(encode_proof(0, MAX_LEAVES + 1, [*top, bytes(32)])) is None


def test_the_root_message_and_its_domain() -> None:
    root = bytes(range(32))
    message = root_message("s00000001", 5, root)
    assert message == BATCH_DOMAIN + b"\x09s00000001" + b"\x00\x00\x00\x05" + root
    assert BATCH_DOMAIN.hex() == "7661756c74712f76312f626174636800"
    # No signed string of one kind starts like one of another (domain separation).
    for a in (JOB_DOMAIN, RESULT_DOMAIN, BATCH_DOMAIN):
        for b in (JOB_DOMAIN, RESULT_DOMAIN, BATCH_DOMAIN):
            assert a == b or not b.startswith(a)
    with pytest.raises(ValueError):
        root_message("", 1, root)


class Counting:
    def __init__(self, answer: bool = True) -> None:
        self.calls = 0
        self.answer = answer

    def __call__(self, message: bytes, signature: bytes) -> bool:
        self.calls += 1
        return self.answer


def test_the_cache_verifies_once_and_never_remembers_a_failure() -> None:
    cache = RootCache(size=2)
    ok = Counting()
    assert cache.verified(b"m1", b"s1", ok) and cache.verified(b"m1", b"s1", ok)
    assert ok.calls == 1
    bad = Counting(answer=False)
    assert not cache.verified(b"m2", b"s2", bad)
    assert not cache.verified(b"m2", b"s2", bad)
    assert bad.calls == 2 and len(cache) == 1
    # Another signature over the same message is another entry: verified afresh.
    assert cache.verified(b"m1", b"other", ok) and ok.calls == 2


def test_a_hit_counts_only_for_the_verifier_that_accepted_it() -> None:
    """A keyring reloaded or rotated has new verifier objects: nothing verified under
    the old one is taken on trust."""
    cache = RootCache()
    first, second = Counting(), Counting(answer=False)
    assert cache.verified(b"m", b"s", first)
    assert not cache.verified(b"m", b"s", second)
    assert second.calls == 1


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = RootCache(size=2)
    v = Counting()
    for m in (b"a", b"b"):
        cache.verified(m, b"s", v)
    cache.verified(b"a", b"s", v)  # a is now the most recent
    cache.verified(b"c", b"s", v)  # b goes
    assert len(cache) == 2 and v.calls == 3
    cache.verified(b"a", b"s", v)
    assert v.calls == 3
    cache.verified(b"b", b"s", v)
    assert v.calls == 4


def test_the_cache_is_safe_across_threads() -> None:
    cache = RootCache(size=64)
    v = Counting()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(500):
                assert cache.verified(bytes([(i + k) % 100]), b"s", v)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) <= 64


def test_module_names() -> None:
    assert set(batchsig.__all__) <= set(dir(batchsig))
