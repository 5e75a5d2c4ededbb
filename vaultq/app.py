"""``App``: the task registry, keyring and broker wiring of one application."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Awaitable, Callable, Container, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec

from vaultq import config
from vaultq._loop import LoopThread
from vaultq.appschedules import AppSchedules
from vaultq.appsettings import AppSettingsView
from vaultq.batchsig import RootCache
from vaultq.brokers import broker_from_url
from vaultq.brokers.base import Broker, BrokerCapabilities, CancelState
from vaultq.brokers.writer import SyncWriter
from vaultq.clock import Clock
from vaultq.connections import LoopBrokers
from vaultq.enqueue import authorize
from vaultq.enqueue import enqueue as enqueue_jobs
from vaultq.enqueue_options import EnqueueOptions
from vaultq.envelope import OpenedJob, open_job
from vaultq.errors import ConfigurationError
from vaultq.jobs import JobHandle
from vaultq.keyfile import load_or_create_keyfile, resolve_keyring
from vaultq.keyring import Keyring
from vaultq.middleware import CallWrappers, Hooks, Middleware
from vaultq.policy import Policy, allow_all
from vaultq.principal import Principal
from vaultq.priority import Priority, PriorityLike
from vaultq.registration import (
    ExceptionSpec,
    TaskDecorator,
    check_limit_options,
    check_unique_options,
    exception_classes,
    task_name_for,
)
from vaultq.results import AppResults
from vaultq.schedule import Schedule
from vaultq.settings import UNSET, AppSettings, UnsetType, environment
from vaultq.tasks import Isolation, NoArgs, Task, TaskOverrides

__all__ = ["App"]

log = logging.getLogger("vaultq")

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class App(AppSettingsView, AppSchedules):
    """One application: its tasks, keys and broker.

    ``broker``: a URL (``redis://…``, ``rediss://…``, ``unix://…``, ``sqlite:///…``,
    ``memory://`` for tests) or a Broker instance. When None, ``$VAULTQ_BROKER`` is used,
    else the embedded ``sqlite:///vaultq.db`` in the working directory.

    ``keyring``: when None, ``$VAULTQ_KEYS`` is used; with the embedded broker and no
    keys anywhere, a 0600 key file is generated beside the database on first use (with the
    in-memory broker, a keyring that lives as long as the app). A shared broker (Redis)
    refuses to run without explicit keys.

    ``default_policy``: allow_all (any job sealed by a trusted signer may run; ``vaultq
    check --deploy`` flags tasks relying on it).

    The other options are the fields of :class:`vaultq.AppSettings` (declared once there
    with their defaults, rules and help): ``queue``, ``clock_skew``, ``max_envelope_size``,
    ``policy_timeout``, ``lease``, ``result_ttl``, and the task defaults ``timeout``,
    ``retries``, ``expires``, ``backoff``, ``max_backoff``. Give them as keywords or as
    ``settings=AppSettings(...)`` (keywords win); ``app.settings`` holds them and
    ``app.configure(...)`` changes them later. Tasks read the defaults they left unset from
    ``app.settings`` when they run, so a later change reaches them.

    Envelope format (``docs/envelope.md``): ``envelope_version`` (2, XAES-256-GCM; 1 while
    workers that read only v1 remain) is the format new jobs are sealed with;
    ``accept_envelope_v1`` (True during the migration window) set to False refuses v1 jobs
    and results. ``batch_signatures`` (off by default) signs the jobs of one
    ``enqueue_many`` call with one Ed25519 signature over a Merkle root instead of one each
    (``docs/envelope.md``, *Batch signatures*): turn it on only once every worker runs a
    vaultq that reads that form.

    ``enqueue_retry``: seconds an enqueue keeps retrying a broker that is briefly
    unreachable (restart, failover, a dropped pooled connection) with jittered backoff
    before it raises ``BrokerUnavailable``; 0 disables retries. The job id is fixed before
    the first try, so a retried write can never create a second job under another id.

    ``clock`` (a :class:`vaultq.clock.Clock`) estimates the broker's clock for scheduling;
    ``app.clock.offset`` is a test hook that plays a host whose clock is off.

    ``middleware``: :class:`vaultq.Middleware` instances that see every job's life with
    safe fields only (metrics, tracing, schedulers; ``docs/extending.md``); more with
    :meth:`add_middleware`.
    """

    def __init__(
        self,
        name: str,
        *,
        settings: AppSettings | None = None,
        broker: str | Broker | None = None,
        keyring: Keyring | None = None,
        default_policy: Policy = allow_all,
        queue: str | UnsetType = UNSET,
        clock_skew: float | UnsetType = UNSET,
        max_envelope_size: int | UnsetType = UNSET,
        policy_timeout: float | UnsetType = UNSET,
        lease: float | UnsetType = UNSET,
        result_ttl: float | UnsetType = UNSET,
        timeout: float | UnsetType = UNSET,
        retries: int | UnsetType = UNSET,
        expires: float | UnsetType = UNSET,
        backoff: float | UnsetType = UNSET,
        max_backoff: float | UnsetType = UNSET,
        envelope_version: int | UnsetType = UNSET,
        accept_envelope_v1: bool | UnsetType = UNSET,
        batch_signatures: bool | UnsetType = UNSET,
        enqueue_retry: float | UnsetType = UNSET,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                f"app name {name!r} is not valid: use 1-64 letters, digits, '.', '-' or '_'"
            )
        self.name = name
        given = {
            option: value
            for option, value in (
                ("queue", queue),
                ("clock_skew", clock_skew),
                ("max_envelope_size", max_envelope_size),
                ("policy_timeout", policy_timeout),
                ("lease", lease),
                ("result_ttl", result_ttl),
                ("timeout", timeout),
                ("retries", retries),
                ("expires", expires),
                ("backoff", backoff),
                ("max_backoff", max_backoff),
                ("envelope_version", envelope_version),
                ("accept_envelope_v1", accept_envelope_v1),
                ("batch_signatures", batch_signatures),
                ("enqueue_retry", enqueue_retry),
            )
            if value is not UNSET
        }
        if isinstance(broker, str):
            given["broker"] = broker
        base = settings if settings is not None else AppSettings()
        # Keywords win over ``settings``; the replace validates the result.
        self._settings = msgspec.structs.replace(base, **given) if given else base
        # The environment is read here, once, and only for what the caller left out: an
        # App built in code is the edge where $VAULTQ_BROKER/$VAULTQ_KEYS come in. Only
        # the decision "keys come from $VAULTQ_KEYS" is kept: Keyring.from_env reads the
        # value at first use, so the secret text is not held by the App for its lifetime.
        left_out = (broker is None and self._settings.broker is None) or keyring is None
        env = environment() if left_out else None
        self._keys_in_env = keyring is None and env is not None and env.keys is not None
        if broker is not None and not isinstance(broker, str):
            template: Broker = broker  # an instance: not a settings value
        else:
            url = self._settings.broker or (env.broker if env else None)
            template = broker_from_url(url or config.DEFAULT_BROKER_URL, namespace=name)
        self._connections = LoopBrokers(template)
        self._task_defaults = None
        self._keyring = keyring
        self._keyring_lock = threading.Lock()
        self.batch_roots = RootCache()
        """Batch roots whose signature verified in this process (vaultq/batchsig.py): a
        batch-signed job costs one Ed25519 verification per batch, not per job."""
        self.keyring_source = "given" if keyring is not None else ""
        self.default_policy = default_policy
        self.clock = Clock()
        """This host's clock and its measured offset to the broker's (vaultq/clock.py)."""
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._schedules: dict[str, Schedule] = {}
        self._loop_thread = LoopThread(f"vaultq-{name}-sync")
        self.around_async: list[Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]] = []
        """Wrappers around each async task call: ``async def wrap(call): return await
        call()``. Run as middleware (``Middleware.around_async``), the last one added
        outermost; ``call()`` returns None (the result never reaches a wrapper)."""
        self.around_sync: list[Callable[[Callable[[], Any]], Any]] = []
        """Wrappers around each sync task call, run in the task's own thread (and in the
        child process under ``isolation="process"``); as :attr:`around_async`."""
        self._middleware: list[Middleware] = []
        self.enqueue_hooks = Hooks()
        """The installed middleware sorted per hook, for the enqueue path."""
        for m in middleware:
            self.add_middleware(m)
        self.results = AppResults(self)
        """How job handles read this app's results (``vaultq.jobs.ResultSource``)."""
        self.import_spec: str | None = None
        """``module:attr`` the worker loaded this app from (used by process isolation)."""

    def __repr__(self) -> str:
        return f"App({self.name!r}, broker={self.broker_url!r}, tasks={len(self._tasks)})"

    # -- middleware ---------------------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Install a :class:`vaultq.Middleware` after the ones already there (its
        ``around_*`` hooks run inside theirs). Workers started afterwards see it."""
        if not isinstance(middleware, Middleware):
            raise ConfigurationError(
                f"{type(middleware).__name__} is not a vaultq.Middleware: subclass "
                "vaultq.Middleware and override the hooks you need"
            )
        self._middleware.append(middleware)
        self.enqueue_hooks = Hooks(self._middleware)

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The installed middleware, in order."""
        return tuple(self._middleware)

    def hooks(self, extra: Sequence[Middleware] = ()) -> Hooks:
        """The middleware sorted per hook for one worker (or isolated child): the
        installed middleware, ``extra`` (the worker's own, e.g. its scheduler), then
        :attr:`around_sync`/:attr:`around_async` as one more."""
        chain: list[Middleware] = [*self._middleware, *extra]
        if self.around_sync or self.around_async:
            chain.append(CallWrappers(self.around_sync, self.around_async))
        return Hooks(chain)

    # -- registry ---------------------------------------------------------------------

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """Registered tasks by name (a copy)."""
        return dict(self._tasks)

    def get_task(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    @property
    def queues(self) -> list[str]:
        """Every queue this app's tasks use, the default queue first (what a worker
        consumes when given no queues)."""
        found = {t.queue for t in self._tasks.values()} | {self.default_queue}
        return sorted(found, key=lambda q: (q != self.default_queue, q))

    @overload
    def task(self, fn: Callable[[], Coroutine[Any, Any, R]], /) -> Task[NoArgs, R]: ...
    @overload
    def task(self, fn: Callable[[], R], /) -> Task[NoArgs, R]: ...
    @overload
    def task(self, fn: Callable[[P], Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[[P], R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_timeout: float | None = None,
        expires: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        retry_on: ExceptionSpec | None = None,
        dont_retry_on: ExceptionSpec = (),
        retry_on_timeout: bool = False,
        policy: Policy | None = None,
        store_result: bool = True,
        result_ttl: float | None = None,
        isolation: Isolation = "none",
        unique: Callable[[Any], str | None] | None = None,
        unique_for: float | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
        limit_key: Callable[[Any], str | None] | None = None,
        priority: PriorityLike = Priority.NORMAL,
    ) -> TaskDecorator: ...
    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_timeout: float | None = None,
        expires: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        retry_on: ExceptionSpec | None = None,
        dont_retry_on: ExceptionSpec = (),
        retry_on_timeout: bool = False,
        policy: Policy | None = None,
        store_result: bool = True,
        result_ttl: float | None = None,
        isolation: Isolation = "none",
        unique: Callable[[Any], str | None] | None = None,
        unique_for: float | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
        limit_key: Callable[[Any], str | None] | None = None,
        priority: PriorityLike = Priority.NORMAL,
    ) -> Task[Any, Any] | TaskDecorator:
        """Register a task: ``@app.task`` or ``@app.task(timeout=30, retries=3, policy=…)``.

        The function takes one argument annotated with a ``msgspec.Struct`` subclass (the
        payload) and annotates its return type (anything msgspec encodes, or None). It may
        be ``async def`` or plain (run in a worker thread). The name defaults to
        ``module.qualname``; the worker finds tasks only through this registry.
        Options and their defaults: see :class:`vaultq.tasks.TaskOptions`.
        ``unique``: a function of the payload giving its unique key (or None): while a
        job with the key is queued or running, enqueueing another returns that job
        (``docs/scheduling.md``); ``unique_for``: seconds a key stays held at most.
        ``max_concurrency`` (attempts running at once across all workers), ``rate_limit``
        (``"100/m"``: starts spaced evenly) and ``limit_key`` (a function of the payload:
        one limit per key) are enforced through the broker; a job over a limit waits,
        handed back, without failing (``docs/scheduling.md``). ``priority``: the level of
        its jobs within their queue when ``enqueue`` gives none (``"low"``, ``"normal"``,
        ``"high"``; ``docs/scheduling.md``, "Priorities").

        Raises ``TaskDefinitionError`` for bad annotations, options or a taken name.
        """
        # Left out (None): UNSET, read from the app's settings whenever the task's
        # options are read, never copied (TaskOverrides).
        options = TaskOverrides(
            queue=queue or UNSET,
            timeout=UNSET if timeout is None else timeout,
            max_timeout=max_timeout,
            expires=UNSET if expires is None else expires,
            retries=UNSET if retries is None else retries,
            backoff=UNSET if backoff is None else backoff,
            max_backoff=UNSET if max_backoff is None else max_backoff,
            retry_on=None if retry_on is None else exception_classes(retry_on),
            dont_retry_on=exception_classes(dont_retry_on),
            retry_on_timeout=retry_on_timeout,
            store_result=store_result,
            result_ttl=UNSET if result_ttl is None else result_ttl,
            isolation=isolation,
        )

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = task_name_for(func, name, taken=self._tasks, app=self.name)
            check_unique_options(task_name, unique, unique_for)
            check_limit_options(task_name, max_concurrency, rate_limit, limit_key)
            new = Task(
                self,
                func,
                name=task_name,
                options=options,
                policy=policy,
                unique=unique,
                unique_for=unique_for,
                max_concurrency=max_concurrency,
                rate_limit=rate_limit,
                limit_key=limit_key,
                priority=priority,
            )
            self._tasks[task_name] = new
            return new

        if fn is not None:
            return register(fn)
        return TaskDecorator(register)

    # -- keys and broker --------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        return self._connections.template.url

    @property
    def configured_broker(self) -> Broker:
        """The broker as configured (URL or instance), not connected: for reading its
        settings. Use :meth:`broker` to talk to it."""
        return self._connections.template

    @property
    def shared_broker(self) -> bool:
        return self._connections.template.capabilities.shared

    @property
    def broker_capabilities(self) -> BrokerCapabilities:
        """What the app's broker declares it is (see ``BrokerCapabilities``)."""
        return self._connections.template.capabilities

    @property
    def keyring(self) -> Keyring:
        """The keyring, resolved on first use (see the class docstring)."""
        if self._keyring is None:
            with self._keyring_lock:
                if self._keyring is None:
                    self._keyring = self._resolve_keyring()
        return self._keyring

    def _resolve_keyring(self) -> Keyring:
        # A hook: vaultq.django's app looks in settings.VAULTQ first, then here.
        keyring, self.keyring_source = resolve_keyring(
            self.name, self._connections.template, keys_in_env=self._keys_in_env
        )
        return keyring

    def _load_or_create_keyfile(self, path: Path) -> Keyring:
        # Kept for callers of the old private method; the work lives in vaultq.keyfile.
        self.keyring_source = str(path)
        return load_or_create_keyfile(path)

    def set_broker(self, broker: str | Broker) -> None:
        """Replace the broker before first use (``vaultq worker --broker URL``)."""
        self._connections.replace(
            broker_from_url(broker, namespace=self.name) if isinstance(broker, str) else broker
        )

    def swap_broker(self, broker: str | Broker) -> Broker:
        """Switch to ``broker`` now, even after the app was used, and return the broker it
        had (pass that back to switch back). For tests (``vaultq.testing``): from here on
        every event loop gets its own clone of ``broker``; brokers the app connected in
        other loops are forgotten, not closed."""
        previous = self._connections.swap(
            broker_from_url(broker, namespace=self.name) if isinstance(broker, str) else broker
        )
        self.clock.measured_at = None  # measure the new broker's clock on first use
        return previous

    async def broker(self) -> Broker:
        """The broker for the running event loop, connected (one per loop)."""
        return await self._connections.current()

    async def aclose(self) -> None:
        """Close the broker of the running loop."""
        await self._connections.close_current()

    def close(self) -> None:
        """Close the sync facade's loop and its broker connections."""
        self._connections.close_writer()
        if self._loop_thread is not None:
            try:
                self.run_sync(self.aclose)
            finally:
                self._loop_thread.stop()

    def sync_writer(self) -> SyncWriter | None:
        """The broker's synchronous writer in this process, for ``enqueue_sync`` (None:
        this broker has none, and sync calls take the loop thread)."""
        return self._connections.sync_writer()

    def run_sync(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` on this app's background loop and return its result
        (the ``*_sync`` methods; integrations that must call async code from sync code)."""
        return self._loop_thread.run(fn, *args, **kwargs)

    _run_sync = run_sync  # the old private name, still used by some integrations

    # -- producing ----------------------------------------------------------------------

    async def _enqueue(
        self, task: Task[P, R], payloads: Sequence[P], **options: Any
    ) -> list[JobHandle[R]]:
        # The old private entry point (its keywords: EnqueueOptions' fields).
        return await enqueue_jobs(self, task, payloads, EnqueueOptions(**options))

    async def authorize_enqueue(
        self, task: Task[Any, Any], payload: Any, principal: Principal | None, job_id: str
    ) -> None:
        """Evaluate ``task``'s policy for an enqueue (audited); raise ``AuthorizationDenied``
        when it refuses. ``enqueue`` calls this; integrations that enqueue later (on
        transaction commit) call it up front so the caller still hears "no" at once."""
        await authorize(self, task, payload, principal, job_id)

    # -- results ------------------------------------------------------------------------

    def job(
        self, job_id: str, *, queue: str | None = None, task: Task[Any, Any] | str | None = None
    ) -> JobHandle[Any]:
        """A handle for a job enqueued elsewhere. Give ``task`` (a Task or its name) to get
        its result typed; without it the result decodes as plain JSON values."""
        return self.results.handle(job_id, queue=queue, task=task)

    def open_job(
        self,
        data: bytes,
        *,
        tasks: Container[str],
        now: float,
        queue: str,
        job_id: str,
        skew: float,
    ) -> OpenedJob:
        """``open_job`` with this app's keys, name, size limit and v1 setting: the one
        place the worker and ``cancel`` open a delivered entry."""
        return open_job(
            data,
            self.keyring,
            app=self.name,
            tasks=tasks,
            now=now,
            queue=queue,
            job_id=job_id,
            skew=skew,
            max_size=self.max_envelope_size,
            accept_v1=self.accept_envelope_v1,
            roots=self.batch_roots,
        )

    async def cancel(self, job_id: str, *, queue: str | None = None) -> CancelState:
        """Cancel a job by id (see ``JobHandle.cancel``). Without ``queue``, the marker is
        set on every queue this app's tasks use."""
        broker = await self.broker()
        ttl = self.task_defaults.expires + self.clock_skew
        queues = [queue] if queue else self.queues
        states = [await broker.cancel(q, job_id, ttl=ttl) for q in queues]
        return CancelState.FINISHED if CancelState.FINISHED in states else CancelState.REQUESTED

    def cancel_sync(self, job_id: str, *, queue: str | None = None) -> CancelState:
        return self.run_sync(self.cancel, job_id, queue=queue)
