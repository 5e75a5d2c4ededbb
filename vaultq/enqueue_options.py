"""The per-call options of one enqueue, bundled once where the public call is made.

``task.enqueue``/``enqueue_many``/``*_sync`` build one :class:`EnqueueOptions` and hand it
through :func:`vaultq.enqueue.enqueue`, :func:`vaultq.enqueue.flow` and
:func:`vaultq.enqueue_sync.enqueue_sync` unchanged, so a new option is added in one place
instead of in every forwarding signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import msgspec

from vaultq.envelope_types import Dependency
from vaultq.principal import Principal
from vaultq.priority import PriorityLike

__all__ = ["EnqueueOptions", "OnDuplicate"]

OnDuplicate = Literal["return", "raise"]


class EnqueueOptions(msgspec.Struct, frozen=True, kw_only=True):
    """One enqueue call's options (see ``Task.enqueue`` for each one's meaning).

    ``job_ids``: one custom id per payload (None: new time-ordered ids). ``depends``:
    the jobs and workflows this job waits for (``vaultq.depends``)."""

    principal: Principal | None = None
    delay: float | None = None
    at: datetime | float | None = None
    queue: str | None = None
    job_ids: Sequence[str] | None = None
    timeout: float | None = None
    unique_key: str | None = None
    unique_for: float | None = None
    on_duplicate: OnDuplicate = "return"
    priority: PriorityLike | None = None
    depends: tuple[Dependency, ...] | None = None
