"""Process isolation: run ``isolation="process"`` tasks in child processes killed at the
deadline (Celery's hard ``time_limit``, without pickle and without fork).

A :class:`ProcessPool` keeps up to ``size`` children, started lazily with
``python -m vaultq.runtime.child module:attr``. Each child imports the app itself and
runs tasks by name from its own registry; requests and replies are length-prefixed
msgspec JSON (see :mod:`vaultq.runtime.child`). A child is reused between jobs and
replaced by a fresh one after ``max_jobs_per_child`` jobs, when it is killed at a
deadline or by a cancellation, and when it dies.

Children are fresh interpreters (spawn, never fork): they inherit no broker connection,
lock, thread or Django database connection from the worker, and a Django project sets
itself up again when the child imports the app module.

Nor do they inherit the worker's secrets: a child runs task code and needs no keys, so
:func:`child_environment` drops ``VAULTQ_KEYS`` (and the app's own keys variable, and
``VAULTQ_*`` variables named like secrets) and masks the password of ``VAULTQ_BROKER``.
An app module that loads its keys *at import* (``keyring=Keyring.from_env()``) therefore
cannot start a child; let the app resolve them lazily (the default).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from vaultq.config import mask_url
from vaultq.errors import ConfigurationError, InvalidArgument, TaskRaised
from vaultq.runtime.child import MAX_FRAME, Hello, Reply, Request
from vaultq.runtime.execute import AttemptTimedOut

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.envelope import OpenedJob
    from vaultq.jobs import JobContext
    from vaultq.tasks import Task

__all__ = ["CHILD_DIED", "ProcessPool", "child_environment", "find_import_spec"]

log = logging.getLogger("vaultq.worker")

CHILD_DIED = "vaultq.ChildProcessDied"
"""``error_type`` of an attempt whose child process exited or broke the protocol."""

_HEADER = struct.Struct(">I")
_STARTUP_TIMEOUT = 60.0


class _ChildGone(Exception):
    """The child exited or sent something that is not a frame."""


@dataclass(eq=False)
class _Child:
    proc: Process
    stdin: ByteSendStream
    reader: BufferedByteReceiveStream
    pid: int
    jobs: int = 0
    retired_at: float = field(default=0.0)

    async def send(self, data: bytes) -> None:
        try:
            await self.stdin.send(_HEADER.pack(len(data)) + data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _ChildGone("its stdin is closed") from exc

    async def receive(self) -> bytes:
        try:
            (size,) = _HEADER.unpack(await self.reader.receive_exactly(_HEADER.size))
            if size > MAX_FRAME:
                raise _ChildGone(f"it sent a frame of {size} bytes")
            return await self.reader.receive_exactly(size)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ) as exc:
            raise _ChildGone("its stdout closed") from exc


class ProcessPool:
    """Child processes for ``isolation="process"`` tasks of ``app``.

    ``size``: children at most (and jobs running in them at once).
    ``max_jobs_per_child``: a child is replaced after this many jobs (bounds leaks).
    ``kill_grace``: seconds between SIGTERM and SIGKILL when a child must stop.

    Raises ``ConfigurationError`` when the module defining ``app`` cannot be found: the
    children need an importable ``module:attr`` (``vaultq worker module`` sets it).
    """

    def __init__(
        self,
        app: App,
        *,
        size: int,
        max_jobs_per_child: int = 100,
        kill_grace: float = 2.0,
    ) -> None:
        if size < 1:
            raise InvalidArgument(f"process pool size={size!r}: give at least 1 child process")
        if max_jobs_per_child < 1:
            raise InvalidArgument(
                f"max_jobs_per_child={max_jobs_per_child!r}: give at least 1 job per child"
            )
        self.app = app
        self.size = size
        self.max_jobs_per_child = max_jobs_per_child
        self.kill_grace = kill_grace
        self.spec = app.import_spec or find_import_spec(app)
        self._limiter = anyio.CapacityLimiter(size)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._retiring: list[_Child] = []
        self._hello = msgspec.json.Decoder(Hello)
        self._replies = msgspec.json.Decoder(Reply)
        self._encoder = msgspec.json.Encoder()
        self._closed = False
        self.started = 0
        """Children started so far (a replacement counts)."""

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children, idle or busy."""
        return [c.pid for c in (*self._idle, *self._busy)]

    async def run(
        self,
        task: Task[Any, Any],
        opened: OpenedJob,
        ctx: JobContext,
        timeout: float,
        *,
        urgent: Callable[[], bool] | None = None,
    ) -> bytes:
        """Run one attempt in a child; returns the result's JSON bytes.

        Raises ``AttemptTimedOut`` at ``ctx.deadline`` (the child is killed),
        ``TaskRaised`` when the task raised or its child died, and re-raises a
        cancellation from outside after killing the child. When ``urgent()`` is true at
        that point (the attempt lost its lease: another worker may soon run the job), the
        child gets SIGKILL at once instead of SIGTERM and ``kill_grace``.
        """
        if self._closed:
            raise TaskRaised("vaultq.ConfigurationError", "the process pool is closed")
        request = Request(
            task=task.name,
            payload=opened.body.payload,
            principal=opened.body.principal,
            job_id=ctx.job_id,
            queue=ctx.queue,
            attempt=ctx.attempt,
            signer_id=ctx.signer_id,
            deadline=ctx.deadline,
            max_attempts=ctx.max_attempts,
            trace=opened.body.meta.trace,
            enqueued_at=opened.header.issued_at / 1000,
            not_before=opened.header.not_before / 1000,
            worker_id=ctx.worker_id or "",
        )
        data = self._encoder.encode(request)
        async with self._limiter:
            await self._reap_retired()
            child = await self._checkout()
            try:
                remaining = min(timeout, ctx.deadline - time.time())
                with anyio.move_on_after(max(0.0, remaining)) as scope:
                    await child.send(data)
                    frame = await child.receive()
            except _ChildGone as exc:
                raise await self._died(child, task, str(exc)) from None
            except BaseException:
                # Cancelled from outside (deadline of the attempt's scope, job cancelled
                # by id, worker shutdown) or failed: the child may still be running the
                # job, so it must not survive. Shielded, or the kill itself is cancelled.
                late = time.time() >= ctx.deadline
                now = urgent is not None and urgent()
                why = "lost its lease" if now else "passed its deadline" if late else "was stopped"
                with anyio.CancelScope(shield=True):
                    await self._kill(
                        child, f"job {ctx.job_id} {why}", ctx.deadline if late else None, now=now
                    )
                raise
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await self._kill(child, f"job {ctx.job_id} passed its deadline", ctx.deadline)
                raise AttemptTimedOut
            try:
                reply = self._replies.decode(frame)
            except msgspec.DecodeError:
                with anyio.CancelScope(shield=True):
                    await self._kill(child, "it sent an unreadable reply", None)
                raise TaskRaised(CHILD_DIED, "the child process sent an unreadable reply") from None
            await self._checkin(child)
        if not reply.ok:
            raise TaskRaised(
                reply.error_type or "Exception",
                reply.error,
                retry=reply.retry,
                delay=reply.retry_delay,
            )
        return bytes(reply.result)

    async def aclose(self) -> None:
        """Stop every child: idle ones get EOF (they exit by themselves), anything left
        after ``kill_grace`` is killed."""
        self._closed = True
        children = [*self._idle, *self._retiring, *self._busy]
        self._idle.clear()
        self._retiring.clear()
        self._busy.clear()
        with anyio.CancelScope(shield=True):
            for child in children:
                await _close_stdin(child)
            with anyio.move_on_after(self.kill_grace):
                for child in children:
                    await child.proc.wait()
            for child in children:
                if child.proc.returncode is None:
                    await self._kill(child, "the worker is stopping", None)
                else:
                    await _release(child)

    # -- children ---------------------------------------------------------------------------

    async def _checkout(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if child.proc.returncode is None:
                self._busy.add(child)
                return child
            log.warning(
                "isolated child %d exited while idle (code %s)", child.pid, child.proc.returncode
            )
            await _release(child)
        child = await self._spawn()
        self._busy.add(child)
        return child

    async def _checkin(self, child: _Child) -> None:
        self._busy.discard(child)
        child.jobs += 1
        if child.jobs < self.max_jobs_per_child and not self._closed:
            self._idle.append(child)
            return
        # EOF asks the child to exit; it is reaped later so this job's result is not
        # delayed by the child's interpreter shutdown.
        log.debug("retiring isolated child %d after %d jobs", child.pid, child.jobs)
        child.retired_at = time.monotonic()
        self._retiring.append(child)
        with anyio.CancelScope(shield=True):
            await _close_stdin(child)

    async def _spawn(self) -> _Child:
        command = [sys.executable, "-m", "vaultq.runtime.child", self.spec, str(os.getpid())]
        source = self.app.keyring_source or ""
        keys_var = source[1:] if source.startswith("$") else None
        env = child_environment(os.environ, keys_var=keys_var)
        try:
            proc = await anyio.open_process(command, stderr=None, env=env)
        except OSError as exc:
            raise TaskRaised(
                "vaultq.ConfigurationError", f"cannot start an isolated child process: {exc}"
            ) from None
        if proc.stdin is None or proc.stdout is None:  # pragma: no cover - asked for pipes
            raise TaskRaised("vaultq.ConfigurationError", "the child process has no pipes")
        child = _Child(
            proc=proc,
            stdin=proc.stdin,
            reader=BufferedByteReceiveStream(proc.stdout),
            pid=proc.pid,
        )
        self.started += 1
        try:
            with anyio.fail_after(_STARTUP_TIMEOUT):
                frame = await child.receive()
            hello = self._hello.decode(frame)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._kill(child, "it did not start", None)
            if isinstance(exc, _ChildGone | msgspec.DecodeError | TimeoutError):
                raise TaskRaised(
                    "vaultq.ConfigurationError",
                    f"the isolated child process for {self.spec!r} did not start "
                    f"(exit code {child.proc.returncode}); see the worker's stderr",
                ) from None
            raise
        if hello.app != self.app.name:
            with anyio.CancelScope(shield=True):
                await self._kill(child, "it loaded another app", None)
            raise TaskRaised(
                "vaultq.ConfigurationError",
                f"{self.spec!r} loads app {hello.app!r} in a child, not {self.app.name!r}",
            )
        log.info("started isolated child %d for %s", child.pid, self.spec)
        return child

    async def _died(self, child: _Child, task: Task[Any, Any], why: str) -> TaskRaised:
        self._busy.discard(child)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.kill_grace):
                await child.proc.wait()
            code = child.proc.returncode
            if code is None:
                await self._kill(child, why, None)
                code = child.proc.returncode
            else:
                await _release(child)
        log.warning("isolated child %d died running %s (exit code %s)", child.pid, task.name, code)
        return TaskRaised(
            CHILD_DIED, f"the isolated child process died running {task.name} (exit code {code})"
        )

    async def _kill(
        self, child: _Child, why: str, deadline: float | None, *, now: bool = False
    ) -> None:
        """SIGTERM, ``kill_grace`` seconds, SIGKILL (``now``: SIGKILL at once); then reap.
        Call shielded."""
        self._busy.discard(child)
        proc = child.proc
        if proc.returncode is None:
            if not now:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with anyio.move_on_after(self.kill_grace):
                    await proc.wait()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            late = "" if deadline is None else f" {time.time() - deadline:.3f} s past the deadline"
            log.warning("killed isolated child %d (%s)%s", child.pid, why, late)
        await _release(child)

    async def _reap_retired(self) -> None:
        keep: list[_Child] = []
        for child in self._retiring:
            if child.proc.returncode is not None:
                await _release(child)
            elif time.monotonic() - child.retired_at > self.kill_grace:
                with anyio.CancelScope(shield=True):
                    await self._kill(child, "it did not exit after its last job", None)
            else:
                keep.append(child)
        self._retiring = keep


