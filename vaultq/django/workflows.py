"""Workflows (chains, groups, chords) enqueued when the transaction commits.

``enqueue_on_commit(chain, request=request)`` checks now what the workflow's own
``enqueue`` checks at the call (types, the keyring can sign, the policy of each step
that is written first: a chain's first step, every member of a group or chord) and
registers the enqueue with ``transaction.on_commit``: on commit the whole workflow is
sealed and its first jobs written, under the workflow id chosen now; on rollback
nothing is written. The handle is returned at once (its steps stay PENDING until the
commit, and for ever after a rollback). The Django Tasks backend does not expose
workflows: they are vaultq's own API (``docs/django.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultq.enqueue import authorize_sync, check_call
from vaultq.envelope import new_job_id
from vaultq.workflow_groups import Chord, Group, GroupHandle
from vaultq.workflows import Chain, WorkflowHandle

if TYPE_CHECKING:
    from vaultq.principal import Principal
    from vaultq.tasks import Task

__all__ = ["Workflow", "is_workflow", "workflow_on_commit"]

Workflow = Chain[Any] | Group[Any] | Chord[Any]


def is_workflow(target: object) -> bool:
    return isinstance(target, Chain | Group | Chord)


def workflow_on_commit(
    workflow: Workflow,
    *,
    principal: Principal | None,
    using: str | None,
    robust: bool,
    workflow_id: str | None,
) -> WorkflowHandle[Any]:
    """See the module docstring; ``principal`` is already resolved by the caller."""
    from django.db import transaction

    first = _first_jobs(workflow)
    app = first[0][0].app
    now = app.clock.local()
    wid = new_job_id(now) if workflow_id is None else workflow_id
    for task in {id(t): t for t in _tasks(workflow)}.values():
        check_call(task, principal=principal, delay=None, at=None, timeout=None, now=now)
    for i, (task, payload) in enumerate(first):
        task.check_payload(payload)
        authorize_sync(app, task, payload, principal, f"{wid}.{i}")  # in this thread

    def push() -> None:
        workflow.enqueue_sync(principal=principal, workflow_id=wid)

    # Outside an atomic block on_commit runs push() right away.
    transaction.on_commit(push, using=using, robust=robust)
    return _handle(workflow, wid)


def _first_jobs(workflow: Workflow) -> list[tuple[Task[Any, Any], Any]]:
    """The jobs the workflow's enqueue writes (and authorizes) itself, with payloads."""
    if isinstance(workflow, Chain):
        return [(workflow.tasks[0], workflow.payload)]
    group = workflow.group if isinstance(workflow, Chord) else workflow
    return [(member.tasks[0], member.payload) for member in group.members]


def _tasks(workflow: Workflow) -> list[Task[Any, Any]]:
    if isinstance(workflow, Chain):
        return list(workflow.tasks)
    if isinstance(workflow, Chord):
        return [*workflow.group.tasks, workflow.callback]
    return list(workflow.tasks)


def _handle(workflow: Workflow, wid: str) -> WorkflowHandle[Any]:
    """The handle the workflow's ``enqueue`` would return for id ``wid``."""
    if isinstance(workflow, Chain):
        return WorkflowHandle(workflow.tasks[0].app, wid, workflow.tasks)
    if isinstance(workflow, Chord):
        tasks = [*workflow.group.tasks, workflow.callback]
        return GroupHandle(
            workflow.callback.app,
            wid,
            tasks,
            callback=True,
            allow_failures=workflow.allow_failures,
        )
    return GroupHandle(workflow.tasks[0].app, wid, workflow.tasks, callback=False)
