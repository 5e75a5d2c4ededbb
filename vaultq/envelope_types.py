"""The envelope format's data: version tags, domains, limits, and the msgspec structs of
the header and of the job and result bodies (``docs/envelope.md`` specifies them; its
tables are checked against these structs by ``tests/test_envelope_spec.py``).

No cryptography here: sealing, opening and the checks between them are
``vaultq.envelope``, which re-exports every name below. Code that only builds or reads
these values (job metadata, workflow steps, result bodies, job ids) imports them from
here or from ``vaultq.envelope``, whichever it already uses.
"""

from __future__ import annotations

import os
import re
import time
from typing import Annotated

import msgspec

from vaultq.principal import Principal

__all__ = [
    "JOB_DOMAIN",
    "JOB_ID_FORM",
    "MAGIC",
    "MAGIC_V2",
    "MAX_TIME_MS",
    "NONCE_SIZE",
    "NONCE_SIZE_V2",
    "RESULT_DOMAIN",
    "VERSION",
    "VERSIONS",
    "ChordLink",
    "Dependency",
    "FlowStep",
    "Gather",
    "Header",
    "JobBody",
    "JobMeta",
    "JobParts",
    "OpenedJob",
    "ResultBody",
    "ResultWire",
    "WireContainer",
    "new_job_id",
]


VERSION = 2
"""The format version new envelopes are sealed with (unless told otherwise)."""
VERSIONS = (1, 2)
MAGIC = b"VQ\x01"
"""Version tag of v1: ``b"VQ"`` followed by the format version byte."""
MAGIC_V2 = b"VQ\x02"
JOB_DOMAIN = b"vaultq/v1/job\x00"
RESULT_DOMAIN = b"vaultq/v1/result\x00"
NONCE_SIZE = 12
"""v1 nonce size (AES-256-GCM)."""
NONCE_SIZE_V2 = 24
"""v2 nonce size (XAES-256-GCM)."""
MAX_TIME_MS = 2**53 - 1
"""Header times are integer milliseconds in ``0..MAX_TIME_MS``: every language's number
type holds them exactly (a double's 53-bit mantissa), and no sane time is outside."""
JOB_ID_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""The job ids vaultq seals and opens (full match): ``new_job_id``'s 32 lowercase hex
characters, or a custom id of 1-128 letters, digits, ``_ . : -`` starting with a letter
or digit (``app.enqueue(job_ids=...)``)."""


# forbid_unknown_fields on the array-like wire structs: an array with more elements than
# the spec lists is refused, not silently truncated (msgspec's default).
class Header(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    version: int
    job_id: str
    app: str
    task: str
    queue: str
    issued_at: int
    not_before: int
    expires_at: int
    key_id: str
    signer_id: str


class ChordLink(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """On a chord member: the callback the producer signed into the plan
    (``vaultq.workflow_groups``). A worker that finishes the member records its sealed
    result in the chord's broker state and, when every member has one, enqueues
    ``callback`` -- this envelope, nothing else."""

    callback: bytes
    """The callback's complete envelope, sealed and signed by the producer."""
    allow_failures: bool = False
    """Members that did not succeed arrive too (the callback gets typed outcomes)."""


