"""Sign jobs sealed by :func:`vaultq.envelope.seal_job_parts` as batches: one signature
over the Merkle root of a batch, and each envelope with its audit path
(``docs/envelope.md``, *Batch signatures*; the tree is ``vaultq/batchsig.py``).

The producer's half only: opening a batch-signed job is :func:`vaultq.envelope.open_job`,
whose checks are those of every job but the signature's.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from vaultq import batchsig
from vaultq.envelope_types import MAGIC, MAGIC_V2, JobParts
from vaultq.errors import InvalidArgument, KeyringError
from vaultq.keyring import Keyring

__all__ = ["seal_batch", "seal_batches"]

_MAGICS = {1: MAGIC, 2: MAGIC_V2}
_msgpack_encode = msgspec.msgpack.Encoder().encode


def seal_batch(keyring: Keyring, parts: Sequence[JobParts]) -> list[bytes]:
    """Sign ``parts`` (jobs sealed by ``seal_job_parts`` with this keyring) with ONE
    signature over the Merkle root of their signed strings, and return the envelopes,
    each carrying its audit path.

    Raises ``KeyringError`` for a verify-only keyring and ``InvalidArgument`` for an empty
    batch or one larger than ``batchsig.MAX_LEAVES``."""
    signer_id = keyring.signer_id
    if signer_id is None:
        raise KeyringError(
            "this keyring is verify-only and cannot seal jobs; producers need the full keyring"
        )
    count = len(parts)
    if not 1 <= count <= batchsig.MAX_LEAVES:
        raise InvalidArgument(
            f"a signed batch holds 1 to {batchsig.MAX_LEAVES} jobs; enqueue {count} in "
            "several calls"
        )
    leaves = [batchsig.leaf_hash(p.signed) for p in parts]
    paths = batchsig.audit_paths(leaves)
    root = batchsig.tree_root(leaves)
    signature = keyring.sign(batchsig.root_message(signer_id, count, root))
    return [
        _MAGICS[p.version]
        + _msgpack_encode(
            (p.header, p.nonce, p.ciphertext, signature, batchsig.encode_proof(i, count, paths[i]))
        )
        for i, p in enumerate(parts)
    ]


def seal_batches(keyring: Keyring, parts: Sequence[JobParts]) -> list[bytes]:
    """:func:`seal_batch` over ``parts`` in chunks of ``batchsig.MAX_LEAVES``: one
    signature per chunk (the bound keeps every audit path at most 16 hashes)."""
    step = batchsig.MAX_LEAVES
    return [
        e for at in range(0, len(parts), step) for e in seal_batch(keyring, parts[at : at + step])
    ]
