"""Typed workflows: chains of tasks whose wiring mypy and the builder check, and whose
continuations only a producer's signature authorizes (``docs/workflows.md``).

``task_a.s(payload).then(task_b).then(task_c)`` builds a :class:`Chain`; each ``then``
takes a task whose payload type is the previous task's return type (mypy rejects any
other, and the builder raises ``TaskDefinitionError`` when the types are only known at
run time). ``await chain.enqueue(principal=...)`` seals *every* step at once, each
envelope signed by the producer and nested in the previous step's sealed ``meta.flow``,
and writes only the first; a worker that finishes a step enqueues the envelope its plan
carries, nothing else (``vaultq.runtime.continuations``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from vaultq.enqueue import authorize, check_call
from vaultq.envelope import FlowStep, JobMeta, new_job_id, seal_job
from vaultq.errors import JobError, PayloadError, TaskDefinitionError
from vaultq.jobs import JobHandle, JobStatus

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.brokers.base import CancelState
    from vaultq.principal import Principal
    from vaultq.tasks import Task

__all__ = ["Chain", "StepStatus", "WorkflowFailed", "WorkflowHandle"]

R = TypeVar("R")
R2 = TypeVar("R2")
S = TypeVar("S", bound=msgspec.Struct)

MAX_STEPS = 64
"""Each step's envelope nests the next one's, so an envelope grows with the steps after
it; a chain longer than this is refused when built."""


class WorkflowFailed(JobError):
    """A workflow step ended without succeeding; the chain stopped there.

    ``step`` is its index (0-based), ``status`` its final state (``failed``,
    ``denied``, ``timed_out``, ``rejected``, ``expired``, ``cancelled``) and the message
    carries the step's own error."""

    def __init__(self, message: str, *, job_id: str, step: int, step_status: str) -> None:
        super().__init__(message, job_id=job_id, reason=step_status)
        self.step = step
        self.status = step_status


class StepStatus(msgspec.Struct, frozen=True):
    """One step of a workflow as :meth:`WorkflowHandle.steps` reports it."""

    index: int
    task: str
    job_id: str
    status: JobStatus
    error: str | None = None


class _Step(msgspec.Struct, frozen=True):
    task: Any  # Task[Any, Any]; msgspec cannot type a generic class here
    payload: Any = None


