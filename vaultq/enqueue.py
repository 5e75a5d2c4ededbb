"""The producer's path: check an enqueue call, authorize it, seal it, write it.

One path for every way a job is made: ``task.enqueue``/``enqueue_many``/``*_sync`` call
:func:`enqueue`, and ``vaultq.django.enqueue_on_commit`` runs the same
:func:`check_call` and :func:`authorize` up front (so a view can answer 400/403 before
its transaction commits) and the same :func:`enqueue` at commit. Validation fails before
anything is sealed; the job id is fixed before the first write, so a retried write can
never create a second job under another id.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Generator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from vaultq.brokers.base import Broker, EnqueueItem, UniqueKeys
from vaultq.enqueue_options import EnqueueOptions, OnDuplicate
from vaultq.enqueue_steps import (
    AwaitPolicy,
    MeasureClock,
    Step,
    Write,
    WriteKeyed,
    WriteUnique,
    warn_clock,
)
from vaultq.enqueue_writes import retrying, write_with_retry
from vaultq.envelope import JOB_ID_FORM, JobMeta, JobParts, new_job_id, seal_job, seal_job_parts
from vaultq.envelope_batch import seal_batches
from vaultq.errors import (
    AuthorizationDenied,
    BrokerError,
    ConfigurationError,
    DuplicateJob,
    PayloadError,
)
from vaultq.jobs import JobHandle
from vaultq.middleware import EnqueueInfo, Hooks
from vaultq.policy import (
    Decision,
    PendingPolicy,
    PolicyRequest,
    evaluate,
    finish_evaluation,
    safe_id,
    start_evaluation,
)
from vaultq.principal import Principal
from vaultq.priority import task_level

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.tasks import Task

__all__ = [
    "MAX_DEFER",
    "EnqueueOptions",
    "Flow",
    "OnDuplicate",
    "authorize",
    "authorize_sync",
    "check_call",
    "check_job_id",
    "enqueue",
    "flow",
    "not_before",
    "unique_digest",
]

log = logging.getLogger("vaultq")

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")
T = TypeVar("T")

"""What an enqueue with a unique key does while a live job holds the key: return that
job's handle (default) or raise ``DuplicateJob``."""

MAX_DEFER = 100 * 365 * 86400.0
"""The furthest ahead a job may be scheduled (seconds, ~100 years)."""


def check_call(
    task: Task[Any, Any],
    *,
    principal: Principal | None,
    delay: float | None,
    at: datetime | float | None,
    timeout: float | None,
    now: float,
) -> float:
    """Check an enqueue call's arguments (not its payloads); return its ``not_before``.

    Raises ``PayloadError`` for a principal that is not a ``Principal`` and
    ``ConfigurationError`` for a bad timeout, delay or time, or a verify-only keyring.
    """
    if principal is not None and not isinstance(principal, Principal):
        raise PayloadError("principal must be a vaultq.Principal (or None)")
    if timeout is not None and not 0 < timeout <= task.options.timeout_ceiling:
        raise ConfigurationError(
            f"timeout={timeout} for task {task.name!r} must be > 0 and at most its "
            f"max_timeout ({task.options.timeout_ceiling}); raise max_timeout on the task"
        )
    when = not_before(now, delay, at)
    if not task.app.keyring.can_sign:
        raise ConfigurationError(
            "this keyring is verify-only (made by `vaultq keys public`) and cannot "
            "enqueue; producers need the full keyring"
        )
    return when


def not_before(now: float, delay: float | None, at: datetime | float | None) -> float:
    """When a job may start (Unix seconds) from ``delay=`` or ``at=`` (at most one)."""
    if delay is not None and at is not None:
        raise ConfigurationError("give either delay= or at=, not both")
    if delay is not None:
        if not 0 <= delay < MAX_DEFER:
            raise ConfigurationError(
                f"delay must be a number of seconds >= 0 and below {MAX_DEFER:.0f} (~100 years)"
            )
        return now + delay
    if at is None:
        return now
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ConfigurationError("at= needs a timezone-aware datetime (e.g. datetime.now(UTC))")
        when = at.timestamp()
    else:
        when = float(at)
    # NaN, infinity or an absurd year would fail deep in the envelope encoder instead.
    if not when < now + MAX_DEFER:
        raise ConfigurationError(
            "at= must be a finite time within ~100 years (a datetime or Unix seconds)"
        )
    return max(now, when)


