"""docs/migrating-from-celery.md: every vaultq name it writes exists, its Python blocks
compile and the runnable ones run (a real TestWorker, the whole pipeline), every option it
puts on the vaultq side of a table is an option of a vaultq call, every worker flag is a
flag, and every link points to a file."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vaultq
from vaultq.django import enqueue as django_enqueue
from vaultq.jobs import JobHandle
from vaultq.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "migrating-from-celery.md"
TEXT = GUIDE.read_text()

_BLOCK = re.compile(r"(<!-- not run[^>]*-->\n)?```python\n(.*?)```", re.S)
_CODE = re.compile(r"`([^`]+)`")


def blocks() -> list[tuple[bool, str]]:
    """(runnable, source) of each ```python block, in order."""
    return [(not skip, src) for skip, src in _BLOCK.findall(TEXT)]


def tables() -> list[list[list[str]]]:
    """Each markdown table of the guide: its header row, then its rows, as cells."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*TEXT.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif current:
            out.append(current)
            current = []
    return out


def celery_cells() -> list[str]:
    """The cells of the Celery column of every table."""
    return [row[t[0].index("Celery")] for t in tables() for row in t[1:]]


def vaultq_cells() -> list[str]:
    """The cells right of the Celery column: the vaultq way and what changes."""
    return [cell for t in tables() for row in t[1:] for cell in row[t[0].index("Celery") + 1 :]]


def test_python_blocks_compile_and_the_runnable_ones_run(tmp_path: Path) -> None:
    found = blocks()
    assert sum(run for run, _ in found) >= 2, "the guide lost its runnable example"
    for _, src in found:
        compile(src, str(GUIDE), "exec")
    program = "\n".join(src for run, src in found if run) + "\nprint('guide ran')\n"
    proc = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("guide ran")
    assert "Request: " in proc.stdout  # debug_task (no arguments) ran


def test_every_dotted_vaultq_name_exists() -> None:
    files = {"vaultq.keys", "vaultq.db"}  # file names, not objects
    names = set(re.findall(r"\bvaultq(?:\.[A-Za-z_]\w*)+", TEXT)) - files
    assert "vaultq.current_job" in names and "vaultq.Retry" in names
    missing = []
    for dotted in sorted(names):
        parts = dotted.split(".")
        obj: object = None
        # Import the longest module prefix, then walk attributes.
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                obj = None
            break
        if obj is None:
            missing.append(dotted)
    assert not missing, f"the guide names vaultq objects that do not exist: {missing}"


def _parameters(*fns: object) -> set[str]:
    out: set[str] = set()
    for fn in fns:
        out |= set(inspect.signature(fn).parameters)  # type: ignore[arg-type]
    return out


def test_every_option_on_the_vaultq_side_is_a_real_option() -> None:
    known = _parameters(
        vaultq.App,
        vaultq.App.task,
        vaultq.App.schedule,
        vaultq.App.periodic,
        Task.enqueue,
        JobHandle.result_sync,
        vaultq.Retry,
        django_enqueue.enqueue_on_commit,
        vaultq.chord,
    )
    used: set[str] = set()
    for cell in vaultq_cells():
        for span in _CODE.findall(cell):
            used |= set(re.findall(r"\b([a-z_]+)=", span))
    assert {"retries", "retry_on", "dont_retry_on", "backoff", "store_result"} <= used
    unknown = sorted(used - known)
    assert not unknown, f"options on the vaultq side that no vaultq call takes: {unknown}"


def _flags(*command: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "vaultq", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return set(re.findall(r"(--[a-z][a-z-]*)", out))


def test_every_flag_on_the_vaultq_side_exists() -> None:
    known = _flags("worker") | _flags("check") | _flags("events") | _flags("dashboard")
    used = {
        flag
        for cell in vaultq_cells()
        for span in _CODE.findall(cell)
        for flag in re.findall(r"(--[a-z][a-z-]*)", span)
    }
    assert {"--concurrency", "--queues", "--processes"} <= used
    assert not used - known, f"flags that vaultq does not take: {sorted(used - known)}"


@pytest.mark.parametrize(
    "construct",
    [
        "@shared_task",
        "apply_async(countdown",
        "eta=",
        "expires=",
        "queue=",
        "priority",
        "bind=True",
        "self.request",
        "self.retry",
        "autoretry_for",
        "retry_backoff",
        "retry_jitter",
        "max_retries",
        "time_limit",
        "soft_time_limit",
        "acks_late",
        "rate_limit",
        "ignore_result",
        "AsyncResult",
        "task_routes",
        "celery beat",
        "chain(",
        "group(",
        "chord(",
        "task_prerun",
        "task_always_eager",
        "Flower",
        "-c 8",
        "-Q a,b",
        "--autoscale",
        "--max-tasks-per-child",
        "result backends",
    ],
)
def test_the_construct_table_covers(construct: str) -> None:
    assert any(construct in cell for cell in celery_cells()), f"no row for Celery's {construct!r}"


def test_links_point_to_files() -> None:
    missing = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", TEXT):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (GUIDE.parent / target.split("#", 1)[0]).exists():
            missing.append(target)
    assert not missing, f"links to missing files: {missing}"


def test_class_names_on_the_vaultq_side_exist() -> None:
    """``JobFailed``, ``JobTimedOut``... written without ``vaultq.`` are vaultq's names
    (or classes the guide's own code defines)."""
    defined = set(re.findall(r"^class (\w+)", "\n".join(src for _, src in blocks()), re.M))
    names = {
        name
        for cell in vaultq_cells()
        for span in _CODE.findall(cell)
        for name in re.findall(r"(?<![\w.])([A-Z][a-z]+[A-Z]\w*)", span)
    }
    assert "JobFailed" in names
    missing = sorted(n for n in names - defined if not hasattr(vaultq, n))
    assert not missing, f"names that vaultq does not export: {missing}"
