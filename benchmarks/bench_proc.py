"""The process side of ``benchmarks/throughput.py``: the peers' virtualenvs, a private
redis-server, driver calls, and a worker process run while its completions are counted.

Completions are counted in Redis (every job body INCRs ``bench:done``, see
``benchmarks/peers/_common.py``); CPU time and RSS are read from ``/proc`` for the worker
process and all of its descendants (``vaultq worker --processes N`` and celery's prefork
pool are several processes), so they are Linux-only figures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_DIR = HERE / "peers"
VENV_DIR = ROOT / ".bench-venvs"  # gitignored; one venv per group of peers
COUNTER_KEY = "bench:done"
GROUPS = {
    # arq pins redis<6, taskiq-redis needs redis>=6, streaq brings coredis: one venv each
    "classic": "requirements.txt",
    "taskiq": "requirements-taskiq.txt",
    "saq": "requirements-saq.txt",
    "streaq": "requirements-streaq.txt",
}
PHASE_TIMEOUT = 900.0


class Failed(Exception):
    """A driver or worker that failed: the message says which and shows its stderr."""


def group_python(group: str) -> Path | None:
    """The interpreter of a peer group's venv, creating/updating it when its requirements
    changed; None (with a notice) when it cannot be installed (no registry)."""
    venv = VENV_DIR / group
    python = venv / "bin" / "python"
    requirements = PEERS_DIR / GROUPS[group]
    stamp = venv / ".requirements.txt"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing the {group} peers into {venv} (once) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                timeout=300,
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(
            f"NOTICE: could not set up {venv} ({exc}); no network or no registry?\n"
            f"{detail.decode(errors='replace')[-1500:]}"
            f"Skipping the {group} peers. Fix the install and run again.",
            flush=True,
        )
        return None
    stamp.write_text(wanted)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server on a free loopback port for the run (never the machine's 6379)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait()


def driver_call(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = PHASE_TIMEOUT
) -> dict[str, Any]:
    """Run one driver phase to the end; its ``RESULT {json}`` line."""
    try:
        out = subprocess.run(
            cmd, cwd=PEERS_DIR, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"{' '.join(cmd[1:3])} did not finish within {timeout:.0f} s") from exc
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise Failed(f"{' '.join(cmd[1:3])} exited {out.returncode}: {out.stderr[-1500:]}")


# --- /proc ------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- a worker while its completions are counted ------------------------------------------


class Drain(msgspec.Struct):
    jobs: int
    cold: float  # jobs/s from the worker's spawn (start-up included) to the last completion
    warm: float  # jobs/s from the first completion seen to the last
    startup_s: float  # spawn -> first completion seen
    cpu_us: float  # worker CPU (all its processes) per job, first completion -> last
    rss_mb: float  # worker RSS (all its processes) at the end
    rss_marks: list[tuple[int, float]] = []  # (completions, RSS MB) when asked for


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # its own session: the worker and its children only
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@contextmanager
def worker_process(cmd: list[str], env: dict[str, str] | None) -> Iterator[Any]:
    """A worker process in its own session, stopped (with its children) on exit."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd,
            cwd=PEERS_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            yield proc, err
        finally:
            _stop(proc)


def stderr_tail(err: Any) -> str:
    err.seek(0)
    return str(err.read()[-1500:].decode(errors="replace"))


def count_drain(
    cmd: list[str],
    env: dict[str, str] | None,
    counter_url: str,
    target: int,
    rss_every: int = 0,
    timeout: float = PHASE_TIMEOUT,
) -> Drain:
    """Start the worker ``cmd`` and wait until the job bodies counted ``target``."""
    client = redis.Redis.from_url(counter_url)
    marks: list[tuple[int, float]] = []
    next_mark = rss_every
    first = t_end = 0.0
    c0 = 0
    cpu0 = 0.0
    t_spawn = time.perf_counter()
    with worker_process(cmd, env) as (proc, err):
        while True:
            count = int(client.get(COUNTER_KEY) or 0)
            now = time.perf_counter()
            if not first and count > 0:
                first, c0, cpu0 = now, count, tree_cpu(proc.pid)
            if rss_every and count >= next_mark:
                marks.append((count, tree_rss(proc.pid) / 2**20))
                next_mark += rss_every
            if count >= target:
                t_end = now
                break
            if proc.poll() is not None:
                raise Failed(f"worker {cmd[1]} exited {proc.returncode}: {stderr_tail(err)}")
            if now - t_spawn > timeout:
                raise Failed(f"worker {cmd[1]}: {count}/{target} jobs after {timeout:.0f} s")
            time.sleep(0.005)
        cpu = tree_cpu(proc.pid) - cpu0
        rss = tree_rss(proc.pid) / 2**20
    client.close()
    warm_jobs, warm_s = target - c0, t_end - first
    return Drain(
        jobs=target,
        cold=target / (t_end - t_spawn),
        warm=warm_jobs / warm_s if warm_s > 0 and warm_jobs > 0 else float("nan"),
        startup_s=first - t_spawn,
        cpu_us=cpu / max(warm_jobs, 1) * 1e6,
        rss_mb=rss,
        rss_marks=marks,
    )


@contextmanager
def idle_worker(cmd: list[str], env: dict[str, str] | None) -> Iterator[Callable[[], str]]:
    """A worker left idle for the latency phase (the latency driver's warm-up job waits
    for it to be up); yields a function returning its stderr so far."""
    with worker_process(cmd, env) as (proc, err):

        def tail() -> str:
            return f"(worker exited {proc.poll()}) {stderr_tail(err)}"

        yield tail
