"""The operator's command line, through real subprocesses against both brokers.

``vaultq --version``, ``vaultq job``, ``vaultq cancel MODULE JOB_ID`` (states and exit
codes), ``--json`` output, ``status --queues`` typos, ``enqueue --wait --timeout``,
``dead purge`` confirmation and ``dead retry``; and the worker's logs as an operator
reads them (``--log-format json``, one line per finished job, masked tracebacks, no
"allow" audit lines at INFO). A plaintext marker sent in a ``Secret`` must never appear
in any output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from ops_app import SECRET_MARKER, Card, Receipt
from support.brokers import url_for
from support.workers import (
    ROOT,
    make_app,
    running_worker,
    start_worker_process,
    wait_until_serving,
    worker_env,
)

import vaultq

pytestmark = [pytest.mark.timeout(180), pytest.mark.other_processes]

KEYS = vaultq.Keyring.generate()
CARD = json.dumps({"n": 7, "token": SECRET_MARKER})


@pytest.fixture
def env(
    broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest, unique_name: str
) -> dict[str, str]:
    return worker_env(
        {
            "VAULTQ_BROKER": url_for(broker_kind, tmp_path, request),
            "VAULTQ_KEYS": KEYS.to_json(),
            "OPS_APP": unique_name,
            "OPS_STATE": str(tmp_path),
        }
    )


def vq(
    env: dict[str, str], *args: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=stdin,
    )
    # Nothing the CLI prints may carry the Secret's plaintext, or a traceback.
    assert SECRET_MARKER not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker_process(
        "ops_app", env, "--concurrency", "4", "--grace", "1", "--log-format", "json"
    )
    try:
        wait_until_serving([proc])
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_log(proc: subprocess.Popen[bytes]) -> str:
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(encoding="utf-8", errors="replace")


def enqueue(env: dict[str, str], task: str, payload: str, *args: str) -> str:
    out = vq(env, "enqueue", "ops_app", task, payload, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[0]


def job_json(env: dict[str, str], job_id: str, *args: str) -> dict[str, object]:
    out = vq(env, "job", "ops_app", job_id, "--json", *args)
    assert out.returncode == 0, out.stderr
    report: dict[str, object] = json.loads(out.stdout)
    return report


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


# -- small commands ---------------------------------------------------------------------------


def test_version() -> None:
    out = vq(worker_env(), "--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"vaultq {vaultq.__version__}"


def test_status_names_an_unknown_queue_and_prints_json(env: dict[str, str]) -> None:
    enqueue(env, "ops.echo", CARD, "--delay", "600")
    out = vq(env, "status", "ops_app", "--queues", "nosuch")
    assert out.returncode == 2
    assert "unknown queue 'nosuch'" in out.stderr and "uses default" in out.stderr
    out = vq(env, "status", "ops_app", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["app"] == env["OPS_APP"]
    assert doc["queues"] == [
        {"queue": "default", "ready": 0, "delayed": 1, "running": 0, "dead": 0}
    ]


def test_status_reports_jobs_queued_under_a_revoked_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    """After `vaultq keys revoke`, `vaultq status` says what `vaultq check` says (VQ104):
    how many queued jobs name the revoked key, in text and in --json."""
    keys = tmp_path / "vaultq.keys"
    vaultq.Keyring.generate().save(keys)
    env = {**env, "VAULTQ_KEYS": f"@{keys}"}
    for n in (1, 2):
        enqueue(env, "ops.echo", json.dumps({"n": n, "token": "t"}))
    clean = vq(env, "status", "ops_app")
    assert clean.returncode == 0 and "VQ104" not in clean.stdout, clean.stdout + clean.stderr
    assert json.loads(vq(env, "status", "ops_app", "--json").stdout)["findings"] == []
    signer = vaultq.Keyring.from_file(keys).signer_id
    assert signer is not None
    assert vq(env, "keys", "revoke", str(keys), signer).returncode == 0
    says = f"VQ104: 2 job(s) queued on 'default' are sealed or signed with revoked key(s) {signer}"
    out = vq(env, "status", "ops_app")
    assert out.returncode == 0, out.stdout + out.stderr  # a warning, not an error
    assert f"WARNING {says}" in out.stdout and "rejected:revoked_key" in out.stdout
    doc = json.loads(vq(env, "status", "ops_app", "--json").stdout)
    assert doc["queues"][0]["ready"] == 2
    [finding] = doc["findings"]
    assert (finding["level"], finding["code"]) == ("warning", "VQ104")
    assert says.removeprefix("VQ104: ") in finding["message"]
    # `vaultq check` reports the very same finding.
    assert f"WARNING {says}" in vq(env, "check", "ops_app").stdout


def test_check_json(env: dict[str, str]) -> None:
    out = vq(env, "check", "ops_app", "--json")
    doc = json.loads(out.stdout)
    assert doc["app"] == env["OPS_APP"]
    assert out.returncode == (1 if doc["errors"] else 0)
    assert all(set(f) == {"level", "code", "message"} for f in doc["findings"])


def test_enqueue_wait_timeout_is_one_line_and_exit_3(env: dict[str, str]) -> None:
    # No worker runs: the wait can only time out.
    out = vq(env, "enqueue", "ops_app", "ops.echo", CARD, "--wait", "--timeout", "0.5")
    assert out.returncode == 3
    job_id = out.stdout.strip()
    lines = [line for line in out.stderr.splitlines() if line.startswith("vaultq:")]
    assert lines == [
        f"vaultq: job {job_id} has not finished within 0.5 s; it is still queued or running "
        f"(`vaultq job ops_app:app {job_id}` shows where)"
    ]
    assert job_json(env, job_id)["status"] == "pending"


def test_job_rejects_bad_ids_and_reports_unknown_ones(env: dict[str, str]) -> None:
    enqueue(env, "ops.echo", CARD, "--delay", "600")  # the database exists
    bad = vq(env, "job", "ops_app", "no such id!")
    assert bad.returncode == 2 and "is not a job id" in bad.stderr
    unknown = vq(env, "job", "ops_app", "0" * 32)
    assert unknown.returncode == 5
    assert f"no job {'0' * 32} in queues default" in unknown.stderr


# -- a worker's life, seen by the operator -------------------------------------------------------


def test_job_status_results_and_logs_end_to_end(
    env: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    ok = vq(env, "enqueue", "ops_app", "ops.echo", CARD, "--wait", "--timeout", "30")
    assert ok.returncode == 0, ok.stderr
    ok_id = ok.stdout.splitlines()[0]
    assert json.loads(ok.stdout.splitlines()[1]) == {"n": 7, "token": "Secret('***')"}
    failed = vq(env, "enqueue", "ops_app", "ops.fail", CARD, "--wait", "--timeout", "30")
    assert failed.returncode == 1
    fail_id = failed.stdout.strip()
    assert failed.stderr.strip() == (
        f"vaultq: job {fail_id} ended failed (ValueError) after 1 attempt(s)"
    )

    quiet = vq(env, "enqueue", "ops_app", "ops.quiet", '{"seconds": 0}', "--wait")
    assert quiet.returncode == 0, quiet.stderr
    assert "succeeded; its task stores no result" in quiet.stderr

    report = job_json(env, ok_id)
    assert report["status"] == "succeeded" and report["task"] == "ops.echo"
    assert report["queue"] == "default" and report["attempts"] == 1
    assert report["worker"] and report["started_at"] and report["finished_at"]
    assert "result" not in report  # only with --result
    shown = job_json(env, ok_id, "--result")
    assert shown["result"] == {"n": 7, "token": "Secret('***')"}
    text = vq(env, "job", "ops_app", fail_id)
    assert text.returncode == 0
    fields = dict(line.split(None, 1) for line in text.stdout.splitlines() if " " in line)
    assert fields["status"] == "failed" and fields["task"] == "ops.fail"
    assert fields["reason"] == "failed" and fields["attempts"] == "1"

    dead = vq(env, "dead", "list", "ops_app", "--json")
    assert dead.returncode == 0
    (letter,) = json.loads(dead.stdout)
    assert letter["job_id"] == fail_id and letter["reason"] == "failed"

    # The worker's log: one JSON object per line, one "finished" line per job, the failing
    # task's traceback with the Secret masked and no frame locals, no "allow" audit lines.
    def finished() -> bool:
        return worker_log(worker).count('"logger": "vaultq.jobs"') >= 2

    wait_for(finished)
    log = worker_log(worker)
    assert SECRET_MARKER not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    for record in records:
        assert record["time"].endswith("Z")
        assert {"time", "level", "logger", "message", "job_id", "task", "queue"} <= set(record)
        assert {"attempt", "outcome"} <= set(record)
    jobs = {r["job_id"]: r for r in records if r["logger"] == "vaultq.jobs"}
    assert jobs[ok_id]["outcome"] == "succeeded" and jobs[ok_id]["task"] == "ops.echo"
    assert jobs[ok_id]["level"] == "INFO" and jobs[ok_id]["attempt"] == 1
    assert jobs[fail_id]["outcome"] == "failed" and jobs[fail_id]["queue"] == "default"
    assert "duration=" in jobs[fail_id]["message"]
    (tb,) = [r for r in records if r["logger"] == "vaultq.tracebacks"]
    assert tb["job_id"] == fail_id and tb["level"] == "WARNING"
    assert "Traceback (most recent call last):" in tb["message"]
    assert 'in fail\n    raise ValueError(f"card {revealed} was declined' in tb["message"]
    assert "ValueError: card *** was declined for order 7" in tb["message"]
    assert "revealed =" not in tb["message"].split("raise ValueError")[-1]
    assert not [r for r in records if r["logger"] == "vaultq.audit"]


def test_cancel_says_what_it_found_with_exit_codes(
    env: dict[str, str], tmp_path: Path, worker: subprocess.Popen[bytes]
) -> None:
    delayed = enqueue(env, "ops.echo", CARD, "--delay", "600")
    out = vq(env, "cancel", "ops_app", delayed)
    assert out.returncode == 0
    assert out.stdout.strip() == f"job {delayed} was pending: cancelled, it will never start"
    # Audited, with the OS user.
    (audit,) = [line for line in out.stderr.splitlines() if "operator cancel" in line]
    assert f"job={delayed}" in audit and "user=" in audit and "found=pending" in audit
    # At once, without a worker touching it: not "delayed" any more.
    status = json.loads(vq(env, "status", "ops_app", "--json").stdout)["queues"][0]
    assert (status["delayed"], status["dead"]) == (0, 1)
    report = job_json(env, delayed)
    assert report["status"] == "cancelled" and report["reason"] == "cancelled"
    again = vq(env, "cancel", "ops_app", delayed)
    assert again.returncode == 4 and "already finished" in again.stdout

    running = enqueue(env, "ops.nap", '{"seconds": 60}')
    wait_for(lambda: (tmp_path / "nap.started").exists())
    out = vq(env, "cancel", "ops_app", running)
    assert out.returncode == 3 and "is running: cancel requested" in out.stdout
    wait_for(lambda: job_json(env, running)["status"] == "cancelled")

    unknown = vq(env, "cancel", "ops_app", "f" * 32)
    assert unknown.returncode == 5 and "no job" in unknown.stdout
    bad = vq(env, "cancel", "ops_app", "x" * 200)
    assert bad.returncode == 2 and "is not a job id" in bad.stderr


def test_dead_retry_reruns_failed_jobs_and_refuses_rejected_ones(
    env: dict[str, str], tmp_path: Path, worker: subprocess.Popen[bytes]
) -> None:
    flaky = vq(env, "enqueue", "ops_app", "ops.flaky", CARD, "--wait", "--timeout", "30")
    assert flaky.returncode == 1
    flaky_id = flaky.stdout.strip()
    # A job sealed with other keys: the worker rejects it (REJECTED, never run).
    stranger = dict(env, VAULTQ_KEYS=vaultq.Keyring.generate().to_json())
    forged = vq(stranger, "enqueue", "ops_app", "ops.echo", CARD, "--wait", "--timeout", "30")
    forged_id = forged.stdout.strip().splitlines()[0]

    def both_dead() -> bool:
        out = vq(env, "dead", "list", "ops_app", "--json")
        return len(json.loads(out.stdout)) == 2

    wait_for(both_dead)
    refused = vq(env, "dead", "retry", "ops_app", "--id", forged_id)
    assert refused.returncode == 1
    assert "refused (rejected:" in refused.stdout and "bypass that check" in refused.stdout

    (tmp_path / "flaky.ok").touch()
    retried = vq(env, "dead", "retry", "ops_app", "--id", flaky_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"{flaky_id}  reason=failed  re-enqueued as attempt 1" in retried.stdout
    audit = [line for line in retried.stderr.splitlines() if "operator dead_retry" in line]
    assert len(audit) == 1 and f"job={flaky_id}" in audit[0] and "user=" in audit[0]
    # The replay memory of the failed run was cleared on purpose: the job runs again
    # and its new outcome replaces the old one.
    wait_for(lambda: job_json(env, flaky_id)["status"] == "succeeded")
    letters = json.loads(vq(env, "dead", "list", "ops_app", "--json").stdout)
    assert [d["job_id"] for d in letters] == [forged_id]

    none = vq(env, "dead", "retry", "ops_app", "--id", "a" * 32)
    assert none.returncode == 5
    both = vq(env, "dead", "retry", "ops_app")
    assert both.returncode == 2 and "--id JOB_ID, or --all" in both.stderr
    every = vq(env, "dead", "retry", "ops_app", "--all")
    assert every.returncode == 1 and "0 of 1 dead letter(s) re-enqueued" in every.stdout


def test_dead_purge_needs_yes_off_a_terminal(env: dict[str, str]) -> None:
    job_id = enqueue(env, "ops.echo", CARD, "--delay", "600")
    assert vq(env, "cancel", "ops_app", job_id).returncode == 0  # one dead letter
    refused = vq(env, "dead", "purge", "ops_app")
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert len(json.loads(vq(env, "dead", "list", "ops_app", "--json").stdout)) == 1
    done = vq(env, "dead", "purge", "ops_app", "--yes")
    assert done.returncode == 0 and "purged 1 dead letter(s)" in done.stdout
    assert "operator dead_purge" in done.stderr and "count=1" in done.stderr


@pytest.mark.parametrize(("answer", "code", "left"), [("n", 1, 1), ("y", 0, 0)])
def test_dead_purge_asks_on_a_terminal(
    tmp_path: Path, unique_name: str, answer: str, code: int, left: int
) -> None:
    env = worker_env(
        {
            "VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db",
            "VAULTQ_KEYS": KEYS.to_json(),
            "OPS_APP": unique_name,
        }
    )
    job_id = enqueue(env, "ops.echo", CARD, "--delay", "600")
    assert vq(env, "cancel", "ops_app", job_id).returncode == 0
    main, tty = os.openpty()
    try:
        os.write(main, f"{answer}\n".encode())
        out = vq(env, "dead", "purge", "ops_app", stdin=tty)
    finally:
        os.close(main)
        os.close(tty)
    assert out.returncode == code, out.stderr
    assert "delete 1 dead letter(s) of queue default for good? [y/N]" in out.stdout
    assert len(json.loads(vq(env, "dead", "list", "ops_app", "--json").stdout)) == left


@pytest.mark.anyio
async def test_result_of_an_unregistered_task_is_not_shown(
    tmp_path: Path, unique_name: str
) -> None:
    # Without the task's result type a Secret field decodes as a plain string: `job
    # --result` must refuse rather than print it.
    from vaultq.operations import inspect_job

    url = f"sqlite:///{tmp_path}/q.db"
    producer = make_app(unique_name, url, keyring=KEYS)

    @producer.task(name="ops.echo")
    async def echo(job: Card) -> Receipt:
        return Receipt(n=job.n, token=job.token)

    async with running_worker(producer):
        handle = await echo.enqueue(Card(n=1, token=vaultq.Secret(SECRET_MARKER)))
        await handle.result(timeout=10)
    await producer.aclose()
    stranger = make_app(unique_name, url, keyring=KEYS)  # same app, task not registered
    report = await inspect_job(stranger, handle.id, ["default"], with_result=True)
    await stranger.aclose()
    assert report.status == "succeeded" and report.result is msgspec.UNSET
    assert report.note is not None and "result not shown" in report.note
    assert SECRET_MARKER not in msgspec.json.encode(report).decode()


def test_ctrl_c_while_waiting_is_one_line(env: dict[str, str]) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultq", "enqueue", "ops_app", "ops.echo", CARD, "--wait"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the job id: it is enqueued and waiting (no worker runs)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "vaultq: interrupted"
    assert "Traceback" not in err


def test_cancel_writes_no_outcome_for_an_entry_that_does_not_authenticate(
    env: dict[str, str],
) -> None:
    # An entry sealed with other keys (anyone who can write to the broker): `cancel` must
    # not seal a CANCELLED outcome under the id it claims. The marker is set; a worker
    # rejects the entry when it comes due.
    stranger = dict(env, VAULTQ_KEYS=vaultq.Keyring.generate().to_json())
    forged = enqueue(stranger, "ops.echo", CARD, "--delay", "600")
    out = vq(env, "cancel", "ops_app", forged)
    assert out.returncode == 0 and "was pending" in out.stdout
    report = job_json(env, forged)
    assert (report["status"], report["state"], report["cancel_requested"]) == (
        "pending",
        "delayed",
        True,
    )
    status = json.loads(vq(env, "status", "ops_app", "--json").stdout)["queues"][0]
    assert (status["delayed"], status["dead"]) == (1, 0)
