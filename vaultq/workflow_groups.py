"""Typed groups and chords: many steps at once, and a callback fed all their results
exactly once, with the wiring checked by mypy and the builder and every job sealed by
the producer (``docs/workflows.md``, "Groups and chords").

``group(a.s(x), a.s(y))`` is a :class:`Group` ``[R]`` whose handle gives ``list[R]``;
``chord(group, callback)`` runs ``callback`` once every member succeeded, with a
:class:`Gathered` ``[R]`` payload (``allow_failures=True``: a :class:`MemberOutcomes` ``[R]``
payload with each member's typed outcome). Enqueueing seals every member *and* the
callback at once; each member carries the callback's producer-signed envelope, and the
worker that completes the chord (an atomic broker operation, ``chord_arrive``) writes
exactly that envelope (``vaultq.runtime.chords``).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar, overload

import msgspec

from vaultq.brokers.base import CancelState, EnqueueItem
from vaultq.brokers.chords import chord_store
from vaultq.enqueue import authorize, check_call
from vaultq.envelope import seal_job
from vaultq.envelope_types import ChordLink, FlowStep, Gather, JobMeta, new_job_id
from vaultq.errors import ConfigurationError, PayloadError, TaskDefinitionError
from vaultq.jobs import JobStatus
from vaultq.workflows import Chain, WorkflowFailed, WorkflowHandle

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.principal import Principal
    from vaultq.tasks import Task

__all__ = [
    "MAX_MEMBERS",
    "Chord",
    "Gathered",
    "Group",
    "GroupHandle",
    "MemberFailed",
    "MemberOutcomes",
    "MemberSucceeded",
    "chord",
    "group",
]

R = TypeVar("R")
R2 = TypeVar("R2")
T = TypeVar("T")

MAX_MEMBERS = 1000
"""Members of one group or chord at most (each member's envelope carries the callback,
and the callback's plan names every member's task when they differ)."""


_WRITES_IN_FLIGHT = 16
"""Member writes in flight at once while a group is enqueued."""


class Gathered(msgspec.Struct, Generic[T], frozen=True, forbid_unknown_fields=True):
    """A chord callback's payload: every member's result, in member order.

    A payload is a class, so declare one per result type:
    ``class Prices(vaultq.Gathered[Priced], frozen=True): pass``."""

    results: list[T]


class MemberSucceeded(msgspec.Struct, Generic[T], frozen=True, tag="succeeded"):
    """A member that succeeded (``allow_failures=True``): its typed result."""

    index: int
    value: T


class MemberFailed(msgspec.Struct, frozen=True, tag="failed"):
    """A member that did not succeed (``allow_failures=True``): its final status
    (``failed``, ``denied``, ``timed_out``, ``expired``, ``cancelled``) and error."""

    index: int
    status: str
    error_type: str | None = None
    error: str | None = None


class MemberOutcomes(msgspec.Struct, Generic[T], frozen=True, forbid_unknown_fields=True):
    """A chord callback's payload with ``allow_failures=True``: each member's outcome,
    in member order. Declare ``class PriceOutcomes(vaultq.MemberOutcomes[Priced], frozen=True)``."""

    outcomes: list[MemberSucceeded[T] | MemberFailed]


class _Gathering(Protocol[T, R2]):
    """A task whose payload is a ``Gathered[T]`` and whose result is ``R2``."""

    @property
    def payload_type(self) -> type[Gathered[T]]: ...

    def s(self, payload: Any = None) -> Chain[R2]: ...


class _Outcoming(Protocol[T, R2]):
    """A task whose payload is a ``MemberOutcomes[T]`` and whose result is ``R2``."""

    @property
    def payload_type(self) -> type[MemberOutcomes[T]]: ...

    def s(self, payload: Any = None) -> Chain[R2]: ...


class Group(Generic[R]):
    """Steps that run at the same time; the handle's result is their results, in order.

    Build with :func:`group`; every member is one step (``task.s(payload)``) and every
    member's task returns the same type ``R``."""

    __slots__ = ("_members",)

    def __init__(self, members: Sequence[Chain[R]]) -> None:
        self._members = tuple(members)

    @property
    def tasks(self) -> tuple[Task[Any, R], ...]:
        return tuple(member.tasks[0] for member in self._members)

    @property
    def members(self) -> tuple[Chain[R], ...]:
        return self._members

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"Group({len(self._members)} x {sorted({t.name for t in self.tasks})})"

    async def enqueue(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> GroupHandle[list[R]]:
        """Seal and write every member (job ``f"{workflow_id}.{i}"``, "enqueue unless
        it exists": the same workflow id enqueued twice starts once). Each member's
        policy is evaluated now, as for ``task.enqueue``, and again when it runs.
        Raises what ``task.enqueue`` raises."""
        workflow = await _enqueue(self, None, False, principal, workflow_id)
        return GroupHandle(self.tasks[0].app, workflow, self.tasks, callback=False)

    def enqueue_sync(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> GroupHandle[list[R]]:
        """:meth:`enqueue` for synchronous code."""
        handle: GroupHandle[list[R]] = self.tasks[0].app.run_sync(
            self.enqueue, principal=principal, workflow_id=workflow_id
        )
        return handle


def group(*members: Chain[R]) -> Group[R]:
    """A group of one-step members (``task.s(payload)``) whose tasks all return ``R``.

    Raises ``TaskDefinitionError`` for no member or more than ``MAX_MEMBERS``, a member
    of several steps, members of different apps, members whose tasks return different
    types (a heterogeneous group: give the tasks one result type, e.g. a tagged union
    Struct, or run two groups), or a member task with ``store_result=False`` (its result
    is what the group hands back)."""
    if not members:
        raise TaskDefinitionError("a group needs at least one member")
    if len(members) > MAX_MEMBERS:
        raise TaskDefinitionError(f"a group has at most {MAX_MEMBERS} members")
    first = members[0].tasks[0]
    for member in members:
        if not isinstance(member, Chain) or len(member) != 1:
            raise TaskDefinitionError(
                f"a group member is one step, task.s(payload), not {member!r}"
            )
        task = member.tasks[0]
        if task.app is not first.app:
            raise TaskDefinitionError(
                f"cannot group {task.name!r} with {first.name!r}: they belong to different apps"
            )
        if task.result_type is not first.result_type:
            raise TaskDefinitionError(
                f"cannot group {task.name!r} with {first.name!r}: {task.name!r} returns "
                f"{_type_name(task.result_type)} but {first.name!r} returns "
                f"{_type_name(first.result_type)}; every member returns the same type "
                "(a group's result is a list[R])"
            )
        if not task.options.store_result:
            raise TaskDefinitionError(
                f"cannot group {task.name!r}: it has store_result=False, and its result "
                "is what the group hands back"
            )
    return Group(members)


class Chord(Generic[R2]):
    """A group and a callback run once with all the group's results. Build with
    :func:`chord`; ``R2`` is the callback's result type."""

    __slots__ = ("allow_failures", "callback", "group")

    def __init__(self, group: Group[Any], callback: Task[Any, R2], allow_failures: bool) -> None:
        self.group = group
        self.callback = callback
        self.allow_failures = allow_failures

    def __repr__(self) -> str:
        return f"Chord({self.group!r} -> {self.callback.name})"

    async def enqueue(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> GroupHandle[R2]:
        """Seal every member and the callback (job ``f"{workflow_id}.{len(group)}"``,
        nested in each member) and write the members; the callback is written by the
        worker that completes the chord. The members' policies are evaluated now; the
        callback's when it runs (its payload does not exist yet). Raises what
        ``task.enqueue`` raises, and ``ConfigurationError`` when the broker cannot run
        chords."""
        workflow = await _enqueue(
            self.group, self.callback, self.allow_failures, principal, workflow_id
        )
        return GroupHandle(
            self.callback.app,
            workflow,
            [*self.group.tasks, self.callback],
            callback=True,
            allow_failures=self.allow_failures,
        )

    def enqueue_sync(
        self, *, principal: Principal | None = None, workflow_id: str | None = None
    ) -> GroupHandle[R2]:
        """:meth:`enqueue` for synchronous code."""
        handle: GroupHandle[R2] = self.callback.app.run_sync(
            self.enqueue, principal=principal, workflow_id=workflow_id
        )
        return handle


@overload
def chord(
    group: Group[R], callback: _Gathering[R, R2], *, allow_failures: Literal[False] = False
) -> Chord[R2]: ...


@overload
def chord(
    group: Group[R], callback: _Outcoming[R, R2], *, allow_failures: Literal[True]
) -> Chord[R2]: ...


def chord(group: Group[Any], callback: Any, *, allow_failures: bool = False) -> Chord[Any]:
    """``callback`` run once with every member's result: its payload type must be a
    subclass of ``Gathered[R]`` (``allow_failures=True``: ``MemberOutcomes[R]``) where ``R``
    is what the members return -- mypy checks it, and so does this builder at run time
    (``TaskDefinitionError``), as it checks that the callback is of the group's app."""
    from vaultq.tasks import Task

    if not isinstance(group, Group) or not isinstance(callback, Task):
        raise TaskDefinitionError("chord() takes a group(...) and a task")
    base = MemberOutcomes if allow_failures else Gathered
    member = group.tasks[0]
    if callback.app is not member.app:
        raise TaskDefinitionError(
            f"cannot use {callback.name!r} as the callback of {member.name!r}: they belong "
            "to different apps"
        )
    element = _element_type(callback.payload_type, base)
    if element is not member.result_type:
        raise TaskDefinitionError(
            f"the chord callback {callback.name!r} takes a "
            f"{_type_name(callback.payload_type)} payload, but the members return "
            f"{_type_name(member.result_type)}: declare its payload as a subclass of "
            f"vaultq.{base.__name__}[{_type_name(member.result_type)}]"
        )
    return Chord(group, callback, allow_failures)


class GroupHandle(WorkflowHandle[T]):
    """The producer's handle on a group or a chord: each member's status (and the
    callback's, last) from :meth:`steps`, and the typed result: ``list[R]`` for a group,
    the callback's result for a chord. ``WorkflowFailed.step`` is the member index that
    did not succeed (the callback's index is the member count)."""

    def __init__(
        self,
        app: App,
        workflow_id: str,
        tasks: Sequence[Task[Any, Any]],
        *,
        callback: bool,
        allow_failures: bool = False,
    ) -> None:
        super().__init__(app, workflow_id, tasks)
        self.members = len(tasks) - (1 if callback else 0)
        self.has_callback = callback
        self.allow_failures = allow_failures

    def __repr__(self) -> str:
        kind = "chord" if self.has_callback else "group"
        return f"GroupHandle(id={self.id!r}, {kind} of {self.members})"

    async def result(self, timeout: float | None = 30.0) -> T:
        """Wait for every member (and the callback) and return the typed result. Raises
        ``WorkflowFailed`` naming the first member that did not succeed (unless the
        chord allows failures), or the callback; ``TimeoutError`` after ``timeout``."""
        import anyio

        values: list[Any] = []
        with anyio.fail_after(timeout):
            if not self.allow_failures:
                for i in range(self.members):
                    values.append(await self._succeeded(i, "member"))
            if self.has_callback:
                return typing.cast("T", await self._succeeded(self.members, "callback"))
        return typing.cast("T", values)

    async def cancel(self) -> CancelState:
        """Cancel the group or chord: a chord's callback is never enqueued (a tombstone
        under its id, which the broker then refuses to the member completing the chord,
        even at this very moment; when it was enqueued already, it is cancelled as a
        job), then every member that has not finished is cancelled (a waiting one never
        starts, a running one stops at its next await). FINISHED when nothing was left
        to cancel."""
        from vaultq.brokers.base import Tombstones
        from vaultq.operations import CancelOutcome, cancel_job
        from vaultq.workflow_control import cancelled_result, workflow_horizon

        app = self.app
        requested = False
        if self.has_callback:
            broker = await app.broker()
            task, job_id = self.tasks[-1], self.handles[-1].id
            now = app.clock.now()
            until = now + workflow_horizon(self.tasks) + app.clock_skew
            tomb = cancelled_result(app, task, job_id, now, until)
            if not isinstance(broker, Tombstones):
                raise ConfigurationError(
                    f"the broker {broker.url} cannot cancel workflows: it has no tombstone "
                    "operation (vaultq.brokers.base.Tombstones); use a built-in broker"
                )
            if await broker.tombstone(
                task.queue,
                job_id,
                result=tomb,
                result_ttl=task.options.result_ttl,
                remember_until=until,
            ):
                requested = True
            else:
                found = await cancel_job(app, job_id, [task.queue])
                requested = found is not CancelOutcome.FINISHED
        for i in range(self.members):
            found = await cancel_job(app, self.handles[i].id, [self.tasks[i].queue])
            requested = requested or found is not CancelOutcome.FINISHED
        return CancelState.REQUESTED if requested else CancelState.FINISHED

    async def _succeeded(self, i: int, what: str) -> Any:
        """Step ``i``'s decoded result once it succeeded; ``WorkflowFailed`` otherwise."""
        handle = self.handles[i]
        body = await self.app.results.wait_outcome(handle.queue, handle.id, None, handle.task_name)
        if body.status != JobStatus.SUCCEEDED:
            raise WorkflowFailed(
                f"workflow {self.id} stopped at {what} {i} ({handle.task_name}): {body.status}"
                + (f" ({body.error_type}: {body.error})" if body.error else ""),
                job_id=handle.id,
                step=i,
                step_status=body.status,
            )
        raw = bytes(body.value) if body.value is not None else b"null"
        return self.tasks[i].result_codec.decode(raw)


async def _enqueue(
    group: Group[Any],
    callback: Task[Any, Any] | None,
    allow_failures: bool,
    principal: Principal | None,
    workflow_id: str | None,
) -> str:
    tasks = group.tasks
    app = tasks[0].app
    now = app.clock.local()
    start = now
    for task in {id(t): t for t in (*tasks, *([callback] if callback else []))}.values():
        start = check_call(task, principal=principal, delay=None, at=None, timeout=None, now=now)
    workflow = new_job_id(now) if workflow_id is None else workflow_id
    n = len(group)
    ids = [f"{workflow}.{i}" for i in range(n)]
    payloads = [member.payload for member in group.members]
    encoded = [task.check_payload(p) for task, p in zip(tasks, payloads, strict=True)]
    for task, payload, job_id in zip(tasks, payloads, ids, strict=True):
        await authorize(app, task, payload, principal, job_id)
    expiries = [start + _window(task) for task in tasks]
    link: ChordLink | None = None
    if callback is not None:
        names = tuple(t.name for t in tasks)
        queues = tuple(t.queue for t in tasks)
        plan = Gather(
            members=n,
            tasks=names[:1] if len(set(names)) == 1 else names,
            queues=queues[:1] if len(set(queues)) == 1 else queues,
            allow_failures=allow_failures,
        )
        envelope = seal_job(
            app.keyring,
            job_id=f"{workflow}.{n}",
            app=app.name,
            task=callback.name,
            queue=callback.queue,
            payload=b"null",
            principal=principal,
            meta=JobMeta(flow=FlowStep(workflow=workflow, step=n, steps=n + 1, gather=plan)),
            issued_at=now,
            not_before=start,
            expires_at=max(expiries) + _window(callback),
            version=app.envelope_version,
        )
        link = ChordLink(callback=envelope, allow_failures=allow_failures)
    items: list[tuple[EnqueueItem, float]] = []
    for i, task in enumerate(tasks):
        envelope = seal_job(
            app.keyring,
            job_id=ids[i],
            app=app.name,
            task=task.name,
            queue=task.queue,
            payload=encoded[i],
            principal=principal,
            meta=JobMeta(flow=FlowStep(workflow=workflow, step=i, steps=n, chord=link)),
            issued_at=now,
            not_before=start,
            expires_at=expiries[i],
            version=app.envelope_version,
        )
        if len(envelope) > app.max_envelope_size:
            raise PayloadError(
                f"member {i}'s sealed envelope is {len(envelope)} bytes, over the app's "
                f"max_envelope_size ({app.max_envelope_size}); send references instead of "
                "data, or use fewer members with different tasks"
            )
        item = EnqueueItem(queue=task.queue, job_id=ids[i], envelope=envelope, not_before=None)
        items.append((item, expiries[i] - now + app.clock_skew))
    broker = await app.broker()
    if callback is not None:
        chord_store(broker)  # a broker that cannot run chords fails before any write
    # Written concurrently (the round trips overlap on Redis); each write is atomic and
    # idempotent, so a failure part-way is repaired by enqueueing the same workflow id
    # again: the members already written are not written twice.
    import anyio

    limiter = anyio.CapacityLimiter(_WRITES_IN_FLIGHT)
    errors: list[Exception] = []

    async def write(item: EnqueueItem, ttl: float) -> None:
        async with limiter:
            if errors:
                return  # one write failed: the caller gets its error, not a group of them
            try:
                await broker.enqueue_unique(item, ttl=ttl)
            except Exception as exc:  # re-raised below, outside the task group
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for item, ttl in items:
            tg.start_soon(write, item, ttl)
    if errors:
        raise errors[0]
    return workflow


def _window(task: Task[Any, Any]) -> float:
    """How long a job of ``task`` may take from its start to its end at most: its queue
    validity, every attempt's deadline and the backoff between them."""
    options = task.options
    return (
        options.expires
        + options.timeout_ceiling * task.max_attempts
        + options.max_backoff * options.retries
    )


def _element_type(payload_type: type[Any], base: type[Any]) -> Any:
    """``X`` when ``payload_type`` subclasses ``base[X]``, else None."""
    for klass in payload_type.__mro__:
        for parent in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(parent) is base:
                args = typing.get_args(parent)
                return args[0] if args else None
    return None


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or repr(kind)