class Gather(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """On a chord callback: the members whose sealed results are its payload, in order
    (member ``i`` is job ``f"{workflow}.{i}"``)."""

    members: Annotated[int, msgspec.Meta(ge=1, le=1024)]
    tasks: tuple[str, ...]
    """Each member's task, or one name when every member runs the same task."""
    queues: tuple[str, ...]
    """Each member's queue, or one name when every member uses the same queue."""
    allow_failures: bool = False

    def task_of(self, member: int) -> str:
        return self.tasks[member if len(self.tasks) > 1 else 0]

    def queue_of(self, member: int) -> str:
        return self.queues[member if len(self.queues) > 1 else 0]


class FlowStep(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A workflow step's place in its producer-signed plan (``docs/workflows.md``).

    Sealed inside the step's own envelope, so the producer's signature covers it: a
    worker cannot change which step comes next, its task or its principal."""

    workflow: str
    """The workflow id; step ``i``'s job id is ``f"{workflow}.{i}"``."""
    step: Annotated[int, msgspec.Meta(ge=0, le=1023)]
    steps: Annotated[int, msgspec.Meta(ge=1, le=1024)]
    input_task: str | None = None
    """Task of the step whose SUCCEEDED result is this step's payload (None: the first
    step, whose payload is sealed here)."""
    input_queue: str | None = None
    next: bytes | None = None
    """The next step's complete envelope, sealed and signed by the producer: the only
    job a worker finishing this step may enqueue."""
    chord: ChordLink | None = None
    """Set on the members of a chord (``step`` is the member index, ``steps`` the count)."""
    gather: Gather | None = None
    """Set on a chord's callback (``step`` = ``steps - 1`` = the member count)."""


class JobMeta(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    parent_id: str | None = None
    """A wire slot of the envelope format (docs/envelope.md) that vaultq neither fills nor
    reads: declared so that envelopes from producers that set it still open (unknown
    fields are refused), not for any behaviour."""
    trace: dict[str, str] | None = None
    # Checked on decode: a zero or negative deadline is no deadline a producer meant.
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Per-enqueue attempt timeout override (seconds), capped by the task's max_timeout."""
    flow: FlowStep | None = None
    """Set on the steps of a workflow (``vaultq.workflows``)."""
    depends: (
        Annotated[tuple[Dependency, ...], msgspec.Meta(min_length=1, max_length=256)] | None
    ) = None
    """``depends_on=``: jobs whose SUCCEEDED outcome this job waits for (``vaultq.depends``)."""


class Dependency(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job another waits for, named by the producer inside the dependent's seal: its
    outcome is read from ``queue`` and opened bound to ``job_id`` and ``task``."""

    job_id: str
    queue: str
    task: str


class JobBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: msgspec.Raw
    principal: Principal | None = None
    meta: JobMeta = JobMeta()


class JobParts(msgspec.Struct, frozen=True):
    """A job sealed but not yet signed (``vaultq.envelope.seal_job_parts``): what
    ``vaultq.envelope_batch.seal_batch`` signs together with the rest of its batch."""

    version: int
    header: bytes
    nonce: bytes
    ciphertext: bytes

    @property
    def signed(self) -> bytes:
        """The string a single signature would cover: the batch tree's leaf input."""
        return b"".join((JOB_DOMAIN, self.header, self.nonce, self.ciphertext))


class OpenedJob(msgspec.Struct, frozen=True):
    header: Header
    body: JobBody


class ResultBody(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    status: str
    value: msgspec.Raw | None = None
    error_type: str | None = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    principal_id: str | None = None
    """Id of the job's principal (absent for jobs enqueued without one): sealed into the
    result so a reader can be checked against it (``JobHandle.result(reader=...)``)."""


_TIMESTAMP_MASK = (1 << 48) - 1


def new_job_id(now: float | None = None) -> str:
    """A time-ordered 128-bit id: 48-bit milliseconds since the epoch then 80 random bits,
    as 32 lowercase hex characters (ids sort by creation time to the millisecond)."""
    ms = int((time.time() if now is None else now) * 1000) & _TIMESTAMP_MASK
    return (ms.to_bytes(6, "big") + os.urandom(10)).hex()


# The wire forms below are the envelope module's (vaultq/envelope.py), kept here with the
# other structs of the format.


class ResultWire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Decode-side twin of ResultBody: msgspec cannot decode ``Raw | None`` as raw JSON
    (the union only accepts null), so ``value`` is decoded as ``Raw`` (empty = absent)."""

    status: str
    value: msgspec.Raw = msgspec.Raw()
    error_type: str | None = None
    error: str | None = None
    # Ranges a worker can produce: no negative counts or times (docs/envelope.md).
    attempts: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    started_at: Annotated[float, msgspec.Meta(ge=0)] | None = None
    finished_at: Annotated[float, msgspec.Meta(ge=0)] | None = None
    worker_id: str | None = None
    principal_id: str | None = None


class WireContainer(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The msgpack array after the version tag (docs/envelope.md)."""

    header: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    # Present (a bin) only in a batch-signed job; a nil here fails the canonical length.
    proof: bytes | None = None