async def _close_stdin(child: _Child) -> None:
    with contextlib.suppress(OSError, anyio.BrokenResourceError):
        await child.stdin.aclose()


async def _release(child: _Child) -> None:
    """Close the pipes of an exited child (waits for it: call once it has exited)."""
    with contextlib.suppress(OSError, anyio.BrokenResourceError):
        await child.proc.aclose()


_SECRET_NAME_PARTS = ("KEY", "SECRET", "PASSWORD", "TOKEN", "CREDENTIAL")


def child_environment(environ: Mapping[str, str], *, keys_var: str | None = None) -> dict[str, str]:
    """The environment for an isolated child: ``environ`` without ``VAULTQ_KEYS``,
    ``keys_var`` (where the app found its keys) and any ``VAULTQ_*`` variable whose name
    says it holds a secret; ``VAULTQ_BROKER`` keeps its shape (an app module may read it
    at import) with its password masked."""
    env = {
        name: value
        for name, value in environ.items()
        if name != keys_var
        and not (name.startswith("VAULTQ_") and any(p in name for p in _SECRET_NAME_PARTS))
    }
    if "VAULTQ_BROKER" in env:
        env["VAULTQ_BROKER"] = mask_url(env["VAULTQ_BROKER"])
    return env


def find_import_spec(app: App) -> str:
    """``module:attr`` of a loaded module that holds ``app``, for the children to import.

    A module that defines one of the app's tasks is preferred (importing it registers
    them), isolated tasks first; otherwise the first module found that holds the app.
    """
    modules = _task_modules(app)
    found: list[tuple[int, str]] = []
    for name, module in list(sys.modules.items()):
        if module is None:
            continue
        if name == "__main__":
            name = _main_name(module) or ""
            if not name:
                continue  # a script: children cannot import it by name
        try:
            members = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in members:
            if value is app:
                rank = modules.index(name) if name in modules else len(modules)
                found.append((rank, f"{name}:{attr}"))
                break
    if found:
        return min(found, key=lambda item: item[0])[1]
    raise ConfigurationError(
        f"process isolation needs to import app {app.name!r} in child processes, but no "
        "importable module holds it. Run the worker with `vaultq worker your.module`, or "
        "set app.import_spec = 'your.module:app'"
    )


def _main_name(module: object) -> str | None:
    spec = getattr(module, "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name else None


def _task_modules(app: App) -> list[str]:
    """Modules defining the app's tasks, those of isolated tasks first."""
    names: list[str] = []
    tasks = sorted(app.tasks.values(), key=lambda t: t.options.isolation != "process")
    for task in tasks:
        name = getattr(task.fn, "__module__", None)
        if name == "__main__":
            name = _main_name(sys.modules.get("__main__"))
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names
