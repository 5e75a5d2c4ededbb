"""The newcomer's first runs: ``vaultq demo`` and the examples (``examples/``).

- the demo in-process and through the real CLI: every job ends as the table says, the
  broker's file never holds plaintext, the temporary directory is removed;
- ``vaultq worker examples.jobs`` + ``python -m examples.produce`` on the embedded
  broker with no configuration, and on Redis with ``VAULTQ_KEYS``/``VAULTQ_BROKER`` as
  the README's production section shows.
"""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from vaultq.demo import EXPECTED, run_demo

ROOT = Path(__file__).resolve().parent.parent


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULTQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra or {})
    return env


def _run(args: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 60) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _table(output: str) -> dict[str, str]:
    """job label -> status, read back from the printed table."""
    statuses = {}
    for label, status in EXPECTED.items():
        line = next((ln for ln in output.splitlines() if ln.startswith(label + "  ")), None)
        assert line is not None, f"no table row for {label!r}:\n{output}"
        statuses[label] = status if f"  {status}  " in line else line
    return statuses


# -- vaultq demo ---------------------------------------------------------------------------------


def test_demo_in_process_every_job_ends_as_expected(tmp_path: Path) -> None:
    out = io.StringIO()
    started = time.monotonic()
    result = run_demo(tmp_path / "demo", out=out)
    elapsed = time.monotonic() - started
    text = out.getvalue()

    assert result.statuses == EXPECTED
    assert result.leaks == []
    assert result.ok
    by_label = {r.label: r for r in result.rows}
    assert "to card ...4242" in by_label["charge for alice"].detail
    assert by_label["flaky fetch"].attempts == "2"
    assert by_label["slow export"].seconds.startswith("0.5")
    assert "bad_signature" in by_label["tampered charge"].detail
    assert by_label["charge for bob"].seconds == "-"  # denied before it ran
    assert elapsed < 10, f"the demo took {elapsed:.1f} s"

    # sealed: the payload's repr masks the Secret; neither scan found plaintext
    assert "card_token=Secret('***')" in text
    assert "card_visa_4242424242424242" not in text
    assert "none found" in text
    assert "no plaintext marker found" in text
    assert "PLAINTEXT" not in text
    assert "every job ended as expected" in text

    # with a directory: the key file was generated 0600 and the report saved beside the db
    demo_dir = tmp_path / "demo"
    assert stat.S_IMODE((demo_dir / "vaultq.keys").stat().st_mode) == 0o600
    assert (demo_dir / "report.csv").read_text().splitlines()[:2] == ["region,total", "EU,8100.50"]
    assert (demo_dir / "report.svg").read_text().startswith("<svg ")
    raw = b"".join(p.read_bytes() for p in demo_dir.glob("vaultq.db*") if p.is_file())
    for marker in (b"card_visa_4242424242424242", b"user:alice", b"Quarterly sales by region"):
        assert marker not in raw

    # a second run on the same directory reuses the keys and still behaves
    again = io.StringIO()
    assert run_demo(demo_dir, out=again).ok
    assert f"loaded {demo_dir.resolve() / 'vaultq.keys'}" in again.getvalue()


def test_vaultq_demo_cli_exits_0_and_cleans_up(tmp_path: Path) -> None:
    out = _run([sys.executable, "-m", "vaultq", "demo"], cwd=tmp_path, env=_env())
    assert _table(out) == EXPECTED
    assert re.search(r"^job +task +principal +status +tries +time +result or reason$", out, re.M)
    where = re.search(r"embedded SQLite broker (\S+)/vaultq\.db \(temporary", out)
    assert where is not None, out
    assert not Path(where.group(1)).exists(), "the demo left its temporary directory behind"
    assert list(tmp_path.iterdir()) == [], "the demo wrote into the working directory"


def test_examples_quickstart_is_the_demo(tmp_path: Path) -> None:
    out = _run([sys.executable, "-m", "examples.quickstart"], cwd=tmp_path, env=_env())
    assert _table(out) == EXPECTED


def test_demo_help_lists_the_command() -> None:
    out = _run([sys.executable, "-m", "vaultq", "--help"], cwd=ROOT, env=_env())
    assert "demo" in out
    out = _run([sys.executable, "-m", "vaultq", "demo", "--help"], cwd=ROOT, env=_env())
    assert "--dir" in out


# -- examples.jobs + examples.produce --------------------------------------------------------


@pytest.fixture
def example_worker_factory(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_example_worker(
    procs: list[subprocess.Popen[bytes]], cwd: Path, env: Mapping[str, str]
) -> Path:
    log = cwd / "worker.log"
    with open(log, "wb") as fh:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "vaultq", "worker", "examples.jobs", "--concurrency", "4"],
                cwd=cwd,
                env=dict(env),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        )
    return log


def _check_produce_output(out: str) -> None:
    assert "refund for user:intern-2 refused at enqueue: require_permission('orders.refund')" in out
    assert "examples.jobs.send_welcome_email" in out
    assert "welcome mail sent to user 42" in out
    assert "RefundReceipt(order_id=7, refunded_cents=1999, reference='rf_" in out
    assert "WordStats(title='motto', words=9, top=[('it', 4)" in out
    assert "tok_4242" not in out


def test_examples_on_the_embedded_broker_without_configuration(
    tmp_path: Path, example_worker_factory: list[subprocess.Popen[bytes]]
) -> None:
    env = _env()
    log = _start_example_worker(example_worker_factory, tmp_path, env)
    out = _run([sys.executable, "-m", "examples.produce"], cwd=tmp_path, env=env)
    assert "app examples on sqlite:///vaultq.db" in out
    _check_produce_output(out)
    # the defaults: vaultq.db in the working directory, a 0600 key file beside it
    assert stat.S_IMODE((tmp_path / "vaultq.keys").stat().st_mode) == 0o600
    assert (tmp_path / "vaultq.db").exists()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vaultq.db*") if p.is_file())
    for marker in (b"tok_4242", b"ada@example.com", b"user:clerk-7", b"rf_"):
        assert marker not in raw
    worker = example_worker_factory[0]
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    text = log.read_text()
    assert "app=examples broker=sqlite:///vaultq.db" in text
    assert "stopped after 3 jobs" in text


def test_examples_on_redis_with_explicit_keys(
    tmp_path: Path, redis_clean: str, example_worker_factory: list[subprocess.Popen[bytes]]
) -> None:
    # The README's production section: keys in a 0600 file, both named in the environment.
    env = _env()
    _run(
        [sys.executable, "-m", "vaultq", "keys", "generate", "--out", "vaultq.keys"],
        cwd=tmp_path,
        env=env,
    )
    env = _env({"VAULTQ_KEYS": "@vaultq.keys", "VAULTQ_BROKER": redis_clean})
    log = _start_example_worker(example_worker_factory, tmp_path, env)
    out = _run([sys.executable, "-m", "examples.produce"], cwd=tmp_path, env=env)
    assert f"app examples on {redis_clean}" in out
    _check_produce_output(out)
    assert not (tmp_path / "vaultq.db").exists()
    worker = example_worker_factory[0]
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    text = log.read_text()
    assert f"broker={redis_clean}" in text
    assert "keys=$VAULTQ_KEYS" in text


def test_examples_on_redis_refuse_to_run_without_keys(tmp_path: Path, redis_clean: str) -> None:
    env = _env({"VAULTQ_BROKER": redis_clean})
    proc = subprocess.run(
        [sys.executable, "-m", "examples.produce"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "vaultq keys generate" in proc.stderr
    assert "Traceback" not in proc.stderr
