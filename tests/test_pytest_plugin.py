"""The pytest plugin, as a user's project meets it: installed through the ``pytest11``
entry point (nothing in the project's conftest), pointed at the App with one ini option,
or ignored by a project that does not ask for its fixtures. Each case runs pytest in a
subprocess on a small project written to a temporary directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

JOBS = """
import msgspec
import vaultq

app = vaultq.App("shopjobs", broker="redis://127.0.0.1:1/0")  # never reached in tests


class Refund(msgspec.Struct, frozen=True):
    order_id: int


@app.task(name="refund", policy=vaultq.require_permission("orders.refund"))
async def refund(job: Refund) -> int:
    return job.order_id * 10
"""

TESTS = """
import pytest
import vaultq
from jobs import Refund, refund

CLERK = vaultq.Principal("user:1", permissions=frozenset({"orders.refund"}))


@pytest.mark.anyio
async def test_refund_runs(vaultq_worker):
    handle = await refund.enqueue(Refund(7), principal=CLERK)
    assert vaultq_worker.enqueued(refund) == [Refund(7)]
    (ran,) = await vaultq_worker.run_pending()
    assert ran.outcome == "succeeded"
    assert await handle.result(timeout=1) == 70


@pytest.mark.anyio
async def test_each_test_starts_empty(vaultq_worker, vaultq_app):
    assert vaultq_app.broker_url.startswith("memory://")
    assert vaultq_worker.enqueued(refund) == []
    assert await vaultq_worker.run_pending() == []


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
    )


def _project(tmp_path: Path, ini: str) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "test_jobs.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text(textwrap.dedent(ini))
    return tmp_path


def test_the_ini_option_points_the_fixtures_at_the_app(tmp_path: Path) -> None:
    project = _project(tmp_path, "[pytest]\nvaultq_app = jobs:app\n")
    result = _pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_a_conftest_fixture_can_name_the_app_instead(tmp_path: Path) -> None:
    project = _project(tmp_path, "[pytest]\n")
    (project / "conftest.py").write_text(
        "import pytest\nimport jobs\n\n\n@pytest.fixture\ndef vaultq_app():\n    return jobs.app\n"
    )
    result = _pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_app_the_fixture_says_how_to_name_it(tmp_path: Path) -> None:
    project = _project(tmp_path, "[pytest]\n")
    result = _pytest(project)
    assert result.returncode == 1
    assert "vaultq_app = " in result.stdout and "conftest.py" in result.stdout


def test_a_project_that_does_not_use_it_sees_no_difference(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-config --strict-markers\n")
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    with_plugin = _pytest(tmp_path, "-W", "error")
    without = _pytest(tmp_path, "-W", "error", "-p", "no:vaultq")
    assert with_plugin.returncode == without.returncode == 0
    assert "1 passed" in with_plugin.stdout and "1 passed" in without.stdout
    # It is there (the entry point), it just stays out of the way.
    listed = _pytest(tmp_path, "--fixtures")
    assert "vaultq_worker" in listed.stdout and "vaultq_app" in listed.stdout


def test_the_docs_testworker_example_passes(tmp_path: Path) -> None:
    """docs/testing.md's TestWorker example, run as a user's test file."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    section = doc.split("## TestWorker", 1)[1]
    example = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "test_example.py").write_text(example)
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef anyio_backend():\n    return 'asyncio'\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = _pytest(tmp_path, "-W", "error")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