def check_job_id(job_id: object) -> str:
    """``job_id`` when it is a valid custom job id; ``ConfigurationError`` otherwise."""
    if not isinstance(job_id, str) or not JOB_ID_FORM.fullmatch(job_id):
        raise ConfigurationError(
            "job_id must be 1-128 letters, digits, '_', '.', ':' or '-', starting "
            "with a letter or digit (or leave it out for a fresh id)"
        )
    return job_id


def unique_digest(task: str, key: str) -> str:
    """The name a unique key is stored under: a digest of the task and the key, so the
    broker never holds the key itself (it may name a customer) and two tasks may use the
    same key independently."""
    return hashlib.sha256(f"{task}\0{key}".encode()).hexdigest()[:40]


def _unique_keys(
    task: Task[Any, Any],
    payloads: Sequence[Any],
    unique_key: str | None,
    unique_for: float | None,
    on_duplicate: str,
) -> list[str | None] | None:
    """The unique key of each payload (None: none), or None when the call uses none."""
    if unique_for is not None and not (math.isfinite(unique_for) and unique_for > 0):
        raise ConfigurationError("unique_for must be a number of seconds > 0")
    if on_duplicate not in ("return", "raise"):
        raise ConfigurationError("on_duplicate must be 'return' or 'raise'")
    if unique_key is not None:
        if len(payloads) != 1:
            raise ConfigurationError(
                "unique_key= names one job: use it with enqueue(), or give the task "
                "unique=lambda payload: ... for enqueue_many()"
            )
        keys: list[str | None] = [unique_key]
    elif task.unique is not None:
        keys = [task.unique(p) for p in payloads]
    else:
        return None
    for key in keys:
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= 1000):
            raise ConfigurationError(
                f"task {task.name!r}: a unique key is a non-empty string of at most 1000 "
                "characters (or None for no key)"
            )
    return keys


def _policy_request(
    app: App, task: Task[Any, Any], payload: Any, principal: Principal | None, job_id: str
) -> PolicyRequest:
    return PolicyRequest(
        principal=principal,
        payload=payload,
        task=task.name,
        signer_id=app.keyring.signer_id or "",
        attempt=0,
        job_id=job_id,
        stage="enqueue",
    )


def _check_decision(decision: Decision, task: Task[Any, Any], principal: Principal | None) -> None:
    if not decision.allowed:
        raise AuthorizationDenied(
            f"policy {decision.policy} denied task {task.name!r} for principal "
            f"{safe_id(principal.id) if principal else '(none)'} ({decision.reason}); "
            "nothing was enqueued",
            task=task.name,
            policy=decision.policy,
        )


async def authorize(
    app: App, task: Task[Any, Any], payload: Any, principal: Principal | None, job_id: str
) -> None:
    """Evaluate ``task``'s policy (else the app's default) for an enqueue, audited; raise
    ``AuthorizationDenied`` when it refuses."""
    decision = await evaluate(
        task.policy or app.default_policy,
        _policy_request(app, task, payload, principal, job_id),
        timeout=app.policy_timeout,
    )
    _check_decision(decision, task, principal)


def authorize_sync(
    app: App, task: Task[Any, Any], payload: Any, principal: Principal | None, job_id: str
) -> None:
    """:func:`authorize` in the calling thread: a sync policy (every built-in one) is
    called here; an async one is awaited on the app's loop thread."""
    started = start_evaluation(
        task.policy or app.default_policy,
        _policy_request(app, task, payload, principal, job_id),
        timeout=app.policy_timeout,
    )
    if isinstance(started, PendingPolicy):
        started = app.run_sync(finish_evaluation, started)
    _check_decision(started, task, principal)


Flow = Generator[Step, Any, list[JobHandle[R]]]
"""An enqueue in progress (:func:`flow`): yields steps, returns the handles."""


