"""``vaultq worker --processes N``: N worker processes, restarted when they crash.

Children run in their own session so a terminal's Ctrl-C reaches only the supervisor,
which forwards one SIGTERM to each child: every child then drains (finishes running jobs
within the grace period, hands the rest back). A second signal forwards a second SIGTERM,
which makes children hand their jobs back at once.

Each child gets the supervisor's :class:`~vaultq.settings.WorkerSettings` (with
``processes=1``), encoded as JSON by msgspec and written to its stdin: no flag list is
rebuilt by hand, so a new worker option reaches the children without an edit here.
"""

from __future__ import annotations

import logging
import signal
import subprocess  # nosec B404
import time
from collections.abc import Sequence
from types import FrameType

import msgspec

from vaultq.settings import WorkerSettings

__all__ = ["supervise"]

log = logging.getLogger("vaultq.supervisor")

_STABLE_AFTER = 60.0
"""A child that ran this long before dying starts its backoff over."""


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.crashes = 0
        self.next_start = 0.0


def supervise(settings: WorkerSettings, *, entry: Sequence[str]) -> int:
    """Run ``settings.processes`` children (the command ``entry``, reading their settings
    from stdin) until SIGTERM/SIGINT; returns an exit code."""
    settings_json = msgspec.json.encode(msgspec.structs.replace(settings, processes=1))
    grace = settings.grace
    children = [_Child(i) for i in range(settings.processes)]
    signals_seen = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        log.info("%s: stopping %d worker process(es)", signal.Signals(signum).name, len(children))
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not signals_seen:
            now = time.monotonic()
            for child in children:
                _tend(child, entry, settings_json, now)
            time.sleep(0.2)
        deadline = time.monotonic() + grace + 10.0
        while time.monotonic() < deadline and any(
            c.proc is not None and c.proc.poll() is None for c in children
        ):
            time.sleep(0.1)
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                log.warning("worker process %d did not stop in time; killing it", child.proc.pid)
                child.proc.kill()
                child.proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _tend(child: _Child, entry: Sequence[str], settings_json: bytes, now: float) -> None:
    proc = child.proc
    if proc is not None:
        code = proc.poll()
        if code is None:
            return
        lived = now - child.started
        child.crashes = 0 if lived > _STABLE_AFTER else child.crashes + 1
        pause = min(30.0, 0.5 * 2 ** max(0, child.crashes - 1))
        log.warning(
            "worker process %d exited with code %s after %.1f s; restarting in %.1f s",
            proc.pid,
            code,
            lived,
            pause,
        )
        child.proc = None
        child.next_start = now + pause
    if now < child.next_start:
        return
    # A fixed command (this interpreter, a vaultq module) and no shell.
    child.proc = subprocess.Popen(list(entry), stdin=subprocess.PIPE, start_new_session=True)  # nosec
    stdin = child.proc.stdin  # a pipe (stdin=PIPE above)
    try:
        # Small (well under a pipe buffer): the write never blocks the supervisor.
        if stdin is not None:
            stdin.write(settings_json)
            stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; the next round restarts it with backoff
    child.started = now
    log.info("started worker process %d (slot %d)", child.proc.pid, child.index)
