"""The child side of process isolation: ``python -m vaultq.runtime.child module:attr``.

A child loads the app with :func:`vaultq.loader.load_app` (the spec comes from the
worker's command line, never from a message), says hello, then runs one job per request
until its stdin closes. It runs tasks **by name from the app's registry only**.

Wire format, both directions: a 4-byte big-endian length, then one msgspec JSON
document (:class:`Hello`, :class:`Request`, :class:`Reply`). There is no pickle: the
payload and the result cross as the task's own typed JSON.

The child is a fresh interpreter (spawned, not forked), so it inherits no sockets, locks
or database connections from the worker: a Django app sets itself up again on import.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING, Any

import msgspec

from vaultq.errors import PayloadError, VaultqError
from vaultq.jobs import JobContext, reset_current_job, set_current_job
from vaultq.middleware import Hooks, JobInfo
from vaultq.principal import Principal

if TYPE_CHECKING:
    from vaultq.app import App
    from vaultq.tasks import Task

__all__ = [
    "MAX_FRAME",
    "FrameError",
    "Hello",
    "Reply",
    "Request",
    "main",
    "read_frame",
    "run_request",
    "type_path",
    "write_frame",
]

MAX_FRAME = 64 * 1024 * 1024
"""Largest frame either side accepts (a payload or a result, plus a little framing)."""

_HEADER = struct.Struct(">I")
_MAX_ERROR_TEXT = 2000
_PR_SET_PDEATHSIG = 1


class Hello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """First frame from a child: it loaded the app and is ready for requests."""

    pid: int
    app: str


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One attempt to run: the task name, its JSON payload and the job's context."""

    task: str
    payload: msgspec.Raw
    principal: Principal | None
    job_id: str
    queue: str
    attempt: int
    signer_id: str
    deadline: float
    max_attempts: int
    trace: dict[str, str] | None = None
    """The job's sealed trace context, for the app's ``around_*`` middleware here."""
    enqueued_at: float = 0.0
    not_before: float = 0.0
    worker_id: str = ""