async def enqueue(
    app: App,
    task: Task[P, R],
    payloads: Sequence[P],
    options: EnqueueOptions,
) -> list[JobHandle[R]]:
    """Check, authorize, seal and write ``payloads`` as jobs of ``task``; their handles.

    ``priority`` (default: the task's): the jobs' level within their queue
    (``vaultq/priority.py``); routing data beside the envelope, never sealed into it.

    With a unique key (``unique_key``, or the task's ``unique``), a payload whose key a
    live job holds is not written: its handle is that job's (``on_duplicate="return"``)
    or ``DuplicateJob`` is raised naming it.

    The work is :func:`flow` (no I/O of its own), driven here on the running event loop;
    ``vaultq.enqueue_sync`` drives the very same flow from a sync caller's thread."""
    steps = flow(app, task, payloads, options)
    broker: Broker | None = None
    reply: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                handles: list[JobHandle[R]] = done.value
                return handles
            reply = error = None
            try:
                if isinstance(step, AwaitPolicy):
                    reply = await finish_evaluation(step.pending)
                    continue
                if broker is None:
                    broker = await app.broker()
                reply = await _take_step(app, broker, step)
            except BaseException as exc:  # handed to the flow (its hooks hear of it)
                error = exc
    finally:
        steps.close()


async def _take_step(app: App, broker: Broker, step: Step) -> Any:
    if isinstance(step, Write):
        return await write_with_retry(app, broker, step.items)
    if isinstance(step, WriteUnique):
        return await write_with_retry(app, broker, [step.item], unique_ttl=step.ttl)
    if isinstance(step, WriteKeyed):
        if not isinstance(broker, UniqueKeys):
            raise ConfigurationError(
                f"the broker {broker.url} cannot enqueue unique jobs (no enqueue_keyed): "
                "use the Redis, SQLite or memory broker"
            )
        store = broker
        # Idempotent: the same envelope written again (a lost reply) returns its own id.
        return await retrying(
            app,
            lambda: store.enqueue_keyed(
                step.item, key=step.key, key_ttl=step.key_ttl, ttl=step.ttl
            ),
        )
    # MeasureClock: the last kind of Step.
    try:
        offset = await app.clock.measure(broker)
    except BrokerError:
        return None  # the enqueue itself will say what is wrong with the broker
    warn_clock(app, offset)
    return None


def flow(
    app: App,
    task: Task[P, R],
    payloads: Sequence[P],
    options: EnqueueOptions,
) -> Flow[R]:
    """An enqueue as a generator: it checks, authorizes, seals and decides what to
    write, and yields each step that needs I/O (:data:`Step`) for its driver to take,
    receiving the step's reply (or its error, thrown in). Both drivers, async
    (:func:`enqueue`) and sync (``vaultq.enqueue_sync``), run this one flow, so the
    checks, hooks and write decisions cannot differ between them."""
    o = options
    keys = _unique_keys(task, payloads, o.unique_key, o.unique_for, o.on_duplicate)
    unique = None if keys is None else _Unique(keys, o.unique_for, o.on_duplicate)
    level = task_level(app, task, o.priority)
    meta = JobMeta(timeout=o.timeout, depends=o.depends)  # depends: see vaultq.depends
    call = (app, task, payloads, o, meta)
    hooks = app.enqueue_hooks
    if not hooks.enqueue:
        return (yield from _seal_and_send(*call, None, unique, level))
    # The one place enqueue hooks run: before_enqueue per job as it is sealed, then
    # after_enqueue once per job that had it, with the error that ended the call.
    watch = _EnqueueWatch(hooks)
    try:
        handles = yield from _seal_and_send(*call, watch, unique, level)
    except BaseException as exc:
        watch.finish(type(exc).__name__)
        raise
    watch.finish(None)
    return handles


