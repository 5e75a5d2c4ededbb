"""``depends_on=`` for plain jobs (RQ-style): ``task.enqueue(p, depends_on=[h1, h2])``.

The dependent job is sealed by the producer at enqueue like any job, with the jobs it
waits for listed inside the seal (``meta.depends``: job id, queue and task of each). It is
written to the broker at once, as an ordinary job: the broker needs no new state and no
new operation, so a ``kill -9`` anywhere is an ordinary redelivery (nothing is lost, and
the job-id claim keeps it from running twice).

A worker that fetches it reads each dependency's sealed outcome from the broker
(``vaultq.runtime.dependencies``) and

* runs it when every dependency ``succeeded``;
* ends it ``cancelled`` (error type ``vaultq.DependencyFailed``, dead-letter reason
  ``dependency_failed``) without running it as soon as one ended otherwise (failed,
  denied, timed out, rejected, expired, cancelled);
* otherwise hands it back unchanged (a ``Release``: not an attempt, not a retry) to look
  again later, after 1 s at first and up to every 30 s for a long wait.

Nothing a worker does can alter the dependent (it cannot sign; the list is inside the
producer's seal). See ``docs/workflows.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vaultq.envelope_types import Dependency
from vaultq.errors import ConfigurationError

if TYPE_CHECKING:
    from vaultq.jobs import JobHandle
    from vaultq.workflows import WorkflowHandle

__all__ = ["MAX_DEPENDENCIES", "dependencies"]

MAX_DEPENDENCIES = 256
"""Jobs one dependent may wait for (a workflow counts one per step)."""


def dependencies(
    depends_on: Sequence[JobHandle[Any] | WorkflowHandle[Any]] | None,
) -> tuple[Dependency, ...] | None:
    """The sealed form of ``depends_on``: a job handle is that job; a workflow handle is
    every step of the workflow (it succeeded when each did; a step that did not succeed
    fails the dependent even though later steps never get an outcome), a group's or
    chord's every member and callback, an ``allow_failures`` chord its callback. Raises
    ``ConfigurationError`` for anything else, a handle that does not know its task
    (``app.job(id, task=...)`` gives one), or more than ``MAX_DEPENDENCIES`` jobs."""
    if not depends_on:
        return None
    from vaultq.jobs import JobHandle
    from vaultq.workflow_groups import GroupHandle
    from vaultq.workflows import WorkflowHandle

    out: dict[tuple[str, str], Dependency] = {}
    for target in depends_on:
        if isinstance(target, GroupHandle) and target.has_callback and target.allow_failures:
            # A chord that tolerates failed members succeeded when its callback did.
            handles: Sequence[JobHandle[Any]] = target.handles[-1:]
        elif isinstance(target, WorkflowHandle):
            handles = target.handles
        elif isinstance(target, JobHandle):
            handles = (target,)
        else:
            raise ConfigurationError(
                f"depends_on takes JobHandle and WorkflowHandle objects, not "
                f"{type(target).__name__}; nothing was enqueued"
            )
        for handle in handles:
            if not handle.task_name:
                raise ConfigurationError(
                    f"depends_on: the handle of job {handle.id} does not know its task, "
                    "whose outcome the worker must open; get it with "
                    "app.job(job_id, task=...); nothing was enqueued"
                )
            out.setdefault(
                (handle.queue, handle.id), Dependency(handle.id, handle.queue, handle.task_name)
            )
    if len(out) > MAX_DEPENDENCIES:
        raise ConfigurationError(
            f"depends_on names {len(out)} jobs, over {MAX_DEPENDENCIES}; depend on one job "
            "that depends on the others instead; nothing was enqueued"
        )
    return tuple(out.values())