class Reply(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The outcome of one request: the encoded result, or the exception's type and text."""

    ok: bool
    result: msgspec.Raw = msgspec.Raw(b"null")
    """The result's JSON (``null`` on failure). Not ``Raw | None``: msgspec decodes that
    union as null only."""
    error_type: str = ""
    error: str = ""
    retry: bool | None = None
    """The task's retry verdict on the exception (None: vaultq's own failure)."""
    retry_delay: float | None = None


class FrameError(Exception):
    """The other side sent a frame that is too large or cut short."""


def write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def read_frame(inp: IO[bytes]) -> bytes | None:
    """The next frame, or None at a clean end of input."""
    head = _read_exactly(inp, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
    body = _read_exactly(inp, size)
    if body is None:
        raise FrameError("input ended in the middle of a frame")
    return body


def _read_exactly(inp: IO[bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    need = size
    while need:
        chunk = inp.read(need)
        if not chunk:
            if need == size:
                return None
            raise FrameError("input ended in the middle of a frame")
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def type_path(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``module.QualName`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _error_text(exc: BaseException) -> str:
    try:
        return str(exc)[:_MAX_ERROR_TEXT]
    except Exception:
        return type(exc).__name__


def _fail(
    error_type: str, message: str, *, retry: bool | None = None, delay: float | None = None
) -> Reply:
    return Reply(
        ok=False,
        error_type=error_type,
        error=message[:_MAX_ERROR_TEXT],
        retry=retry,
        retry_delay=delay,
    )


def run_request(app: App, request: Request, hooks: Hooks | None = None) -> Reply:
    """Run one request against ``app``'s registry; never raises (but BaseException).
    ``hooks``: the app's middleware (``app.hooks()``); only their ``around_*`` hooks run
    here, where the task runs. Events (attempt started, finished...) are the worker's to
    report, so they reach the worker's metrics instead of dying with this process."""
    task = app.get_task(request.task)
    if task is None:
        # Only names the app registered can run; a name is never imported.
        return _fail("vaultq.UnknownTask", f"task {request.task!r} is not registered here")
    try:
        payload = task.payload_codec.decode(bytes(request.payload))
    except PayloadError as exc:
        return _fail("vaultq.PayloadError", str(exc))
    ctx = JobContext(
        job_id=request.job_id,
        task=task.name,
        queue=request.queue,
        attempt=request.attempt,
        principal=request.principal,
        signer_id=request.signer_id,
        deadline=request.deadline,
        max_attempts=request.max_attempts,
    )
    if hooks is None:
        hooks = app.hooks()
    job = _describe(app, task, request) if hooks.wraps_sync or hooks.wraps_async else None
    token = set_current_job(ctx)
    try:
        result = _call(hooks, task, payload, job)
    except Exception as exc:
        # Judged here, where the exception's class is known (retry_on, Retry, Fatal).
        retry, delay = task.options.retry_verdict(exc)
        return _fail(type_path(exc), _error_text(exc), retry=retry, delay=delay)
    finally:
        reset_current_job(token)
    if task.result_type is None and result is not None:
        return _fail(
            "vaultq.PayloadError",
            f"task returned {type(result).__name__}, declared None",
            retry=False,
        )
    try:
        encoded = task.result_codec.encode(result)
    except PayloadError as exc:
        return _fail("vaultq.PayloadError", str(exc), retry=False)
    return Reply(ok=True, result=msgspec.Raw(encoded))


def _describe(app: App, task: Task[Any, Any], request: Request) -> JobInfo:
    info = JobInfo(
        job_id=request.job_id,
        queue=request.queue,
        attempt=request.attempt,
        app=app.name,
        worker_id=request.worker_id,
        authenticated=True,
        task=task.name,
        principal_id=request.principal.id if request.principal is not None else None,
        signer_id=request.signer_id,
        enqueued_at=request.enqueued_at,
        not_before=request.not_before,
        max_attempts=request.max_attempts,
        isolation=task.options.isolation,
    )
    if request.trace:
        info.trace.update(request.trace)
    return info


def _call(hooks: Hooks, task: Task[Any, Any], payload: Any, job: JobInfo | None) -> Any:
    """Call the task function inside the app's ``around_*`` middleware, as the worker's
    in-process path does; the result goes around them, never through them."""
    box: list[Any] = []
    if task.is_async:

        async def call_async() -> None:
            box.append(await task.fn(payload))

        run_async: Callable[[], Awaitable[None]] = call_async
        if job is not None and hooks.wraps_async:
            run_async = hooks.wrap_async(job, call_async)
        # asyncio.run copies the current context, so current_job() works in the task.
        asyncio.run(_await(run_async))
        return box[0]

    def call() -> None:
        box.append(task.fn(payload))

    run: Callable[[], None] = call
    if job is not None and hooks.wraps_sync:
        run = hooks.wrap_sync(job, call)
    run()
    return box[0]


async def _await(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this child if the worker dies, so a busy child is never
    orphaned; elsewhere the child still exits at its next read (stdin closes)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid and os.getppid() != parent_pid:
        # The worker died before prctl took effect.
        os._exit(1)


def _private_streams() -> tuple[IO[bytes], IO[bytes]]:
    """Keep the protocol's pipes on private fds; point fd 0 at /dev/null and fd 1 at
    stderr, so a task that reads stdin or prints (even from C) cannot corrupt frames."""
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the child
    return inp, out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m vaultq.runtime.child module:attr [parent-pid]", file=sys.stderr)
        return 2
    spec = args[0]
    parent_pid = int(args[1]) if len(args) > 1 else 0
    # The worker handles Ctrl-C and shutdown; a terminal's SIGINT must not kill a job here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    inp, out = _private_streams()

    from vaultq.loader import load_app

    try:
        app = load_app(spec)
    except VaultqError as exc:
        print(f"vaultq child: cannot load {spec!r}: {exc}", file=sys.stderr)
        return 3
    hooks = app.hooks()
    encoder = msgspec.json.Encoder()
    requests = msgspec.json.Decoder(Request)
    write_frame(out, encoder.encode(Hello(pid=os.getpid(), app=app.name)))
    while True:
        try:
            frame = read_frame(inp)
        except FrameError as exc:
            print(f"vaultq child: {exc}", file=sys.stderr)
            return 4
        if frame is None:
            return 0
        try:
            request = requests.decode(frame)
        except msgspec.DecodeError:
            reply = _fail(
                "vaultq.MalformedRequest", "the worker sent a request this child cannot read"
            )
        else:
            reply = run_request(app, request, hooks)
        write_frame(out, encoder.encode(reply))


if __name__ == "__main__":
    sys.exit(main())