class _EnqueueWatch:
    """The enqueue hooks of one :func:`enqueue` call: which jobs had ``before_enqueue``
    and which of them already heard ``after_enqueue`` (jobs with custom ids are written
    one by one, so a DuplicateJob midway leaves the earlier ones enqueued)."""

    __slots__ = ("hooks", "infos", "reported")

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.infos: list[EnqueueInfo] = []
        self.reported = 0

    def before(self, info: EnqueueInfo) -> dict[str, str] | None:
        self.infos.append(info)
        return self.hooks.before_enqueue(info)

    def sent_one(self) -> None:
        self.hooks.after_enqueue(self.infos[self.reported], None)
        self.reported += 1

    def skipped_one(self, error: str) -> None:
        self.hooks.after_enqueue(self.infos[self.reported], error)
        self.reported += 1

    def finish(self, error: str | None) -> None:
        for info in self.infos[self.reported :]:
            self.hooks.after_enqueue(info, error)
        self.reported = len(self.infos)


class _Unique:
    """The unique keys of one enqueue call (see :func:`enqueue`)."""

    __slots__ = ("keys", "on_duplicate", "unique_for")

    def __init__(
        self, keys: list[str | None], unique_for: float | None, on_duplicate: OnDuplicate
    ) -> None:
        self.keys = keys
        self.unique_for = unique_for
        self.on_duplicate = on_duplicate


def _seal_and_send(
    app: App,
    task: Task[P, R],
    payloads: Sequence[P],
    options: EnqueueOptions,
    meta: JobMeta,
    watch: _EnqueueWatch | None,
    unique: _Unique | None = None,
    priority: int = 0,
) -> Flow[R]:
    principal, delay, at = options.principal, options.delay, options.at
    queue, job_ids = options.queue, options.job_ids
    # Sealed times are this producer's own clock: they are its signed claims.
    now = app.clock.local()
    start = check_call(task, principal=principal, delay=delay, at=at, timeout=meta.timeout, now=now)
    keyring = app.keyring
    batched = _batch_signed(app, len(payloads))
    target = queue or task.queue
    sealed: list[tuple[str, bytes | JobParts]] = []
    for i, payload in enumerate(payloads):
        # Typed at the call: the JSON sealed below is the JSON proven to decode.
        try:
            encoded = task.check_payload(payload)
        except PayloadError as exc:
            if len(payloads) == 1:
                raise
            raise PayloadError(f"payload {i} of {len(payloads)}: {exc}", field=exc.field) from None
        job_id = new_job_id(now) if job_ids is None else check_job_id(job_ids[i])
        decision = start_evaluation(
            task.policy or app.default_policy,
            _policy_request(app, task, payload, principal, job_id),
            timeout=app.policy_timeout,
        )
        if isinstance(decision, PendingPolicy):
            decision = yield AwaitPolicy(decision)
        _check_decision(decision, task, principal)
        job_meta = meta
        if watch is not None:
            trace = watch.before(
                EnqueueInfo(
                    job_id=job_id,
                    task=task.name,
                    queue=target,
                    app=app.name,
                    principal_id=principal.id if principal is not None else None,
                    enqueued_at=now,
                    not_before=start,
                )
            )
            if trace is not None:
                # Inside the seal: trace context reveals call graphs.
                job_meta = msgspec.structs.replace(meta, trace=trace)
        seal = seal_job_parts if batched else seal_job
        sealed.append(
            (
                job_id,
                seal(
                    keyring,
                    job_id=job_id,
                    app=app.name,
                    task=task.name,
                    queue=target,
                    payload=encoded,
                    principal=principal,
                    meta=job_meta,
                    issued_at=now,
                    not_before=start,
                    expires_at=start + task.options.expires,
                    version=app.envelope_version,
                ),
            )
        )
    envelopes = (
        seal_batches(keyring, [p for _, p in sealed if isinstance(p, JobParts)])
        if batched
        else [e for _, e in sealed if isinstance(e, bytes)]
    )
    items: list[EnqueueItem] = []
    for (job_id, _), envelope in zip(sealed, envelopes, strict=True):
        if len(envelope) > app.max_envelope_size:
            # Workers refuse it before parsing; say so now instead of dead-lettering later.
            raise PayloadError(
                f"the sealed job for task {task.name!r} is {len(envelope)} bytes, over "
                f"the app's max_envelope_size ({app.max_envelope_size}); send a "
                "reference (a key or URL) instead of the data, or raise the limit on "
                "producers and workers alike"
            )
        items.append(
            EnqueueItem(
                queue=target,
                job_id=job_id,
                envelope=envelope,
                not_before=start if start > now else None,
                priority=priority,
            )
        )
    if app.clock.due():
        yield MeasureClock()
    offset = app.clock.broker_offset
    if offset and any(item.not_before is not None for item in items):
        # The broker keeps delayed jobs on its own clock.
        items = [
            msgspec.structs.replace(item, not_before=item.not_before + offset)
            if item.not_before is not None
            else item
            for item in items
        ]
    decode = task.result_codec.decode
    results = app.results
    if unique is not None:
        # One by one: each job holds its key (or finds it held) in one atomic step.
        reserve = task.options.expires + app.clock_skew + max(0.0, start - now)
        ids: list[str] = []
        for item, key in zip(items, unique.keys, strict=True):
            ids.append((yield from _write_keyed(task, item, key, reserve, unique, watch)))
        return [
            JobHandle(results, job_id, queue=target, task_name=task.name, decode=decode)
            for job_id in ids
        ]
    if job_ids is None:
        yield Write(items)
    else:
        # A custom id may already exist: "enqueue unless it exists" is one atomic
        # broker step, so a duplicate never becomes a doomed second job (which the
        # worker would drop as a replay). The reservation lasts the job's validity.
        # A retried write of the same envelope (the first reply was lost) is a no-op.
        reserve = task.options.expires + app.clock_skew + max(0.0, start - now)
        for item in items:
            written = yield WriteUnique(item, reserve)
            if not written:
                raise DuplicateJob(
                    f"job id {item.job_id!r} is already queued, running or recently "
                    "finished: nothing was enqueued; use app.job(job_id) for its handle, "
                    "or choose another id",
                    job_id=item.job_id,
                )
            if watch is not None:
                watch.sent_one()
    return [
        JobHandle(results, item.job_id, queue=target, task_name=task.name, decode=decode)
        for item in items
    ]


