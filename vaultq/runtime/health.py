"""Worker liveness: a heartbeat file that the worker's event loop rewrites every few seconds.

The beat is written by a task in the worker's own task group, so it stops when the event
loop stops turning: a coroutine that blocks the loop, a process frozen by SIGSTOP, a
process that died (SIGKILL, OOM). ``vaultq health`` (a container's HEALTHCHECK) reads
the file and exits 0 only when the last beat is recent enough and, when the beat was
written on this host, its process still exists.

The file is tiny JSON (pid, host, worker name, time, interval), replaced atomically
(write a temporary file beside it, then ``os.replace``) so a reader never sees half a
beat. It holds no secrets. It says the loop turns, not that jobs succeed: a worker that
lost its broker still beats (its log says why it waits); one that has not yet reached
its broker at start-up has not beaten yet.

The default path is private to the user: ``$XDG_RUNTIME_DIR/vaultq/worker.health``, or
``<tempdir>/vaultq-<uid>/worker.health``; that directory is created 0700 and refused if
someone else owns it or others can write to it (a shared /tmp is no place to follow
another user's symlink). Several workers on one host should each get their own file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import anyio
import msgspec

from vaultq import config
from vaultq.errors import VaultqError
from vaultq.monitor import process_exists

__all__ = [
    "DEFAULT_INTERVAL",
    "Heartbeat",
    "check_health",
    "default_health_file",
    "default_max_age",
    "keep_beating",
    "prepare",
    "write_beat",
]

log = logging.getLogger("vaultq.worker")

DEFAULT_INTERVAL = config.DEFAULT_HEALTH_INTERVAL
"""Seconds between two beats."""


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pid: int
    host: str
    worker: str
    at: float
    """Wall-clock time of the beat (``time.time()``)."""
    every: float
    """The interval the worker promised; sets the default maximum age."""


def default_max_age(every: float) -> float:
    """How old a beat may be before the worker counts as stuck: three missed beats."""
    return 3 * every + 1


def default_health_file() -> Path:
    """``$XDG_RUNTIME_DIR/vaultq/worker.health`` or ``<tempdir>/vaultq-<uid>/worker.health``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "vaultq" / "worker.health"
    return Path(tempfile.gettempdir()) / f"vaultq-{os.getuid()}" / "worker.health"


def _private_dir(directory: Path) -> None:
    """Create ``directory`` 0700, or check an existing one is ours and not writable by
    others (only for the default location; an explicit path's directory is the user's)."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=False)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise VaultqError(
            f"{directory} is not a directory owned by this user: pass --health-file PATH"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise VaultqError(f"{directory} is writable by others: chmod 700 it or pass --health-file")


def prepare(path: Path) -> None:
    """Make sure a beat can be written at ``path`` (a clear error now, not a silent miss)."""
    if path == default_health_file():
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        _private_dir(path.parent)
    elif not path.parent.is_dir():
        raise VaultqError(f"the health file's directory {path.parent} does not exist")


def write_beat(path: Path, beat: Heartbeat) -> None:
    """Replace ``path`` with ``beat`` atomically."""
    tmp = path.with_name(f".{path.name}.{beat.pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, msgspec.json.encode(beat))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove_if_ours(path: Path, pid: int) -> None:
    # Several processes may share one file (--processes N): only the last writer removes it.
    with contextlib.suppress(OSError, msgspec.DecodeError):
        if msgspec.json.decode(path.read_bytes(), type=Heartbeat).pid == pid:
            path.unlink()


async def keep_beating(path: Path, worker: str, interval: float = DEFAULT_INTERVAL) -> None:
    """Write a beat now and every ``interval`` seconds until cancelled (run it in the
    worker's task group); remove the file on the way out so a stopped worker is not
    reported healthy."""
    pid, host = os.getpid(), socket.gethostname()
    warned = False
    try:
        while True:
            try:
                write_beat(path, Heartbeat(pid, host, worker, time.time(), interval))
                warned = False
            except OSError as exc:
                if not warned:  # say it once per outage, not every beat
                    log.warning("cannot write the health file %s: %s", path, exc.strerror)
                    warned = True
            await anyio.sleep(interval)
    finally:
        _remove_if_ours(path, pid)


def check_health(
    path: Path, max_age: float | None = None, *, now: float | None = None
) -> tuple[bool, str]:
    """``(healthy, one line)`` for the heartbeat file at ``path``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False, (
            f"unhealthy: no heartbeat at {path}: no worker is running "
            "(or it was started with another --health-file)"
        )
    except OSError as exc:
        return False, f"unhealthy: cannot read {path}: {exc.strerror}"
    try:
        beat = msgspec.json.decode(data, type=Heartbeat)
    except msgspec.DecodeError:
        return False, f"unhealthy: {path} is not a vaultq heartbeat file"
    limit = default_max_age(beat.every) if max_age is None else max_age
    age = (time.time() if now is None else now) - beat.at
    if beat.host == socket.gethostname() and not process_exists(beat.pid):
        return False, f"unhealthy: worker pid {beat.pid} is gone (last beat {age:.1f} s ago)"
    if age > limit:
        return False, (
            f"unhealthy: last heartbeat {age:.1f} s ago (max {limit:g} s): the worker's "
            f"event loop is stuck or the worker is frozen (pid {beat.pid} on {beat.host})"
        )
    return True, f"healthy: worker {beat.worker} (pid {beat.pid}) beat {max(age, 0):.1f} s ago"
