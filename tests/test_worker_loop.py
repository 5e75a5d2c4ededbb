"""``vaultq worker --loop uvloop`` runs jobs on uvloop (vaultq[fast]); the default and
``--loop asyncio`` on asyncio's own loop; a bad name is a usage error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.workers import worker_env, worker_processes

import vaultq

pytestmark = pytest.mark.anyio


async def _loop_of_worker(tmp_path: Path, *flags: str) -> str:
    import loop_app

    keys = vaultq.Keyring.generate()
    url = f"sqlite:///{tmp_path}/loop.db"
    app = vaultq.App("loop", broker=url, keyring=keys)
    which = app.task(name="loop.which")(loop_app.which.fn)
    env = worker_env({"VAULTQ_BROKER": url, "VAULTQ_KEYS": keys.to_json()})
    with worker_processes("loop_app", env, 1, *flags):
        handle = await which.enqueue(loop_app.Ask(1))
        module = await handle.result(timeout=60)
    await app.aclose()
    return str(module)


async def test_loop_uvloop_runs_jobs_on_uvloop(tmp_path: Path) -> None:
    assert await _loop_of_worker(tmp_path, "--loop", "uvloop") == "uvloop"


async def test_the_default_loop_is_asyncios_own(tmp_path: Path) -> None:
    assert (await _loop_of_worker(tmp_path)).startswith("asyncio")


def test_an_unknown_loop_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaultq", "worker", "loop_app", "--loop", "trio"],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--loop" in out.stderr


def test_loop_uvloop_without_uvloop_says_what_to_install(tmp_path: Path) -> None:
    # uvloop hidden from this one process (a None entry in sys.modules fails its import)
    code = (
        "import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'vaultq'; "
        "from vaultq.cli import main; sys.exit(main())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "worker", "loop_app", "--loop", "uvloop", "--processes", "2"],
        env=worker_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "vaultq[fast]" in out.stderr


async def test_the_worker_process_freezes_its_start_up_heap(tmp_path: Path) -> None:
    """``vaultq worker`` moves the objects of its start-up out of the collector's walks
    (vaultq.cli_worker.freeze_startup_heap); a plain Python process freezes nothing."""
    import loop_app

    keys = vaultq.Keyring.generate()
    url = f"sqlite:///{tmp_path}/frozen.db"
    app = vaultq.App("loop", broker=url, keyring=keys)
    frozen = app.task(name="loop.frozen")(loop_app.frozen.fn)
    env = worker_env({"VAULTQ_BROKER": url, "VAULTQ_KEYS": keys.to_json()})
    with worker_processes("loop_app", env, 1):
        count = await (await frozen.enqueue(loop_app.Ask(1))).result(timeout=60)
    await app.aclose()
    assert isinstance(count, int) and count > 1000  # the modules, the app, the keys...