class Chain(Generic[R]):
    """Steps that run one after the other, each fed the previous step's result.

    Build with ``task.s(payload)`` then ``.then(task)``; ``R`` is the last task's
    result type, so ``await chain.enqueue(...)`` gives a ``WorkflowHandle[R]``."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Sequence[_Step]) -> None:
        self._steps = tuple(steps)

    @classmethod
    def first(cls, task: Task[Any, R], payload: Any) -> Chain[R]:
        if not isinstance(payload, task.payload_type):
            raise PayloadError(
                f"task {task.name!r} takes a {task.payload_type.__name__} payload, "
                f"got {type(payload).__name__}"
            )
        return Chain([_Step(task, payload)])

    @property
    def tasks(self) -> tuple[Task[Any, Any], ...]:
        return tuple(step.task for step in self._steps)

    @property
    def payload(self) -> Any:
        """The first step's payload (the one sealed at enqueue)."""
        return self._steps[0].payload

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return "Chain(" + " -> ".join(step.task.name for step in self._steps) + ")"

    def then(self: Chain[S], task: Task[S, R2]) -> Chain[R2]:
        """This chain followed by ``task``, which receives this chain's result as its
        payload. Raises ``TaskDefinitionError`` when ``task``'s payload type is not the
        previous task's return type, the previous task does not store its result (the
        result is what feeds ``task``), the tasks belong to different apps, or the chain
        would exceed ``MAX_STEPS``."""
        last = self._steps[-1].task
        if task.app is not last.app:
            raise TaskDefinitionError(
                f"cannot chain {task.name!r} after {last.name!r}: they belong to different apps"
            )
        if task.payload_type is not last.result_type:
            raise TaskDefinitionError(
                f"cannot chain {task.name!r} after {last.name!r}: {task.name!r} takes a "
                f"{_type_name(task.payload_type)} payload but {last.name!r} returns "
                f"{_type_name(last.result_type)}; make the types match (an adapter task "
                "between them converts one into the other)"
            )
        if not last.options.store_result:
            raise TaskDefinitionError(
                f"cannot chain {task.name!r} after {last.name!r}: {last.name!r} has "
                "store_result=False, and its result is what feeds the next step"
            )
        if len(self._steps) >= MAX_STEPS:
            raise TaskDefinitionError(f"a chain has at most {MAX_STEPS} steps")
        return Chain([*self._steps, _Step(task)])

    async def enqueue(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> WorkflowHandle[R]:
        """Seal every step (producer-signed, each carrying the next) and write the first.

        The first step's policy is evaluated now, as for ``task.enqueue``; every step's
        policy is evaluated again by the worker that runs it, with the payload it
        actually receives. ``workflow_id`` (default: a new time-ordered id) must be
        1-120 letters, digits, ``_.:-``; step ``i``'s job id is ``f"{workflow_id}.{i}"``,
        written with "enqueue unless it exists", so enqueueing the same workflow id
        twice starts it once. Raises what ``task.enqueue`` raises."""
        first = self._steps[0].task
        app = first.app
        now = app.clock.local()
        for step in self._steps:
            start = check_call(
                step.task, principal=principal, delay=None, at=None, timeout=None, now=now
            )
        workflow = new_job_id(now) if workflow_id is None else workflow_id
        ids = [f"{workflow}.{i}" for i in range(len(self._steps))]
        encoded = first.check_payload(self._steps[0].payload)
        await authorize(app, first, self._steps[0].payload, principal, ids[0])
        # Each step stays valid for its own window after the previous one's latest end:
        # a step may wait that long for its queue, retries and deadline included.
        expiries: list[float] = []
        horizon = start
        for step in self._steps:
            options = step.task.options
            horizon += options.expires + options.timeout_ceiling * step.task.max_attempts
            horizon += options.max_backoff * options.retries
            expiries.append(horizon)
        # Sealed from the last step back: each envelope nests the next one, so the
        # producer's signature over step i covers the whole plan after it.
        envelope: bytes | None = None
        n = len(self._steps)
        for i in range(n - 1, -1, -1):
            task = self._steps[i].task
            before = self._steps[i - 1].task if i else None
            flow = FlowStep(
                workflow=workflow,
                step=i,
                steps=n,
                input_task=before.name if before is not None else None,
                input_queue=before.queue if before is not None else None,
                next=envelope,
            )
            envelope = seal_job(
                app.keyring,
                job_id=ids[i],
                app=app.name,
                task=task.name,
                queue=task.queue,
                payload=encoded if i == 0 else b"null",
                principal=principal,
                meta=JobMeta(flow=flow),
                issued_at=now,
                not_before=start,
                expires_at=expiries[i],
                version=app.envelope_version,
            )
        if envelope is None:  # a Chain has at least one step
            raise TaskDefinitionError("a workflow needs at least one step")
        if len(envelope) > app.max_envelope_size:
            raise PayloadError(
                f"the sealed workflow is {len(envelope)} bytes, over the app's "
                f"max_envelope_size ({app.max_envelope_size}); shorten the chain or send "
                "references instead of data"
            )
        from vaultq.brokers.base import EnqueueItem

        broker = await app.broker()
        await broker.enqueue_unique(
            EnqueueItem(queue=first.queue, job_id=ids[0], envelope=envelope, not_before=None),
            ttl=expiries[0] - now + app.clock_skew,
        )
        return WorkflowHandle(app, workflow, self.tasks)

    def enqueue_sync(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> WorkflowHandle[R]:
        """:meth:`enqueue` for synchronous code."""
        app = self._steps[0].task.app
        handle: WorkflowHandle[R] = app.run_sync(
            self.enqueue, principal=principal, workflow_id=workflow_id
        )
        return handle


class WorkflowHandle(Generic[R]):
    """The producer's handle on an enqueued workflow: per-step status, the final typed
    result, which step stopped the chain and why, and ``cancel()``. Pass it (or a
    ``JobHandle``) to ``task.enqueue(..., depends_on=[...])``."""

    def __init__(self, app: App, workflow_id: str, tasks: Sequence[Task[Any, Any]]) -> None:
        self.app = app
        self.id = workflow_id
        self.tasks: tuple[Task[Any, Any], ...] = tuple(tasks)
        self.handles: tuple[JobHandle[Any], ...] = tuple(
            JobHandle(
                app.results,
                f"{workflow_id}.{i}",
                queue=task.queue,
                task_name=task.name,
                decode=task.result_codec.decode,
            )
            for i, task in enumerate(tasks)
        )

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, steps={len(self.handles)})"

    async def steps(self) -> list[StepStatus]:
        """Each step's status; steps after one that did not succeed stay PENDING (they
        are never enqueued)."""
        out: list[StepStatus] = []
        for i, handle in enumerate(self.handles):
            body = await handle.outcome()
            if body is None:
                status = await handle.status()
                out.append(StepStatus(i, handle.task_name or "", handle.id, status))
            else:
                out.append(
                    StepStatus(
                        i, handle.task_name or "", handle.id, JobStatus(body.status), body.error
                    )
                )
        return out

    async def result(self, timeout: float | None = 30.0) -> R:
        """Wait for the last step and return its typed result. Raises ``WorkflowFailed``
        naming the first step that did not succeed, ``TimeoutError`` when the workflow
        has not finished in ``timeout`` seconds (for the whole chain)."""
        import anyio

        with anyio.fail_after(timeout):
            for i, handle in enumerate(self.handles):
                body = await self.app.results.wait_outcome(
                    handle.queue, handle.id, None, handle.task_name
                )
                if body.status != JobStatus.SUCCEEDED:
                    raise WorkflowFailed(
                        f"workflow {self.id} stopped at step {i} ({handle.task_name}): "
                        f"{body.status}"
                        + (f" ({body.error_type}: {body.error})" if body.error else ""),
                        job_id=handle.id,
                        step=i,
                        step_status=body.status,
                    )
        last: R = await self.handles[-1].result(timeout=1.0)
        return last

    def result_sync(self, timeout: float | None = 30.0) -> R:
        result: R = self.app.run_sync(self.result, timeout)
        return result

    def steps_sync(self) -> list[StepStatus]:
        steps: list[StepStatus] = self.app.run_sync(self.steps)
        return steps

    async def cancel(self) -> CancelState:
        """Cancel the workflow: steps not enqueued yet never will be (the broker refuses
        the forwarding write, even from a step finishing right now), a waiting step never
        starts, a running one is cancelled at its next await. ``result()`` then raises
        ``WorkflowFailed`` at the step that was stopped (status ``cancelled``). Returns
        FINISHED (a no-op) when the workflow had already ended. See
        ``vaultq.workflow_control``."""
        from vaultq.workflow_control import cancel_workflow

        return await cancel_workflow(self.app, self.id, self.tasks)

    def cancel_sync(self) -> CancelState:
        """:meth:`cancel` for synchronous code."""
        state: CancelState = self.app.run_sync(self.cancel)
        return state


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or repr(kind)
