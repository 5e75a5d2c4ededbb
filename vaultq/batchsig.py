"""Batch signatures: one signature over a Merkle root of many job envelopes. Pure, no I/O.

A producer that seals the jobs of one ``enqueue_many`` call with ``batch_signatures``
signs once, over the root of an RFC 9162-style Merkle tree whose leaves are the exact
strings a single-envelope signature would cover; each envelope carries its leaf index,
the leaf count and its audit path (``docs/envelope.md``, *Batch signatures*, is the
normative text). A worker checks the path up to the root and the root's signature, and
remembers verified roots (:class:`RootCache`) so the Ed25519 check runs once per batch
per process instead of once per job: that is the whole point (issue 15).

Why the tree is built this way:

- leaf = SHA-256(0x00 || signed string), node = SHA-256(0x01 || left || right): the
  prefixes keep a leaf from ever being read as an inner node and back (RFC 9162 §2.1.1),
  so no two different leaf lists of one size share a root without a SHA-256 collision;
- the signed message starts with :data:`BATCH_DOMAIN`, which neither the job nor the
  result domain begins with, so a batch signature never verifies as a single one and
  back;
- the message names the signer's key id and the leaf count: the count fixes the tree's
  shape, so an audit path of one tree never proves a leaf in a tree of another size,
  and the index, which picks left or right at every level, is bound as well.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

__all__ = [
    "BATCH_DOMAIN",
    "HASH_SIZE",
    "MAX_LEAVES",
    "Proof",
    "RootCache",
    "audit_paths",
    "decode_proof",
    "encode_proof",
    "leaf_hash",
    "path_length",
    "proof_verifies",
    "root_from_path",
    "root_message",
    "tree_root",
]

BATCH_DOMAIN = b"vaultq/v1/batch\x00"
"""Prefix of every signed batch root message (hex ``7661756c74712f76312f626174636800``)."""
MAX_LEAVES = 65536
"""Most envelopes one batch signature covers: audit paths stay at most 16 hashes (512 B)."""
HASH_SIZE = 32
_HEAD = struct.Struct(">II")  # index, count

Verify = Callable[[bytes, bytes], bool]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(signed: bytes) -> bytes:
    """SHA-256(0x00 || ``signed``): ``signed`` is what a single signature would cover
    (the job domain, header bytes, nonce and ciphertext)."""
    return _sha256(b"\x00" + signed)


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): RFC 9162's split point."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (leaf hashes), RFC 9162 §2.1.1."""
    if not leaves:
        raise ValueError("a batch needs at least one envelope")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(tree_root(leaves[:k]), tree_root(leaves[k:]))


def audit_paths(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every leaf's audit path (RFC 9162 §2.1.3.1), leaf order, siblings bottom up."""
    paths: list[list[bytes]] = [[] for _ in leaves]
    _fill(leaves, 0, paths)
    return paths


def _fill(leaves: Sequence[bytes], offset: int, paths: list[list[bytes]]) -> bytes:
    # One recursion computes every subtree hash once and appends it to the paths of
    # the leaves on the other side: O(n log n) in all instead of O(n) per leaf.
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    left = _fill(leaves[:k], offset, paths)
    right = _fill(leaves[k:], offset + k, paths)
    for i in range(offset, offset + k):
        paths[i].append(right)
    for i in range(offset + k, offset + len(leaves)):
        paths[i].append(left)
    return _node(left, right)


def path_length(index: int, count: int) -> int:
    """How many hashes the audit path of leaf ``index`` in a tree of ``count`` has."""
    length = 0
    while count > 1:
        k = _split(count)
        if index < k:
            count = k
        else:
            index, count = index - k, count - k
        length += 1
    return length


def root_from_path(leaf: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes | None:
    """The root that ``path`` leads to from ``leaf`` at ``index`` of ``count``, or None
    when the path cannot belong to that position (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < count or len(path) != path_length(index, count):
        return None
    fn, sn, r = index, count - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def root_message(signer_id: str, count: int, root: bytes) -> bytes:
    """The bytes a batch signature covers:
    ``BATCH_DOMAIN || len(signer_id) (1 byte) || signer_id || count (u32 BE) || root``."""
    kid = signer_id.encode()
    if not 0 < len(kid) < 256:
        raise ValueError("a batch signer key id must be 1-255 bytes")
    return b"".join((BATCH_DOMAIN, bytes((len(kid),)), kid, count.to_bytes(4, "big"), root))


class Proof:
    """A decoded proof: this envelope's leaf ``index``, the ``count`` of leaves, and the
    audit ``path`` (sibling hashes, bottom up)."""

    __slots__ = ("count", "index", "path")

    def __init__(self, index: int, count: int, path: tuple[bytes, ...]) -> None:
        self.index = index
        self.count = count
        self.path = path


def encode_proof(index: int, count: int, path: Sequence[bytes]) -> bytes:
    """``index (u32 BE) || count (u32 BE) || path[0] || … || path[k-1]``."""
    return _HEAD.pack(index, count) + b"".join(path)


def decode_proof(data: bytes) -> Proof | None:
    """The proof in ``data``, or None when it is not well formed: a count outside
    1..MAX_LEAVES, an index not below it, or a path of any length but the one the
    position calls for."""
    if len(data) < _HEAD.size:
        return None
    index, count = _HEAD.unpack_from(data)
    if not 1 <= count <= MAX_LEAVES or index >= count:
        return None
    rest = len(data) - _HEAD.size
    if rest != HASH_SIZE * path_length(index, count):
        return None
    path = tuple(data[i : i + HASH_SIZE] for i in range(_HEAD.size, len(data), HASH_SIZE))
    return Proof(index, count, path)


def proof_verifies(
    signed: bytes,
    proof: Proof,
    signer_id: str,
    signature: bytes,
    verify: Verify,
    roots: RootCache | None,
) -> bool:
    """Whether ``proof`` leads from the leaf of ``signed`` to a root whose ``signature``
    (over :func:`root_message` for ``signer_id``) ``verify`` accepts; through ``roots``
    when given, so a batch already verified here costs only the hashes."""
    root = root_from_path(leaf_hash(signed), proof.index, proof.count, proof.path)
    if root is None:
        return False
    message = root_message(signer_id, proof.count, root)
    if roots is None:
        return verify(message, signature)
    return roots.verified(message, signature, verify)


class RootCache:
    """Batch roots whose signature verified, so each batch costs one verification per
    process. Bounded (least recently used out first) and thread-safe (the worker opens
    envelopes on helper threads).

    An entry is added only after its signature verified, and it remembers the verifier
    object that accepted it: a hit counts only if the keyring's verifier for that signer
    *now* is that same object. A keyring reloaded, rotated or revoked is a new keyring
    with new verifier objects, so nothing verified under an older one is reused; the
    envelope code also checks revocation and trust before it asks the cache."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[bytes, bytes], Verify] = OrderedDict()
        self._lock = threading.Lock()

    def verified(self, message: bytes, signature: bytes, verify: Verify) -> bool:
        """Whether ``signature`` over ``message`` is valid under ``verify``: from the
        cache when this very verifier accepted it before, else by verifying (and then
        remembering a success; a failure is never remembered)."""
        key = (message, signature)
        with self._lock:
            hit = self._entries.get(key)
            if hit is verify:
                self._entries.move_to_end(key)
                return True
        if not verify(message, signature):
            return False
        with self._lock:
            self._entries[key] = verify
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._entries)
