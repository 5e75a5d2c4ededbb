"""Enqueue from views, after the transaction commits.

``enqueue_on_commit`` returns the job id at once; the sealed job reaches the broker only
when the surrounding transaction commits (``transaction.on_commit``), and never when it
rolls back. Outside a transaction it is enqueued at once. Type and policy are checked at
the call, so a view can answer 400/403 before anything is committed.
"""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Any, TypeVar, overload

from asgiref.sync import sync_to_async

from vaultq.django.workflows import Workflow, is_workflow, workflow_on_commit
from vaultq.enqueue import authorize, authorize_sync, check_call
from vaultq.envelope import new_job_id
from vaultq.errors import ConfigurationError
from vaultq.principal import Principal
from vaultq.tasks import Task
from vaultq.workflow_groups import Chord, Group, GroupHandle
from vaultq.workflows import Chain, WorkflowHandle

__all__ = ["aenqueue_on_commit", "check_enqueue", "enqueue_on_commit"]

R = TypeVar("R")


def _check_call(
    task: Task[Any, Any],
    payload: Any,
    principal: Principal | None,
    delay: float | None,
    at: datetime | float | None,
    timeout: float | None,
) -> None:
    if not isinstance(task, Task):
        raise ConfigurationError("enqueue_on_commit() takes a vaultq task (from @app.task)")
    # The same checks as the core enqueue (vaultq.enqueue), before the transaction can
    # commit; they run again when the job is sealed at commit (the payload may change).
    task.check_payload(payload)
    check_call(
        task, principal=principal, delay=delay, at=at, timeout=timeout, now=task.app.clock.local()
    )


async def check_enqueue(
    task: Task[Any, Any], payload: Any, principal: Principal | None, job_id: str
) -> None:
    """Evaluate the task's policy now, as the core does at enqueue; raise
    ``AuthorizationDenied`` when it refuses (so nothing is registered on commit)."""
    await authorize(task.app, task, payload, principal, job_id)


@overload
def enqueue_on_commit(
    task: Task[Any, Any],
    payload: Any,
    *,
    request: Any = None,
    principal: Principal | None = None,
    using: str | None = None,
    delay: float | None = None,
    at: datetime | float | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    robust: bool = False,
) -> str: ...


@overload
def enqueue_on_commit(
    task: Chain[R],
    *,
    request: Any = None,
    principal: Principal | None = None,
    using: str | None = None,
    robust: bool = False,
    workflow_id: str | None = None,
) -> WorkflowHandle[R]: ...


@overload
def enqueue_on_commit(
    task: Group[R],
    *,
    request: Any = None,
    principal: Principal | None = None,
    using: str | None = None,
    robust: bool = False,
    workflow_id: str | None = None,
) -> GroupHandle[list[R]]: ...


@overload
def enqueue_on_commit(
    task: Chord[R],
    *,
    request: Any = None,
    principal: Principal | None = None,
    using: str | None = None,
    robust: bool = False,
    workflow_id: str | None = None,
) -> GroupHandle[R]: ...


def enqueue_on_commit(
    task: Task[Any, Any] | Workflow,
    payload: Any = None,
    *,
    request: Any = None,
    principal: Principal | None = None,
    using: str | None = None,
    delay: float | None = None,
    at: datetime | float | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    robust: bool = False,
    workflow_id: str | None = None,
) -> str | WorkflowHandle[Any]:
    """Enqueue ``payload`` for ``task`` when the current transaction on ``using`` commits.

    ``task`` may also be a workflow (a ``Chain``, ``Group`` or ``Chord``, without a
    payload): it is enqueued whole on commit, under a workflow id chosen now, and its
    handle is returned at once (``vaultq.django.workflows``).

    The principal is ``principal``, else ``request.user``'s (see
    :func:`principal_from_request`), else the one set by :func:`acting_as`. Returns the
    job id at once (``app.job(job_id).status_sync()`` follows it). On rollback nothing is
    enqueued and the id stays PENDING forever.

    Raises ``PayloadError`` (wrong payload type, or a field of the wrong type, naming
    the field), ``AuthorizationDenied`` (the policy
    refused: nothing will be enqueued), ``ConfigurationError``; ``BrokerError`` at
    commit time (from the committing ``atomic`` block) unless ``robust=True``, in which
    case a broker failure is logged by Django and the job is lost.

    For sync code (views, signals, management commands). In async views use
    :func:`aenqueue_on_commit`.
    """
    from django.db import transaction

    from vaultq.django.principal import current_principal, principal_from_request

    if principal is None:
        principal = principal_from_request(request) if request is not None else None
    if principal is None:
        principal = current_principal()
    if is_workflow(task):
        if payload is not None or delay is not None or at is not None or queue or timeout:
            raise ConfigurationError(
                "enqueue_on_commit(workflow) takes no payload, delay, at, queue or timeout: "
                "the workflow's steps carry their own"
            )
        workflow = typing.cast("Workflow", task)
        return workflow_on_commit(
            workflow, principal=principal, using=using, robust=robust, workflow_id=workflow_id
        )
    if workflow_id is not None:
        raise ConfigurationError("workflow_id= is for workflows; a job takes job ids elsewhere")
    task = typing.cast("Task[Any, Any]", task)
    _check_call(task, payload, principal, delay, at, timeout)
    job_id = new_job_id()
    authorize_sync(task.app, task, payload, principal, job_id)  # in this thread, no loop hop

    def push() -> None:
        task.enqueue_sync(
            payload,
            principal=principal,
            delay=delay,
            at=at,
            queue=queue,
            job_id=job_id,
            timeout=timeout,
        )

    # Outside an atomic block on_commit runs push() right away.
    transaction.on_commit(push, using=using, robust=robust)
    return job_id


async def aenqueue_on_commit(
    task: Task[Any, Any],
    payload: Any,
    *,
    request: Any = None,
    principal: Principal | None = None,
    delay: float | None = None,
    at: datetime | float | None = None,
    queue: str | None = None,
    timeout: float | None = None,
) -> str:
    """The async-view twin of :func:`enqueue_on_commit`.

    Async code cannot hold an ``atomic`` block, so the job is enqueued at once (a sync
    helper run through ``sync_to_async`` inside ``atomic`` should call
    :func:`enqueue_on_commit` itself). The user comes from ``await request.auser()``.
    """
    from vaultq.django.principal import current_principal, principal_from_user

    if principal is None and request is not None:
        auser = getattr(request, "auser", None)
        user = await auser() if auser is not None else getattr(request, "user", None)
        principal = await sync_to_async(principal_from_user)(user)
    if principal is None:
        principal = current_principal()
    _check_call(task, payload, principal, delay, at, timeout)
    job_id = new_job_id()
    await check_enqueue(task, payload, principal, job_id)
    await task.enqueue(
        payload,
        principal=principal,
        delay=delay,
        at=at,
        queue=queue,
        job_id=job_id,
        timeout=timeout,
    )
    return job_id