def _batch_signed(app: App, count: int) -> bool:
    """Whether this call's ``count`` jobs are signed as one batch (``batch_signatures``;
    a single job is always signed alone, in the form every worker reads)."""
    if not app.batch_signatures:
        return False
    if app.keyring.signing_algorithm != "ed25519":
        raise ConfigurationError(
            "batch_signatures=True needs an ed25519 signing key: it amortizes the cost of "
            "verifying ed25519 signatures, and an hmac-sha256 check costs about 1 us, so "
            "there is nothing to save; turn batch_signatures off or sign with ed25519 "
            "(`vaultq keys generate --signing ed25519`)"
        )
    return count > 1


def _write_keyed(
    task: Task[Any, Any],
    item: EnqueueItem,
    key: str | None,
    reserve: float,
    unique: _Unique,
    watch: _EnqueueWatch | None,
) -> Generator[Step, Any, str]:
    """Write ``item`` under its unique key (or, without one, unless its id exists); the
    id of the job that holds the key afterwards."""
    if key is None:
        written = yield WriteUnique(item, reserve)
        holder = item.job_id if written else ""
    else:
        digest = unique_digest(task.name, key)
        key_ttl = reserve if unique.unique_for is None else unique.unique_for
        holder = yield WriteKeyed(item, digest, key_ttl, reserve)
    if holder == "":
        raise DuplicateJob(
            f"job id {item.job_id!r} is already queued, running or recently finished: "
            "nothing was enqueued; use app.job(job_id) for its handle, or choose another id",
            job_id=item.job_id,
        )
    if holder != item.job_id:
        if watch is not None:
            watch.skipped_one("DuplicateJob")
        if unique.on_duplicate == "raise":
            raise DuplicateJob(
                f"a job with this unique key of task {task.name!r} is queued or running "
                f"(job {holder}): nothing was enqueued; app.job({holder!r}) is its handle",
                job_id=holder,
            )
        log.debug("enqueue: task %s: unique key held by job %s", task.name, holder)
        return holder
    if watch is not None:
        watch.sent_one()
    return holder
