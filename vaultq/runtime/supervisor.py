"""``vaultq worker --processes N``: N worker processes, restarted when they crash.

Children run in their own session so a terminal's Ctrl-C reaches only the supervisor,
which forwards one SIGTERM to each child: every child then drains (finishes running jobs
within the grace period, hands the rest back). A second signal forwards a second SIGTERM,
which makes children hand their jobs back at once.
"""

from __future__ import annotations

import logging
import signal
import subprocess  # nosec B404
import time
from collections.abc import Sequence
from types import FrameType

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


def supervise(argv: Sequence[str], processes: int, *, grace: float) -> int:
    """Run ``processes`` copies of ``argv`` until SIGTERM/SIGINT; returns an exit code."""
    children = [_Child(i) for i in range(processes)]
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
                _tend(child, argv, now)
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


def _tend(child: _Child, argv: Sequence[str], now: float) -> None:
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
    child.proc = subprocess.Popen(list(argv), start_new_session=True)  # nosec
    child.started = now
    log.info("started worker process %d (slot %d)", child.proc.pid, child.index)
